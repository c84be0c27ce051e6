// AVX-512F bfloat16 <-> float32 conversions. Rounding is done with integer arithmetic (round to
// nearest even, NaN quietened) so it needs only AVX-512F/BW, not AVX512_BF16.
#include <immintrin.h>

#include "bf16_avx512.h"
#include "kernels.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dk::cpu {
using simd::narrow16;
using simd::widen16;

void widen_bf16_avx512(const bf16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, m, widen16(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

void narrow_bf16_avx512(const float* src, bf16* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), narrow16(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(dst + i, m, narrow16(_mm512_maskz_loadu_ps(m, src + i)));
  }
}

}  // namespace dk::cpu
