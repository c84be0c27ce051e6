// bfloat16 attention: threads and dispatch for the vdpbf16ps rows (attention_bf16_avx512.cc),
// and the fallback for CPUs without AVX512_BF16: q, k, v widened to float32, the float32 kernel,
// the output rounded back. Same edge semantics as attention.cc.
#include <algorithm>
#include <atomic>
#include <vector>

#include "../core/thread_pool.h"
#include "attention_bf16.h"
#include "attention_tasks.h"
#include "cpu_features.h"

namespace dk::cpu {
namespace attn {
namespace {

// Rows of [B, N, heads*D] at (batch, row) strides, widened into a dense float32 copy.
std::vector<float> widen_rows(const bf16* x, int64_t B, int64_t N, int64_t width, int64_t sb, int64_t sr) {
  std::vector<float> out(static_cast<size_t>(B * N * width));
  parallel_for(B * N, std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) widen_bf16(x + (r / N) * sb + (r % N) * sr, out.data() + r * width, width);
  });
  return out;
}

void attention_widened(const AttentionParams& p, const bf16* q, const bf16* k, const bf16* v, bf16* out) {
  const int64_t wq = p.heads * p.D, wv = p.heads * p.Dv;
  const std::vector<float> qf = widen_rows(q, p.B, p.Nq, wq, p.q_batch, p.q_row);
  const std::vector<float> kf = widen_rows(k, p.B, p.Nk, wq, p.k_batch, p.k_row);
  const std::vector<float> vf = widen_rows(v, p.B, p.Nk, wv, p.v_batch, p.v_row);
  std::vector<float> of(static_cast<size_t>(p.B * p.Nq * wv));
  AttentionParams f = p;
  f.q_batch = p.Nq * wq; f.q_row = wq;
  f.k_batch = p.Nk * wq; f.k_row = wq;
  f.v_batch = p.Nk * wv; f.v_row = wv;
  f.o_batch = p.Nq * wv; f.o_row = wv;
  attention(f, qf.data(), kf.data(), vf.data(), of.data());
  parallel_for(p.B * p.Nq, std::max<int64_t>(1, 4096 / std::max<int64_t>(wv, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      narrow_bf16(of.data() + r * wv, out + (r / p.Nq) * p.o_batch + (r % p.Nq) * p.o_row, wv);
  });
}

#if defined(DK_X86)
void attention_dpbf16(const AttentionParams& p, const bf16* q, const bf16* k, const bf16* v, bf16* out) {
  const Shape s = shape_of(p);
  run_attention_tasks<HeadBf16>(p, kBf16Panel, q, k, v, out, [&](int64_t rows) { return bf16_scratch_floats(s, rows); },
                                [&](const HeadBf16& h, int64_t q0, int64_t q1, float* sc) { bf16_rows_avx512(s, h, q0, q1, sc); });
}
#endif

}  // namespace
}  // namespace attn

void attention(const AttentionParams& p, const bf16* q, const bf16* k, const bf16* v, bf16* out) {
  if (p.B <= 0 || p.heads <= 0 || p.Nq <= 0 || p.Dv <= 0) return;
#if defined(DK_X86)
  // Nk == 0 (rows of zeros) goes through the float32 path, which defines it.
  if (cpu_features().avx512_bf16 && p.Nk > 0) {
    attn::attention_dpbf16(p, q, k, v, out);
    return;
  }
#endif
  attn::attention_widened(p, q, k, v, out);
}

}  // namespace dk::cpu
