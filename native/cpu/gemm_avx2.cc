// AVX2 + FMA micro-kernel for the float32 GEMM (compiled with -mavx2 -mfma): a 6 x 16 tile in
// 12 ymm accumulators, 2 B loads and 6 broadcasts per k (the classic Haswell shape).
#include <immintrin.h>

#include "gemm_internal.h"

namespace dk::cpu::gemm {
namespace {

constexpr int MR = 6, NR = 16;

void kernel_6x16(int64_t kc, const float* __restrict A, const float* __restrict B, float* C, int64_t ldc, int m,
                 int n, const TileEpi& e) {
  for (int i = 0; i < MR && i < m; ++i) _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
  // Named accumulators: with a __m256[6][2] array GCC 12 spills two of them every iteration.
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define DK_STEP2(i, x0, x1)                  \
  a = _mm256_broadcast_ss(A + (i));          \
  x0 = _mm256_fmadd_ps(a, b0, x0);           \
  x1 = _mm256_fmadd_ps(a, b1, x1);
  for (int64_t k = 0; k < kc; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(B + NR * 8), _MM_HINT_T0);
    const __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
    __m256 a;
    DK_STEP2(0, c00, c01) DK_STEP2(1, c10, c11) DK_STEP2(2, c20, c21)
    DK_STEP2(3, c30, c31) DK_STEP2(4, c40, c41) DK_STEP2(5, c50, c51)
    A += MR;
    B += NR;
  }
#undef DK_STEP2
  __m256 c[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};

  const __m256 valpha = _mm256_set1_ps(e.alpha), vbeta = _mm256_set1_ps(e.beta);
  if (n == NR) {
    __m256 bias0 = e.bias ? _mm256_loadu_ps(e.bias) : _mm256_setzero_ps();
    __m256 bias1 = e.bias ? _mm256_loadu_ps(e.bias + 8) : _mm256_setzero_ps();
    for (int i = 0; i < MR; ++i) {
      if (i >= m) break;
      float* crow = C + i * ldc;
      __m256 r0 = _mm256_mul_ps(c[i][0], valpha), r1 = _mm256_mul_ps(c[i][1], valpha);
      if (e.beta != 0.f) {
        r0 = _mm256_fmadd_ps(_mm256_loadu_ps(crow), vbeta, r0);
        r1 = _mm256_fmadd_ps(_mm256_loadu_ps(crow + 8), vbeta, r1);
      }
      if (e.bias) { r0 = _mm256_add_ps(r0, bias0); r1 = _mm256_add_ps(r1, bias1); }
      if (e.residual) {
        r0 = _mm256_add_ps(r0, _mm256_loadu_ps(e.residual + i * e.ldr));
        r1 = _mm256_add_ps(r1, _mm256_loadu_ps(e.residual + i * e.ldr + 8));
      }
      _mm256_storeu_ps(crow, r0);
      _mm256_storeu_ps(crow + 8, r1);
    }
    return;
  }
  // Right edge: spill the tile and finish element by element.
  alignas(32) float t[MR][NR];
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(t[i], c[i][0]);
    _mm256_store_ps(t[i] + 8, c[i][1]);
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float r = e.alpha * t[i][j];
      if (e.beta != 0.f) r += e.beta * C[i * ldc + j];
      if (e.bias) r += e.bias[j];
      if (e.residual) r += e.residual[i * e.ldr + j];
      C[i * ldc + j] = r;
    }
}

// 8x8 transposes: rows[i][k0..k0+7] for 8 rows -> dst[k][lane].
void pack_rows_avx2(int64_t kc, const float* const* rows, int nrows, int width, float* dst) {
  for (int g = 0; g < width; g += 8) {
    const int lanes = width - g < 8 ? width - g : 8;
    const float* src[8];
    for (int i = 0; i < 8; ++i) src[i] = (i < lanes && g + i < nrows) ? rows[g + i] : nullptr;
    int64_t k0 = 0;
    if (lanes == 8) {
      for (; k0 + 8 <= kc; k0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = src[i] ? _mm256_loadu_ps(src[i] + k0) : _mm256_setzero_ps();
        __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        float* d = dst + k0 * width + g;
        _mm256_storeu_ps(d + 0 * width, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(d + 1 * width, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(d + 2 * width, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(d + 3 * width, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(d + 4 * width, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(d + 5 * width, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(d + 6 * width, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(d + 7 * width, _mm256_permute2f128_ps(u3, u7, 0x31));
      }
    }
    for (; k0 < kc; ++k0)
      for (int i = 0; i < lanes; ++i) dst[k0 * width + g + i] = src[i] ? src[i][k0] : 0.f;
  }
}

}  // namespace

Kernel kernel_avx2() {
  Kernel k;
  k.mr = MR;
  k.nr = NR;
  k.kernel = kernel_6x16;
  k.pack_rows = pack_rows_avx2;
  k.name = "avx2 6x16";
  return k;
}

}  // namespace dk::cpu::gemm
