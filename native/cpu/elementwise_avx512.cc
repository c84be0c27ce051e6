// AVX-512 GEGLU rows: out = h * gelu_erf(g) with a vectorised Phi(x) = (1 + erf(x / sqrt 2)) / 2
// accurate to ~2 float32 ulps (no libm call per element), and its backward. bf16 rows are widened and rounded in
// registers. Coefficients: weighted least-squares (Lawson) fits in float64, checked in float32.
#include <immintrin.h>

#include "bf16_avx512.h"
#include "kernels.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dk::cpu {
namespace {

// e^(a + b) for a + b <= 0, |b| small next to a: Cody-Waite reduction a + b = n ln2 + r with
// a - n ln2_hi taken first (exact), so the rounding of a + b never reaches r. Taylor to r^7 on
// |r| <= ln2 / 2 (error < 1e-8). Results below the normal range (a + b < -87) are 0.
inline __m512 exp_sum(__m512 a, __m512 b) {
  const __m512 q = _mm512_add_ps(a, b);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(q, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_add_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), a), b);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  const __mmask16 live = _mm512_cmp_ps_mask(q, _mm512_set1_ps(-87.f), _CMP_GT_OQ);
  return _mm512_maskz_scalef_ps(live, p, n);
}

// Phi(x) for 16 lanes, z = x / sqrt 2:
//   |z| < 0.3:  1/2 + z/2 * E(z^2),  E(s) ~ erf(z)/z (degree 4 in z^2, rel. error 1.2e-7 in float32);
//   |z| >= 0.3: erfc(|z|) = t exp(-z^2 + C(t)), t = 1/(1 + |z|/2) (C of degree 9, fit on
//               [0.3, 10], rel. error 2.3e-7), Phi = erfc/2 for x < 0 (tiny values keep their
//               relative accuracy), 1 - erfc/2 for x > 0. The switch at 0.3 keeps the
//               cancellation in 1/2 + z/2 E (x < 0) below a factor 1.5.
// z^2 = x^2 / 2 goes into the exponential unrounded (an fma gives its low part).
inline __m512 phi(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  // Past |x| = 16 erfc is 0 in float32; the cap keeps inf (and NaN, which min maps to 16) out of
  // the arithmetic below, so Phi is finite and g * Phi(g) carries g's own inf / NaN.
  const __m512 xc = _mm512_min_ps(ax, _mm512_set1_ps(16.f));
  const __m512 xx = _mm512_mul_ps(xc, xc);
  const __m512 xx_lo = _mm512_fmsub_ps(xc, xc, xx);  // x^2 = xx + xx_lo exactly
  const __m512 zz = _mm512_mul_ps(xx, _mm512_set1_ps(0.5f));

  __m512 e = _mm512_set1_ps(0.00471801171079278f);
  e = _mm512_fmadd_ps(e, zz, _mm512_set1_ps(-0.026757193729281425f));
  e = _mm512_fmadd_ps(e, zz, _mm512_set1_ps(0.11282823234796524f));
  e = _mm512_fmadd_ps(e, zz, _mm512_set1_ps(-0.37612608075141907f));
  e = _mm512_fmadd_ps(e, zz, _mm512_set1_ps(1.1283791065216064f));
  const __m512 half_z = _mm512_mul_ps(x, _mm512_set1_ps(0.35355339059327376f));  // x / (2 sqrt 2)
  const __m512 near = _mm512_fmadd_ps(half_z, e, _mm512_set1_ps(0.5f));

  // t = 1 / (1 + |x| / (2 sqrt 2)): rcp14 and one Newton step (~1 ulp).
  const __m512 den = _mm512_fmadd_ps(xc, _mm512_set1_ps(0.35355339059327376f), _mm512_set1_ps(1.f));
  __m512 t = _mm512_rcp14_ps(den);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(den, t, _mm512_set1_ps(2.f)));
  __m512 c = _mm512_set1_ps(0.23028603196144104f);
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(-1.0888571739196777f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(1.997530221939087f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(-1.6736282110214233f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(0.6238730549812317f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(-0.3237770199775696f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(0.1304502934217453f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(0.36927688121795654f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(1.000382900238037f));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(-1.2655227184295654f));
  // exp(-zz + (C - zz_lo)), zz_lo = xx_lo / 2
  const __m512 ex = exp_sum(_mm512_sub_ps(_mm512_setzero_ps(), zz), _mm512_fnmadd_ps(xx_lo, _mm512_set1_ps(0.5f), c));
  const __m512 half_erfc = _mm512_mul_ps(_mm512_mul_ps(t, _mm512_set1_ps(0.5f)), ex);
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 far = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.f), half_erfc), neg, half_erfc);
  // |z| < 0.3  <=>  |x| < 0.3 sqrt 2
  const __mmask16 is_near = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.42426406871192851f), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(far, is_near, near);
}

inline __m512 geglu16(__m512 h, __m512 g) { return _mm512_mul_ps(h, _mm512_mul_ps(g, phi(g))); }

// GEGLU's backward for 16 lanes: dh = dy * g Phi(g), dg = dy * h * (Phi(g) + g phi(g)) with the
// density phi(g) = exp(-g^2 / 2) / sqrt(2 pi) (g^2 / 2 passed unrounded, as in phi() above).
inline void geglu_grad16(__m512 h, __m512 g, __m512 d, __m512& dh, __m512& dg) {
  const __m512 P = phi(g);
  const __m512 gc = _mm512_min_ps(_mm512_abs_ps(g), _mm512_set1_ps(16.f));  // keeps inf/NaN out of exp
  const __m512 gg = _mm512_mul_ps(gc, gc);
  const __m512 gg_lo = _mm512_fmsub_ps(gc, gc, gg);
  const __m512 dens = _mm512_mul_ps(
      exp_sum(_mm512_mul_ps(gg, _mm512_set1_ps(-0.5f)), _mm512_mul_ps(gg_lo, _mm512_set1_ps(-0.5f))),
      _mm512_set1_ps(0.3989422804014327f));
  dh = _mm512_mul_ps(d, _mm512_mul_ps(g, P));
  dg = _mm512_mul_ps(_mm512_mul_ps(d, h), _mm512_fmadd_ps(g, dens, P));
}

inline __mmask16 lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }

}  // namespace

void geglu_rows_avx512(const float* x, float* out, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* h = x + r * 2 * C;
    const float* g = h + C;
    float* o = out + r * C;
    int64_t i = 0;
    for (; i + 16 <= C; i += 16) _mm512_storeu_ps(o + i, geglu16(_mm512_loadu_ps(h + i), _mm512_loadu_ps(g + i)));
    if (i < C) {
      const __mmask16 m = lanes(C - i);
      _mm512_mask_storeu_ps(o + i, m, geglu16(_mm512_maskz_loadu_ps(m, h + i), _mm512_maskz_loadu_ps(m, g + i)));
    }
  }
}

void geglu_backward_rows_avx512(const float* x, const float* dy, float* dx, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* h = x + r * 2 * C;
    const float* g = h + C;
    const float* d = dy + r * C;
    float* dh = dx + r * 2 * C;
    float* dg = dh + C;
    __m512 a, b;
    int64_t i = 0;
    for (; i + 16 <= C; i += 16) {
      geglu_grad16(_mm512_loadu_ps(h + i), _mm512_loadu_ps(g + i), _mm512_loadu_ps(d + i), a, b);
      _mm512_storeu_ps(dh + i, a);
      _mm512_storeu_ps(dg + i, b);
    }
    if (i < C) {
      const __mmask16 m = lanes(C - i);
      geglu_grad16(_mm512_maskz_loadu_ps(m, h + i), _mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, d + i), a, b);
      _mm512_mask_storeu_ps(dh + i, m, a);
      _mm512_mask_storeu_ps(dg + i, m, b);
    }
  }
}

void geglu_rows_avx512(const bf16* x, bf16* out, int64_t r0, int64_t r1, int64_t C) {
  using simd::narrow16;
  using simd::widen16;
  for (int64_t r = r0; r < r1; ++r) {
    const bf16* h = x + r * 2 * C;
    const bf16* g = h + C;
    bf16* o = out + r * C;
    int64_t i = 0;
    for (; i + 16 <= C; i += 16) {
      const __m512 hv = widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i)));
      const __m512 gv = widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i), narrow16(geglu16(hv, gv)));
    }
    if (i < C) {
      const __mmask16 m = lanes(C - i);
      const __m512 hv = widen16(_mm256_maskz_loadu_epi16(m, h + i));
      const __m512 gv = widen16(_mm256_maskz_loadu_epi16(m, g + i));
      _mm256_mask_storeu_epi16(o + i, m, narrow16(geglu16(hv, gv)));
    }
  }
}

}  // namespace dk::cpu
