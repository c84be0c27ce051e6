// bfloat16 conv2d, NHWC input and OHWI weights, as the implicit GEMM of conv2d.cc:
//   y[M = N*P*Q, K] = patches[M, R*S*C] @ w[K, R*S*C]^T (+ bias + residual)
// PatchA gathers each A panel straight from x: a panel row is one output pixel's patch, in
// (r, s, c) order with c fastest, so each (r, s) tap is a run of C contiguous bf16 in NHWC and
// lands as a plain copy in the row-major A panel (a bf16 pair may span two taps: vdpbf16ps does
// not care). Padding taps are zeros. A 1x1, stride-1, unpadded conv is a plain GEMM.
#include <algorithm>

#include "conv2d_patch.h"
#include "conv2d_winograd.h"
#include "cpu_features.h"
#include "gemm_bf16_internal.h"

namespace dk::cpu {
namespace {

struct PatchA final : gemm16::ASource {
  const Conv2dParams& p;
  const uint16_t* x;
  PatchA(const Conv2dParams& prm, const uint16_t* xin) : p(prm), x(xin) {}

  void pack(int mr, int64_t i0, int rows, int64_t k0, int64_t kc, uint16_t* panel, int64_t pitch) const override {
    for_each_patch_run(p, x, i0, rows, k0, kc, [&](int64_t off, int64_t len, const uint16_t* const* ptr) {
      gemm16::pack_a_rows(mr, ptr, rows, off, len, panel, pitch);
    });
  }
};

}  // namespace

void conv2d_nhwc_bf16(const Conv2dParams& p, const uint16_t* x, const uint16_t* w, const uint16_t* bias,
                      const uint16_t* residual, uint16_t* y) {
  const int64_t M = p.N * p.P * p.Q;
  if (M <= 0 || p.K <= 0) return;
  if (!cpu_features().avx512_bf16) {
    gemm16::conv2d_fallback(p, x, w, bias, residual, y);  // fp32 conv2d_nhwc, its own algo choice
    return;
  }
  if (conv2d_algo_bf16(p) == ConvAlgo::Winograd) {  // stride-1 3x3 with enough channels and tiles
    conv2d_winograd_bf16(p, x, w, bias, residual, y);
    return;
  }
  GemmEpilogueBf16 ep;
  ep.bias = bias;
  ep.residual = residual;
  ep.ldr = p.K;
  const int64_t Kdim = p.R * p.S * p.C;
  if (conv_is_pointwise(p)) {
    gemm_bf16(1, false, true, M, p.K, p.C, 1.f, x, p.C, 0, w, p.C, 0, y, p.K, 0, ep);
    return;
  }
  PatchA a(p, x);
  const gemm16::ASource* src = &a;
  gemm16::gemm_driver(1, M, p.K, Kdim, 1.f, &src, w, Kdim, 0, true, y, p.K, 0, ep);
}

}  // namespace dk::cpu
