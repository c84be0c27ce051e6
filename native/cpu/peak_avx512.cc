// AVX-512 peak loops: 24 independent zmm accumulators, so even two FMA pipes with a 4-cycle
// latency (8 in flight) are never starved by the dependency chains.
#include <immintrin.h>

#include "peak.h"

// GCC 12 flags the deliberately undefined pass-through operand inside _mm512_reduce_add_ps.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dk::cpu {

namespace {
constexpr int kAcc = 24;
}

double fma_loop_avx512(int64_t iters, float* sink) {
  // acc = acc*a + b converges to b/(1-a): no overflow, no denormals however long it runs.
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  __m512 acc[kAcc];
  for (int j = 0; j < kAcc; j++) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 24
    for (int j = 0; j < kAcc; j++) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  __m512 s = acc[0];
  for (int j = 1; j < kAcc; j++) s = _mm512_add_ps(s, acc[j]);
  *sink += _mm512_reduce_add_ps(s);
  return 2.0 * 16 * kAcc * static_cast<double>(iters);
}

#if defined(__AVX512BF16__)
double bf16_loop_avx512(int64_t iters, float* sink) {
  // Each vdpbf16ps lane adds two bf16 products: 4 flop per fp32 lane. 0x3c00 is bf16 2^-7.
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3c00), y = (__m512bh)_mm512_set1_epi16(0x3c00);
  __m512 acc[kAcc];
  for (int j = 0; j < kAcc; j++) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 24
    for (int j = 0; j < kAcc; j++) acc[j] = _mm512_dpbf16_ps(acc[j], x, y);
  }
  __m512 s = acc[0];
  for (int j = 1; j < kAcc; j++) s = _mm512_add_ps(s, acc[j]);
  *sink += _mm512_reduce_add_ps(s);
  return 4.0 * 16 * kAcc * static_cast<double>(iters);
}
#else
double bf16_loop_avx512(int64_t, float*) { return 0; }  // compiler without AVX512_BF16
#endif

}  // namespace dk::cpu
