// AVX2 + FMA instantiation of the flash-attention rows (see attention_internal.h for the layout).
// 16 ymm registers: panels of 16 queries (two ymm), S tile 6 keys x 16 queries and OT tile up to
// 6 output dims x 16 queries (12 accumulators + 2 panel vectors + 1 broadcast).
#include <immintrin.h>

#include "attention_internal.h"

namespace dk::cpu::attn {
namespace {

struct V256 {
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  // 8 x 8 transpose in ymm registers (unpack, shuffle, lane swap), then the scale.
  static void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd, const float* sc, bool per_row) {
    __m256 r[8], t[8];
    for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + j * lds);
    for (int j = 0; j < 8; j += 2) {
      t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
      t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 8; j += 4) {
      r[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
      r[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE);
      r[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
      r[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
      t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i)
      _mm256_storeu_ps(dst + i * ldd, _mm256_mul_ps(t[i], _mm256_set1_ps(per_row ? sc[i] : sc[0])));
  }
  // 2^x for x <= 0; exactly 0 at x <= -125 (and -inf): no denormals downstream.
  static V exp2(V x) {
    const V live = _mm256_cmp_ps(x, _mm256_set1_ps(-125.f), _CMP_GT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.f));
    const V n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm256_sub_ps(x, n);
    V p = _mm256_set1_ps(kExp2C6);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C0));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
  }
};

using Rows256 = FlashRows<V256, 2, 6, 6>;

}  // namespace

Kernel kernel_avx2() {
  Kernel k;
  k.mq = Rows256::MQ;
  k.rows = &Rows256::rows;
  k.scratch_floats = &Rows256::scratch_floats;
  k.name = "avx2 6x16";
  return k;
}

}  // namespace dk::cpu::attn
