// AVX2 + FMA instantiation of the norm / softmax row kernels (see norm_internal.h). Tails use
// vmaskmovps.
#include <immintrin.h>

#include "norm_internal.h"

namespace dk::cpu::norm {
namespace {

struct N256 {
  using V = __m256;
  static constexpr int W = 8;
  static constexpr bool kBf16 = false;
  static __m256i lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V loadn(const float* p, int n) { return _mm256_maskload_ps(p, lanes(n)); }
  static void storen(float* p, V v, int n) { _mm256_maskstore_ps(p, lanes(n), v); }
  static V zero_past(V v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(lanes(n))); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // e^x = 2^n * 2^f with 2^n built in the exponent field; exactly 0 below 2^-125, +inf from 2^128.
  static V exp(V x) {
    V t = _mm256_mul_ps(x, _mm256_set1_ps(kNormLog2e));
    const V live = _mm256_cmp_ps(t, _mm256_set1_ps(-125.f), _CMP_GT_OQ);
    const V big = _mm256_cmp_ps(t, _mm256_set1_ps(128.f), _CMP_GE_OQ);
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-126.f)), _mm256_set1_ps(127.f));
    const V n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm256_sub_ps(t, n);
    V p = _mm256_set1_ps(kN2C6);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kN2C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kN2C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kN2C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kN2C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kN2C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kN2C0));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const V r = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
    return _mm256_blendv_ps(r, _mm256_set1_ps(__builtin_huge_valf()), big);
  }
};

}  // namespace

Kernels kernels_avx2() { return NormRows<N256>::kernels("avx2"); }

}  // namespace dk::cpu::norm
