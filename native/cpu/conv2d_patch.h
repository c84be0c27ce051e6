// The implicit-GEMM patch walk shared by conv2d.cc (float32) and conv2d_bf16.cc (bfloat16): row m
// of the patch matrix is output pixel m's receptive field in (r, s, c) order, c fastest, so each
// (r, s) tap is a run of contiguous channels in NHWC and an A panel is gathered as a few row runs.
#pragma once
#include <algorithm>
#include <cstdint>

#include "gemm_internal.h"
#include "kernels.h"

namespace dk::cpu {

// Calls fn(offset in the panel's k, run length, row pointers or null for padding) for each (r, s)
// tap run of channels that [k0, k0 + kc) covers, for output pixels i0..i0+rows-1 (rows <= kMaxMR).
template <class T, class Fn>
void for_each_patch_run(const Conv2dParams& p, const T* x, int64_t i0, int rows, int64_t k0, int64_t kc, Fn&& fn) {
  // Where each output pixel's window starts (top-left tap, may be in the padding).
  int64_t img[gemm::kMaxMR], ih0[gemm::kMaxMR], iw0[gemm::kMaxMR];
  const int64_t PQ = p.P * p.Q;
  for (int i = 0; i < rows; ++i) {
    const int64_t m = i0 + i, n = m / PQ, pq = m % PQ;
    img[i] = n;
    ih0[i] = (pq / p.Q) * p.stride_h - p.pad_h;
    iw0[i] = (pq % p.Q) * p.stride_w - p.pad_w;
  }
  const T* ptr[gemm::kMaxMR];
  const int64_t k_end = k0 + kc;
  for (int64_t k = k0; k < k_end;) {
    const int64_t rs = k / p.C, c = k % p.C;
    const int64_t len = std::min(p.C - c, k_end - k);
    const int64_t r = rs / p.S, s = rs % p.S;
    for (int i = 0; i < rows; ++i) {
      const int64_t ih = ih0[i] + r * p.dil_h, iw = iw0[i] + s * p.dil_w;
      const bool inside = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      ptr[i] = inside ? x + ((img[i] * p.H + ih) * p.W + iw) * p.C + c : nullptr;
    }
    fn(k - k0, len, static_cast<const T* const*>(ptr));
    k += len;
  }
}

// A 1x1, stride-1, unpadded conv: a plain GEMM over the pixels.
inline bool conv_is_pointwise(const Conv2dParams& p) {
  return p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0 && p.P == p.H &&
         p.Q == p.W;
}

}  // namespace dk::cpu
