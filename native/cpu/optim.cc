// Optimiser updates, in place: AdamW (torch.optim.AdamW's single-tensor step), the EMA of
// diffusers' EMAModel, and the pieces of global-norm gradient clipping.
//
// AdamW, each line one float32 rounding (no fused multiply-add but the two explicit ones), scalars
// rounded once from double:
//   p <- p * (1 - lr*wd)                  decoupled weight decay, applied first
//   m <- fma(1 - b1, g, b1*m)
//   v <- fma((1 - b2)*g, g, b2*v)
//   p <- p + ((-lr / (1 - b1^k)) * m) / (sqrt(v) / sqrt(1 - b2^k) + eps)
// which reproduces torch 1.13's CPU path bit for bit on the reference case (test/autograd/optim.test.ts).
#include <algorithm>
#include <cmath>
#include <vector>

// No contraction of a*b+c into FMA here, whatever the target (AArch64 GCC contracts by default):
// the rounding sequence above is the contract.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "../core/thread_pool.h"
#include "cpu_features.h"
#include "optim_internal.h"

namespace dk::cpu {
namespace {
constexpr int64_t kGrain = 1 << 15;
}

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
#if defined(DK_X86)
  const bool avx2 = cpu_features().isa >= Isa::AVX2;
#else
  const bool avx2 = false;
#endif
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
#if defined(DK_X86)
    if (avx2) return adamw_range_avx2(p, g, m, v, lo, hi, s);
#endif
    adamw_range_scalar(p, g, m, v, lo, hi, s);
  });
  (void)avx2;
}

void ema_update(float* shadow, const float* p, int64_t n, float one_minus_decay) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float d = shadow[i] - p[i];
      const float t = one_minus_decay * d;
      shadow[i] = shadow[i] - t;
    }
  });
}

namespace {
double sum_squares_chunk(const float* x, int64_t n) {
#if defined(DK_X86)
  if (cpu_features().isa >= Isa::AVX2) return sum_squares_avx2(x, n);
#endif
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}
}  // namespace

double sum_squares(const float* x, int64_t n) {
  // fixed chunking so the result does not depend on the thread count
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks <= 1) return sum_squares_chunk(x, n);
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
      part[static_cast<size_t>(c)] = sum_squares_chunk(x + b, e - b);
    }
  });
  double s = 0;
  for (double v : part) s += v;
  return s;
}

void scale_inplace(float* x, int64_t n, float s) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) x[i] *= s;
  });
}

void add_inplace(float* dst, const float* src, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) dst[i] += src[i];
  });
}

}  // namespace dk::cpu
