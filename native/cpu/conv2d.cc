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
#include "conv2d_patch.h"
#include "gemm_internal.h"
#include "kernels.h"

namespace dk::cpu {
namespace {

struct PatchA final : gemm::ASource {
  const Conv2dParams& p;
  const float* x;
  explicit PatchA(const Conv2dParams& prm, const float* xin) : p(prm), x(xin) {}

  template <class Fn>
  void for_each_run(int64_t i0, int rows, int64_t k0, int64_t kc, Fn&& fn) const {
    for_each_patch_run(p, x, i0, rows, k0, kc, fn);
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
  if (conv_is_pointwise(p)) {
    sgemm(1, false, true, M, p.K, p.C, 1.f, x, p.C, 0, w, p.C, 0, 0.f, y, p.K, 0, ep);
    return;
  }
  PatchA a(p, x);
  gemm::gemm_driver(M, p.K, Kdim, 1.f, a, w, Kdim, true, 0.f, y, p.K, ep);
}

}  // namespace dk::cpu
