// bfloat16 flash attention: the contract between attention_bf16.cc (threading, dispatch, the
// fallback that widens to the float32 kernel) and attention_bf16_avx512.cc (the vdpbf16ps rows).
#pragma once
#include <cstdint>

#include "attention_internal.h"

namespace dk::cpu::attn {

// One (batch, head) of bf16 tensors: pointers at token 0 of that head; mask float32 or null.
struct HeadBf16 {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  bf16* o;
  const float* mask;
};

constexpr int kBf16Panel = 32;  // queries per panel: tasks are multiples of it

#if defined(DK_X86)
// Queries [q0, q1) of one head; scratch holds bf16_scratch_floats(s, q1 - q0) floats, 64-byte aligned.
int64_t bf16_scratch_floats(const Shape& s, int64_t rows);
void bf16_rows_avx512(const Shape& s, const HeadBf16& h, int64_t q0, int64_t q1, float* scratch);
#endif

}  // namespace dk::cpu::attn
