// The work split shared by the fp32 (attention.cc) and bf16 (attention_bf16.cc) flash attention:
// tasks are (batch, head, run of query panels), scheduled dynamically; all scratch is allocated
// on the calling thread, so a failure throws before any work.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

#include "../core/thread_pool.h"
#include "attention_internal.h"

namespace dk::cpu::attn {
namespace {  // as in attention_internal.h: no inline code shared across translation units

inline Shape shape_of(const AttentionParams& p) {
  Shape s;
  s.Nq = p.Nq; s.Nk = p.Nk; s.D = p.D; s.Dv = p.Dv;
  s.q_row = p.q_row; s.k_row = p.k_row; s.v_row = p.v_row; s.o_row = p.o_row;
  s.mask_q = p.mask_q;
  s.scale_log2 = p.scale * kLog2e;
  s.causal = p.causal;
  return s;
}

// rows(head, q0, q1, scratch) for every task, head a HeadT (Head or HeadBf16) over q/k/v/out;
// `panel` queries per panel, scratch_floats(rows) floats of scratch per thread (64-byte aligned).
template <class HeadT, class T, class ScratchFloats, class Rows>
void run_attention_tasks(const AttentionParams& p, int64_t panel, const T* q, const T* k, const T* v, T* out,
                         ScratchFloats&& scratch_floats, Rows&& rows) {
  const int64_t BH = p.B * p.heads;
  // More panels per task amortise the K/V packing; enough tasks keep every thread busy
  // (scheduled dynamically: causal rows differ in cost).
  const int nt = num_threads();
  const int64_t panels = ceil_div(p.Nq, panel);
  const int64_t per_task = imax(1, imin(16, BH * panels / (8 * static_cast<int64_t>(nt))));
  const int64_t rows_per_task = per_task * panel;
  const int64_t ntq = ceil_div(p.Nq, rows_per_task);
  const int64_t items = BH * ntq;
  const int nthreads = static_cast<int>(imin(nt, items));
  const int64_t per_thread = align16(scratch_floats(rows_per_task)) + 16;
  std::vector<float> scratch(static_cast<size_t>(per_thread * nthreads));

  std::atomic<int64_t> next{0};
  parallel_tasks(nthreads, [&](int task, int) {
    float* base = scratch.data() + task * per_thread;
    float* sc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(base) + 63) & ~uintptr_t(63));
    for (;;) {
      const int64_t it = next.fetch_add(1, std::memory_order_relaxed);
      if (it >= items) break;
      // Neighbouring items share a head (its K/V stay in cache); last query blocks first:
      // under a causal mask they are the most expensive.
      const int64_t bh = it / ntq, tq = ntq - 1 - it % ntq;
      const int64_t b = bh / p.heads, hh = bh % p.heads;
      HeadT h;
      h.q = q + b * p.q_batch + hh * p.D;
      h.k = k + b * p.k_batch + hh * p.D;
      h.v = v + b * p.v_batch + hh * p.Dv;
      h.o = out + b * p.o_batch + hh * p.Dv;
      h.mask = p.mask ? p.mask + b * p.mask_b + hh * p.mask_h : nullptr;
      const int64_t q0 = tq * rows_per_task;
      rows(h, q0, imin(p.Nq, q0 + rows_per_task), sc);
    }
  });
}

}  // namespace
}  // namespace dk::cpu::attn
