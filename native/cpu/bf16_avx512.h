// bfloat16 <-> float32 for 16 lanes in registers (AVX-512F/BW only, no AVX512_BF16), shared by
// the *_avx512.cc kernels that read or write bf16 rows directly.
#pragma once
#include <immintrin.h>

namespace dk::cpu::simd {

inline __m512 widen16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

// Round to nearest even with integer arithmetic; NaN keeps its sign and payload top and is quietened.
inline __m256i narrow16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  // (rounding a NaN could carry into inf)
  const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

}  // namespace dk::cpu::simd
