// Attention for training on device, float32 (contracts: native/cuda/backward.h and
// native/cpu/backward.h; semantics of native/cpu/attention_backward.cc, mirrored case by case).
// Flash style: no Nq x Nk buffer ever exists; every kernel recomputes its 64 x 64 score tiles
// from q and k (and, in the backward, the probabilities from the saved logsumexp).
//
// Per (batch b, head h), s_ij = scale q_i.k_j + max(mask_ij, -FLT_MAX) for the keys query i
// sees (causal: j <= i + Nk - Nq), P_ij = exp(s_ij - lse_i):
//   forward:  out_i = sum_j P_ij v_j, lse_i = log sum_j exp(s_ij) (+inf and out 0 when the row
//             sees no key); one block per 64 queries, online softmax over 64-key tiles.
//   Delta_i = dout_i . out_i                               (delta_kernel, one warp per row)
//   dv_j = sum_i P_ij dout_i, dk_j = scale sum_i dS_ij q_i  (dkv_kernel, one block per 64 keys,
//             looping over the query tiles that see them)
//   dq_i = scale sum_j dS_ij k_j                            (dq_kernel, one block per 64 queries)
//   with dS_ij = P_ij (dout_i . v_j - Delta_i).
// Every output element is owned by one block and summed in a fixed order: results do not vary
// from run to run (no atomics). The score tiles are computed twice in the backward (once per
// direction), the price of determinism.
//
// Head sizes: the accumulators hold 16*JD columns per thread block (JD in {2, 4, 5, 10}, so 32,
// 64, 80 or 160 columns); wider heads are split into column chunks over more blocks, each
// recomputing the scores (any D, Dv >= 1 works). float32 FMA on CUDA cores: correctness first.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "../core/error.h"
#include "attention_backward.cuh"
#include "backward.h"
#include "kernel_util.cuh"
#include "runtime.h"

namespace dk::cuda {
namespace abw {
namespace {

unsigned grid_of(int64_t tiles, int64_t BH, int64_t chunks, const char* op) {
  const int64_t n = tiles * BH * chunks;
  if (n > INT_MAX) throw_range(std::string(op) + ": too many tiles for one launch");
  return static_cast<unsigned>(n);
}

// Runs KERNEL<JD> for the JD that fits `width` columns, with a.chunks set accordingly.
#define DK_ABW_LAUNCH(KERNEL, width, tiles, BH, a, st, op)                                                 \
  do {                                                                                                     \
    const int jd_ = ::dk::cuda::abw::jd_for(width);                                                                         \
    (a).chunks = static_cast<int>(((width) + 16 * jd_ - 1) / (16 * jd_));                                  \
    if ((a).chunks < 1) (a).chunks = 1;                                                                    \
    const unsigned g_ = ::dk::cuda::abw::grid_of(tiles, BH, (a).chunks, op);                                                \
    if (g_ == 0) break;                                                                                    \
    switch (jd_) {                                                                                         \
      case 2: KERNEL<2><<<g_, ::dk::cuda::abw::kThreads, 0, st>>>(a); break;                                                \
      case 4: KERNEL<4><<<g_, ::dk::cuda::abw::kThreads, 0, st>>>(a); break;                                                \
      case 5: KERNEL<5><<<g_, ::dk::cuda::abw::kThreads, 0, st>>>(a); break;                                                \
      default: KERNEL<10><<<g_, ::dk::cuda::abw::kThreads, 0, st>>>(a); break;                                              \
    }                                                                                                      \
    ku::launch_check(op);                                                                                  \
  } while (0)

}  // namespace
}  // namespace abw

void attention_forward_lse(int device, const AttentionParams& p, const float* q, const float* k, const float* v,
                           float* out, float* lse) {
  if (p.B <= 0 || p.heads <= 0 || p.Nq <= 0) return;
  const char* op = "attention_forward_lse";
  abw::Args a = abw::make_args(p, op);
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse_out = lse;
  cudaStream_t st = stream(device);
  const int64_t BH = p.B * p.heads;
  // Dv == 0 still needs one chunk: the lse.
  DK_ABW_LAUNCH(abw::fwd_kernel, std::max<int64_t>(p.Dv, 1), a.qtiles, BH, a, st, op);
}

void attention_backward(int device, const AttentionParams& p, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  if (p.B <= 0 || p.heads <= 0) return;
  const char* op = "attention_backward";
  cudaStream_t st = stream(device);
  const int64_t Nq = p.Nq, Nk = p.Nk, BH = p.B * p.heads;
  if (Nq <= 0 || Nk <= 0) {
    if (Nq > 0 && p.D > 0) check(cudaMemsetAsync(dq, 0, sizeof(float) * p.B * Nq * p.heads * p.D, st), op);
    if (Nk > 0) {
      if (p.D > 0) check(cudaMemsetAsync(dk, 0, sizeof(float) * p.B * Nk * p.heads * p.D, st), op);
      if (p.Dv > 0) check(cudaMemsetAsync(dv, 0, sizeof(float) * p.B * Nk * p.heads * p.Dv, st), op);
    }
    return;
  }
  abw::Args a = abw::make_args(p, op);
  a.q = q;
  a.k = k;
  a.v = v;
  a.o = out;
  a.dout = dout;
  a.lse = lse;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  const int64_t rows = BH * Nq;
  Scratch delta(device, sizeof(float) * static_cast<size_t>(rows));
  a.delta = static_cast<const float*>(delta.ptr);
  abw::delta_kernel<<<ku::grid_for(rows, abw::kThreads / 32, device), abw::kThreads, 0, st>>>(
      a, static_cast<float*>(delta.ptr), rows);
  ku::launch_check("attention_backward: delta");
  if (p.D > 0 || p.Dv > 0) DK_ABW_LAUNCH(abw::dkv_kernel, std::max(p.D, p.Dv), a.ktiles, BH, a, st, "attention_backward: dk, dv");
  if (p.D > 0) DK_ABW_LAUNCH(abw::dq_kernel, p.D, a.qtiles, BH, a, st, "attention_backward: dq");
}

}  // namespace dk::cuda
