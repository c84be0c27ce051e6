// conv2d backward on device, float32 (contracts: native/cuda/backward.h, native/cpu/backward.h;
// NHWC activations, OHWI weights). Two SIMT implicit GEMMs on 64x64 output tiles with 16-deep
// slices in shared memory (each thread 4x4 outputs, like the forward's SIMT path), and a
// deterministic column sum. No buffer of patches or of scattered dy is ever materialised.
//
// Input gradient, a direct gather (covers stride, dilation and any padding, also padding larger
// than dil*(R-1)):
//   dx[n,h,w,c] = sum over (r,s,k) of dy[n,p,q,k] * w[k,r,s,c]
//                 where p = (h + ph - r*dh) / sh when that divides exactly and 0 <= p < P
//                 (q likewise); other taps are zero.
//   GEMM rows = the N*H*W pixels of dx, columns = C, reduction = R*S*K ordered (r, s, k) so the
//   k run is contiguous in both dy and w.
//
// Weight gradient: dw[k, (r,s,c)] = sum over pixels m = (n,p,q) of dy[m,k] * x[n, p*sh-ph+r*dh,
// q*sw-pw+s*dw, c] (0 outside x), i.e. dy^T @ im2col(x) with the patches gathered on the fly. The
// reduction over m is long (N*P*Q) and the output small, so m is split into `splits` contiguous
// ranges; each writes its own partial into a workspace and a second kernel adds the partials in
// split order. Results are therefore bit-identical from run to run (no atomics).
//
// column_sum: per column, every block sums a fixed row range in double, then one pass adds the
// block partials in order (double), rounded to float once, as the CPU kernel does.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "../core/error.h"
#include "backward.h"
#include "conv2d_backward.cuh"
#include "kernel_util.cuh"
#include "runtime.h"

namespace dk::cuda {

void conv2d_backward_input(int device, const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  if (p.N <= 0 || p.H <= 0 || p.W <= 0 || p.C <= 0) return;
  cudaStream_t st = stream(device);
  if (p.K <= 0 || p.P <= 0 || p.Q <= 0) {
    check(cudaMemsetAsync(dx, 0, sizeof(float) * p.N * p.H * p.W * p.C, st), "conv2d_backward_input: memset");
    return;
  }
  const cbw::Geom g = cbw::geom_of(p, "conv2d_backward_input");
  const int64_t M = p.N * p.H * p.W;
  const int64_t mt = (M + cbw::BM - 1) / cbw::BM, ct = (p.C + cbw::BN - 1) / cbw::BN;
  if (mt > INT_MAX || ct > 65535) throw_range("conv2d_backward_input: problem too large for the CUDA kernel");
  cbw::dx_kernel<<<dim3(static_cast<unsigned>(mt), static_cast<unsigned>(ct)), cbw::kThreads, 0, st>>>(g, dy, w, dx);
  ku::launch_check("conv2d_backward_input");
}

void conv2d_backward_weight(int device, const Conv2dParams& p, const float* dy, const float* x, float* dw) {
  const int64_t M = p.N * p.P * p.Q, RSC = p.R * p.S * p.C;
  if (p.K <= 0 || RSC <= 0) return;
  cudaStream_t st = stream(device);
  if (M <= 0) {
    check(cudaMemsetAsync(dw, 0, sizeof(float) * p.K * RSC, st), "conv2d_backward_weight: memset");
    return;
  }
  const cbw::Geom g = cbw::geom_of(p, "conv2d_backward_weight");
  const int64_t nt = (RSC + cbw::BN - 1) / cbw::BN, kt = (p.K + cbw::BM - 1) / cbw::BM;
  if (nt > INT_MAX || kt > 65535) throw_range("conv2d_backward_weight: problem too large for the CUDA kernel");
  int64_t per = 0;
  const int64_t splits = cbw::plan_dw_splits(M, p.K, RSC, ku::sm_count(device), &per);
  const dim3 grid(static_cast<unsigned>(nt), static_cast<unsigned>(kt), static_cast<unsigned>(splits));
  if (splits == 1) {
    cbw::dw_kernel<<<grid, cbw::kThreads, 0, st>>>(g, dy, x, dw, per, 0);
    ku::launch_check("conv2d_backward_weight");
    return;
  }
  const int64_t n = p.K * RSC;
  Scratch part(device, sizeof(float) * static_cast<size_t>(splits * n));
  float* pp = static_cast<float*>(part.ptr);
  cbw::dw_kernel<<<grid, cbw::kThreads, 0, st>>>(g, dy, x, pp, per, n);
  ku::launch_check("conv2d_backward_weight");
  cbw::sum_splits_kernel<<<ku::grid_for(n, 256, device), 256, 0, st>>>(pp, static_cast<int>(splits), n, dw);
  ku::launch_check("conv2d_backward_weight: sum of splits");
}

void column_sum(int device, const float* x, int64_t rows, int64_t C, float* out) {
  if (C <= 0) return;
  cudaStream_t st = stream(device);
  if (rows <= 0) {
    check(cudaMemsetAsync(out, 0, sizeof(float) * C, st), "column_sum: memset");
    return;
  }
  const int64_t ctiles = (C + 31) / 32;
  if (ctiles > INT_MAX) throw_range("column_sum: too many columns");
  int64_t per = 0;
  const int64_t chunks = cbw::plan_colsum_chunks(rows, C, ku::sm_count(device), &per);
  Scratch part(device, sizeof(double) * static_cast<size_t>(chunks * C));
  double* pp = static_cast<double*>(part.ptr);
  cbw::colsum_partial_kernel<<<dim3(static_cast<unsigned>(ctiles), static_cast<unsigned>(chunks)), dim3(32, 8), 0, st>>>(
      x, rows, C, per, pp);
  ku::launch_check("column_sum");
  cbw::colsum_final_kernel<<<ku::grid_for(C, 256, device), 256, 0, st>>>(pp, static_cast<int>(chunks), C, out);
  ku::launch_check("column_sum: final");
}

}  // namespace dk::cuda
