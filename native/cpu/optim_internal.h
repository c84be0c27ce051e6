// AdamW's element loop, shared by optim.cc (portable, dispatch) and optim_avx2.cc, and the
// AVX2 loops optim.cc dispatches to.
#pragma once
#include <cmath>
#include <cstdint>

#include "backward.h"

namespace dk::cpu {

// One float32 rounding per line (see optim.cc); the caller's file must not contract a*b+c.
inline void adamw_range_scalar(float* p, const float* g, float* m, float* v, int64_t lo, int64_t hi,
                               const AdamWScalars& s) {
  for (int64_t i = lo; i < hi; ++i) {
    float pi = p[i] * s.decay;
    const float gi = g[i];
    const float mi = std::fma(s.one_minus_beta1, gi, s.beta1 * m[i]);
    const float vi = std::fma(s.one_minus_beta2 * gi, gi, s.beta2 * v[i]);
    const float denom = std::sqrt(vi) / s.sqrt_bc2 + s.eps;
    pi = pi + (s.neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
  }
}

#if defined(DK_X86)
void adamw_range_avx2(float* p, const float* g, float* m, float* v, int64_t lo, int64_t hi, const AdamWScalars& s);
double sum_squares_avx2(const float* x, int64_t n);
#endif

}  // namespace dk::cpu
