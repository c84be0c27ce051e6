// bfloat16 <-> float32 row conversions: the AVX-512 loop where the CPU has it (chosen once),
// else the portable bit arithmetic of core/half.h.
#include "../core/half.h"
#include "cpu_features.h"
#include "kernels.h"

namespace dk::cpu {

#if defined(DK_X86)
void widen_bf16_avx512(const bf16* src, float* dst, int64_t n);
void narrow_bf16_avx512(const float* src, bf16* dst, int64_t n);
#endif

namespace {

void widen_portable(const bf16* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i].bits);
}
void narrow_portable(const float* src, bf16* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i].bits = f32_to_bf16(src[i]);
}

using WidenFn = void (*)(const bf16*, float*, int64_t);
using NarrowFn = void (*)(const float*, bf16*, int64_t);

bool use_avx512() {
#if defined(DK_X86)
  return cpu_features().isa == Isa::AVX512;
#else
  return false;
#endif
}

}  // namespace

void widen_bf16(const bf16* src, float* dst, int64_t n) {
#if defined(DK_X86)
  static const WidenFn fn = use_avx512() ? &widen_bf16_avx512 : &widen_portable;
#else
  static const WidenFn fn = &widen_portable;
#endif
  fn(src, dst, n);
}

void narrow_bf16(const float* src, bf16* dst, int64_t n) {
#if defined(DK_X86)
  static const NarrowFn fn = use_avx512() ? &narrow_bf16_avx512 : &narrow_portable;
#else
  static const NarrowFn fn = &narrow_portable;
#endif
  fn(src, dst, n);
}

}  // namespace dk::cpu
