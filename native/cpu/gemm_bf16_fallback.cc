// bfloat16 GEMM and conv2d on CPUs without AVX512_BF16 (or with DIFFUSEKIT_ISA below avx512):
// widen the operands to fp32 (exact), run the fp32 kernels, round the result to bf16 once. So the
// answers match the vdpbf16ps path up to fp32 summation order everywhere.
#include <algorithm>
#include <vector>

#include "../core/half.h"
#include "../core/thread_pool.h"
#include "gemm_bf16_internal.h"

namespace dk::cpu::gemm16 {
namespace {

// rows x cols bf16 at leading dim ld -> dense fp32 [rows][cols].
void widen(const uint16_t* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
  dk::parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t j = 0; j < cols; ++j) dst[i * cols + j] = bf16_to_f32(src[i * ld + j]);
  });
}

void narrow(const float* src, int64_t rows, int64_t cols, uint16_t* dst, int64_t ld) {
  dk::parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t j = 0; j < cols; ++j) dst[i * ld + j] = f32_to_bf16(src[i * cols + j]);
  });
}

}  // namespace

void gemm_fallback(int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                   const uint16_t* A, int64_t lda, int64_t strideA, const uint16_t* B, int64_t ldb, int64_t strideB,
                   uint16_t* C, int64_t ldc, int64_t strideC, const GemmEpilogueBf16& ep) {
  // Stored shapes: A is M x K (K x M when transA), B is K x N (N x K when transB).
  const int64_t ar = transA ? K : M, ac = transA ? M : K, br = transB ? N : K, bc = transB ? K : N;
  std::vector<float> a(size_t(ar * ac)), b(size_t(br * bc)), c(size_t(M * N)), bias, res;
  GemmEpilogue e;
  if (ep.bias) {
    bias.resize(size_t(N));
    widen(ep.bias, 1, N, N, bias.data());
    e.bias = bias.data();
  }
  if (ep.residual) {
    res.resize(size_t(M * N));
    e.residual = res.data();
    e.ldr = N;
  }
  for (int64_t i = 0; i < batch; ++i) {
    widen(A + i * strideA, ar, ac, lda, a.data());
    widen(B + i * strideB, br, bc, ldb, b.data());
    if (ep.residual) widen(ep.residual + i * ep.stride_residual, M, N, ep.ldr, res.data());
    sgemm(1, transA, transB, M, N, K, alpha, a.data(), std::max<int64_t>(ac, 1), 0, b.data(),
          std::max<int64_t>(bc, 1), 0, 0.f, c.data(), N, 0, e);
    narrow(c.data(), M, N, C + i * strideC, ldc);
  }
}

void conv2d_fallback(const Conv2dParams& p, const uint16_t* x, const uint16_t* w, const uint16_t* bias,
                     const uint16_t* residual, uint16_t* y) {
  const int64_t nx = p.N * p.H * p.W * p.C, nw = p.K * p.R * p.S * p.C, ny = p.N * p.P * p.Q * p.K;
  std::vector<float> xf(static_cast<size_t>(nx)), wf(static_cast<size_t>(nw)), yf(static_cast<size_t>(ny)), bf, rf;
  widen(x, 1, nx, nx, xf.data());
  widen(w, 1, nw, nw, wf.data());
  if (bias) {
    bf.resize(size_t(p.K));
    widen(bias, 1, p.K, p.K, bf.data());
  }
  if (residual) {
    rf.resize(size_t(ny));
    widen(residual, 1, ny, ny, rf.data());
  }
  conv2d_nhwc(p, xf.data(), wf.data(), bias ? bf.data() : nullptr, residual ? rf.data() : nullptr, yf.data());
  narrow(yf.data(), 1, ny, y, ny);
}

}  // namespace dk::cpu::gemm16
