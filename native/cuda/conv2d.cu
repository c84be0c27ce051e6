// dk::cuda::conv2d_nhwc: implicit GEMM on NHWC input and OHWI weights (GEMM M = N*P*Q output
// pixels, N = K output channels, K = R*S*C taps x channels), zero padding, stride, dilation,
// fused bias and residual. 1x1 stride-1 unpadded convs are plain GEMMs; C % 8 == 0 with aligned
// tensors runs on the tensor-core tile kernels (wgmma on sm_90a, else mma.sync, split-K when the
// output is small); anything else (float32, C = 3 or 4 at conv_in) on the SIMT implicit GEMM.
#include <cuda_runtime.h>

#include <climits>
#include <string>

#include "../core/error.h"
#include "kernels.h"
#include "tile_launch.cuh"

namespace dk::cuda {
namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class T>
void conv_typed(int device, const Conv2dParams& c, const void* x, const void* w, const void* bias,
                const void* residual, void* y) {
  tile::TileParams p;
  const int64_t M = c.N * c.P * c.Q, Kg = c.R * c.S * c.C;
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(c.K);
  p.K = static_cast<int>(Kg);
  p.batch = 1;
  p.A = x;
  p.B = w;
  p.ldb = Kg;
  p.C = y;
  p.ldc = c.K;
  p.bias = bias;
  p.res = residual;
  p.ldr = c.K;
  p.transB = 1;
  p.H = static_cast<int>(c.H);
  p.W = static_cast<int>(c.W);
  p.Cin = static_cast<int>(c.C);
  p.P = static_cast<int>(c.P);
  p.Q = static_cast<int>(c.Q);
  p.R = static_cast<int>(c.R);
  p.S = static_cast<int>(c.S);
  p.sh = static_cast<int>(c.stride_h);
  p.sw = static_cast<int>(c.stride_w);
  p.ph = static_cast<int>(c.pad_h);
  p.pw = static_cast<int>(c.pad_w);
  p.dh = static_cast<int>(c.dil_h);
  p.dw = static_cast<int>(c.dil_w);
  bool tc_ok = false;
  if (sizeof(T) == 2) {
    tc_ok = c.C % 8 == 0 && aligned16(x) && aligned16(w);
    p.out_vec = aligned16(y) && c.K % 8 == 0 && (!bias || aligned16(bias)) && (!residual || aligned16(residual));
  }
  tile::detail::run_tiled<T, true>(device, p, tc_ok, "dk::cuda::conv2d_nhwc");
}

}  // namespace

void conv2d_nhwc(int device, DType dt, const Conv2dParams& c, const void* x, const void* w, const void* bias,
                 const void* residual, void* y) {
  if (c.N < 0 || c.H < 0 || c.W < 0 || c.C < 0 || c.K < 0 || c.R < 1 || c.S < 1 || c.P < 0 || c.Q < 0 ||
      c.stride_h < 1 || c.stride_w < 1 || c.dil_h < 1 || c.dil_w < 1 || c.pad_h < 0 || c.pad_w < 0)
    throw_range("conv2d_nhwc: invalid geometry");
  if (c.N == 0 || c.P == 0 || c.Q == 0 || c.K == 0) return;
  const int64_t M = c.N * c.P * c.Q, Kg = c.R * c.S * c.C;
  const int64_t xin = c.N * c.H * c.W * c.C;
  if (M > INT_MAX || Kg > INT_MAX || c.K > INT_MAX || c.N * c.H > INT_MAX || xin > (int64_t(1) << 46))
    throw_range("conv2d_nhwc: problem exceeds 2^31-1 rows/columns");
  if (dt != DType::F32 && dt != DType::F16 && dt != DType::BF16)
    throw_type(std::string("conv2d_nhwc: dtype must be float32, float16 or bfloat16, got ") + dtype_name(dt));

  // 1x1, stride 1, no padding: y[N*H*W, K] = x[N*H*W, C] @ w[K, C]^T (dilation is irrelevant).
  if (c.R == 1 && c.S == 1 && c.stride_h == 1 && c.stride_w == 1 && c.pad_h == 0 && c.pad_w == 0 && c.P == c.H &&
      c.Q == c.W) {
    GemmEpilogue ep;
    ep.bias = static_cast<const float*>(bias);  // storage dtype, as gemm's contract says
    ep.residual = static_cast<const float*>(residual);
    ep.ldr = c.K;
    ep.stride_residual = 0;
    gemm(device, dt, 1, false, true, M, c.K, c.C, 1.f, x, c.C, 0, w, c.C, 0, 0.f, y, c.K, 0, ep);
    return;
  }
  switch (dt) {
    case DType::F32: conv_typed<float>(device, c, x, w, bias, residual, y); break;
    case DType::F16: conv_typed<__half>(device, c, x, w, bias, residual, y); break;
    default: conv_typed<__nv_bfloat16>(device, c, x, w, bias, residual, y); break;
  }
}

}  // namespace dk::cuda
