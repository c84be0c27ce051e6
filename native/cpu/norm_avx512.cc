// AVX-512 instantiation of the norm / softmax row kernels (see norm_internal.h), with bf16
// loads and stores for group norm. Tails use masked loads and stores.
#include <immintrin.h>

#include "bf16_avx512.h"
#include "cpu_features.h"
#include "norm_internal.h"

// GCC 12 flags the deliberately undefined pass-through operand inside the AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dk::cpu::norm {
namespace {

// kNe: round to bf16 with vcvtneps2bf16 (AVX512_BF16; one instruction for the ~8 of the integer
// rounding, which otherwise dominates the bf16 affine pass; nearest even, as the integer path).
template <bool kNe>
struct N512 {
  using V = __m512;
  static constexpr int W = 16;
  static constexpr bool kBf16 = true;
  static __mmask16 lanes(int n) { return static_cast<__mmask16>((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(lanes(n), p); }
  static void storen(float* p, V v, int n) { _mm512_mask_storeu_ps(p, lanes(n), v); }
  static V load(const bf16* p) { return simd::widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m256i round16(V v) {
    if constexpr (kNe) return (__m256i)_mm512_cvtneps_pbh(v);
    else return simd::narrow16(v);
  }
  static void store(bf16* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), round16(v)); }
  static V loadn(const bf16* p, int n) { return simd::widen16(_mm256_maskz_loadu_epi16(lanes(n), p)); }
  static void storen(bf16* p, V v, int n) { _mm256_mask_storeu_epi16(p, lanes(n), round16(v)); }
  static V zero_past(V v, int n) { return _mm512_maskz_mov_ps(lanes(n), v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static float hmax(V v) { return _mm512_reduce_max_ps(v); }
  // e^x = 2^(x log2 e) = 2^n * 2^f; vscalefps gives inf / 0 past the float range by itself,
  // the mask makes tiny results exactly 0 (no denormals) and keeps -inf from making NaN.
  static V exp(V x) {
    const V t = _mm512_mul_ps(x, _mm512_set1_ps(kNormLog2e));
    const V n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm512_sub_ps(t, n);
    V p = _mm512_set1_ps(kN2C6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kN2C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kN2C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kN2C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kN2C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kN2C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kN2C0));
    const __mmask16 live = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-125.f), _CMP_GT_OQ);
    const __mmask16 big = _mm512_cmp_ps_mask(t, _mm512_set1_ps(128.f), _CMP_GE_OQ);
    // t = +inf would give f = NaN; any t >= 128 overflows to +inf.
    return _mm512_mask_mov_ps(_mm512_maskz_scalef_ps(live, p, n), big, _mm512_set1_ps(__builtin_huge_valf()));
  }
};

}  // namespace

Kernels kernels_avx512() {
  Kernels k = NormRows<N512<false>>::kernels("avx512");
  if (cpu_features().avx512_bf16) k.affine_bf16 = &NormRows<N512<true>>::affine<bf16>;
  return k;
}

}  // namespace dk::cpu::norm
