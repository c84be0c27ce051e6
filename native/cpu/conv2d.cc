// 2-D convolution, NHWC input and OHWI weights, as an implicit GEMM:
//   y[M = N*P*Q, K] = patches[M, R*S*C] @ w[K, R*S*C]^T (+ bias + residual)
// The patch matrix is never built: the GEMM driver asks PatchA for one [kc x mr] A micro-panel at
// a time and PatchA gathers it straight from x into the thread's packing buffer (zeros where the
// window hangs over the padding). Along k the patch row is (r, s, c) with c fastest, so each
// (r, s) tap is a contiguous run of channels in NHWC: the gather is a few row copies per panel.
// The weight is already the GEMM's transposed B ([K][R*S*C] row-major), packed once per call.
// A 1x1, stride-1, unpadded conv is a plain GEMM over the pixels and goes straight to sgemm.
#include <algorithm>

#include "conv2d_winograd.h"
#include "gemm_internal.h"
#include "kernels.h"

namespace dk::cpu {
namespace {

struct PatchA final : gemm::ASource {
  const Conv2dParams& p;
  const float* x;
  explicit PatchA(const Conv2dParams& prm, const float* xin) : p(prm), x(xin) {}

  // Calls fn(offset in the panel's k, run length, row pointers or null for padding) for each
  // (r, s) tap run of channels that [k0, k0 + kc) covers, for output pixels i0..i0+rows-1.
  template <class Fn>
  void for_each_run(int64_t i0, int rows, int64_t k0, int64_t kc, Fn&& fn) const {
    // Where each output pixel's window starts (top-left tap, may be in the padding).
    int64_t img[gemm::kMaxMR], ih0[gemm::kMaxMR], iw0[gemm::kMaxMR];
    const int64_t PQ = p.P * p.Q;
    for (int i = 0; i < rows; ++i) {
      const int64_t m = i0 + i, n = m / PQ, pq = m % PQ;
      img[i] = n;
      ih0[i] = (pq / p.Q) * p.stride_h - p.pad_h;
      iw0[i] = (pq % p.Q) * p.stride_w - p.pad_w;
    }
    const float* ptr[gemm::kMaxMR];
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
      fn(k - k0, len, ptr);
      k += len;
    }
  }

  void pack(const gemm::Kernel& kr, int64_t i0, int rows, int64_t k0, int64_t kc, float* dst) const override {
    const int mr = kr.mr;
    for_each_run(i0, rows, k0, kc, [&](int64_t off, int64_t len, const float* const* ptr) {
      if (len >= 8 || kr.a_rows) {
        gemm::pack_a_columns(kr, kc, off, len, ptr, rows, dst);
      } else {  // few channels (an RGB input layer): plain copies beat a transpose
        float* d = dst + off * mr;
        for (int64_t kk = 0; kk < len; ++kk)
          for (int i = 0; i < mr; ++i) d[kk * mr + i] = (i < rows && ptr[i]) ? ptr[i][kk] : 0.f;
      }
    });
  }

  void prefetch(int64_t i0, int rows, int64_t k0, int64_t kc) const override {
    for_each_run(i0, rows, k0, kc, [&](int64_t, int64_t len, const float* const* ptr) {
      for (int i = 0; i < rows; ++i)
        if (ptr[i]) gemm::prefetch_span(ptr[i], len);
    });
  }
};

}  // namespace

void conv2d_nhwc(const Conv2dParams& p, const float* x, const float* w, const float* bias,
                 const float* residual, float* y) {
  const int64_t M = p.N * p.P * p.Q;
  if (M <= 0 || p.K <= 0) return;
  if (conv2d_algo(p) == ConvAlgo::Winograd) {  // stride-1 3x3 with enough channels and tiles
    conv2d_winograd(p, x, w, bias, residual, y);
    return;
  }
  GemmEpilogue ep;
  ep.bias = bias;
  ep.residual = residual;
  ep.ldr = p.K;
  const int64_t Kdim = p.R * p.S * p.C;
  if (p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0 && p.P == p.H &&
      p.Q == p.W) {
    sgemm(1, false, true, M, p.K, p.C, 1.f, x, p.C, 0, w, p.C, 0, 0.f, y, p.K, 0, ep);
    return;
  }
  PatchA a(p, x);
  gemm::gemm_driver(M, p.K, Kdim, 1.f, a, w, Kdim, true, 0.f, y, p.K, ep);
}

}  // namespace dk::cpu
