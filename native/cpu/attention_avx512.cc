// AVX-512 instantiation of the flash-attention rows (see attention_internal.h for the layout).
// Compiled with -mavx512f/bw/dq/vl -mfma. Panels are 32 queries (two zmm); the S tile is 12 keys x
// 32 queries (24 accumulators, K broadcast from memory as {1to16}), the OT tile up to 12 output
// dims x 32 queries. On Zen 4 zmm and ymm FMAs have the same flop rate, on Intel zmm doubles it.
#include <immintrin.h>

// GCC 12 flags the deliberately undefined pass-through operand inside the AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "attention_internal.h"

namespace dk::cpu::attn {
namespace {

struct V512 {
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
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
  // 2^x for x <= 0: x = n + f, |f| <= 1/2, 2^f by polynomial, 2^n by vscalefps. Exactly 0 at
  // x <= -125 (and -inf), so no denormal ever reaches the PV product.
  static V exp2(V x) {
    const V n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm512_sub_ps(x, n);
    V p = _mm512_set1_ps(kExp2C6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C0));
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.f), _CMP_GT_OQ);
    return _mm512_maskz_scalef_ps(live, p, n);
  }
};

using Rows512 = FlashRows<V512, 2, 12, 12>;

}  // namespace

Kernel kernel_avx512() {
  Kernel k;
  k.mq = Rows512::MQ;
  k.rows = &Rows512::rows;
  k.scratch_floats = &Rows512::scratch_floats;
  k.name = "avx512 12x32";
  return k;
}

}  // namespace dk::cpu::attn
