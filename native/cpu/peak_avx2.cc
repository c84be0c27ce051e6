// AVX2+FMA peak loop: 12 independent ymm accumulators (16 registers, 2 hold the constants).
#include <immintrin.h>

#include "peak.h"

namespace dk::cpu {

double fma_loop_avx2(int64_t iters, float* sink) {
  constexpr int kAcc = 12;
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  __m256 acc[kAcc];
  for (int j = 0; j < kAcc; j++) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
    for (int j = 0; j < kAcc; j++) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  __m256 s = acc[0];
  for (int j = 1; j < kAcc; j++) s = _mm256_add_ps(s, acc[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  for (float v : lanes) *sink += v;
  return 2.0 * 8 * kAcc * static_cast<double>(iters);
}

}  // namespace dk::cpu
