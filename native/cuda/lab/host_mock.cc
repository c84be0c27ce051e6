// Host stand-ins for the dk::cuda entry points gemm_lab uses, so the lab's own harness (layouts,
// strides, padding sentinels, reference, tolerances) can be exercised on a machine without a GPU:
//   nvcc -std=c++17 -I native -DLAB_HOST_MOCK -o /tmp/gemm_lab_mock native/cuda/lab/gemm_lab.cu \
//        native/cuda/lab/host_mock.cc && /tmp/gemm_lab_mock --no-bench
// "Device" pointers are host pointers; gemm and conv2d follow the contracts of cpu/kernels.h with
// naive loops on the storage types. Proves nothing about the CUDA kernels.
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "core/dtype.h"
#include "core/half.h"
#include "cuda/gemm_plan.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace dk::cuda {
namespace {
GemmPath g_path = GemmPath::Auto;
int g_stages = 3;

float ld(DType dt, const void* p, int64_t i) {
  if (dt == DType::F32) return static_cast<const float*>(p)[i];
  const uint16_t u = static_cast<const uint16_t*>(p)[i];
  return dt == DType::F16 ? f16_to_f32(u) : bf16_to_f32(u);
}
void st(DType dt, void* p, int64_t i, float v) {
  if (dt == DType::F32) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = dt == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
}
}  // namespace

int device_count() { return 1; }
DeviceInfo device_info(int) {
  DeviceInfo d;
  d.name = "host mock";
  d.major = 0;
  d.minor = 0;
  d.multiprocessors = 1;
  return d;
}
void bind_thread_to_device(int) {}
void copy_h2d(int, void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void copy_d2h(int, void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void synchronize(int) {}
void set_gemm_path(GemmPath p) { g_path = p; }
GemmPath gemm_path() { return g_path; }
void set_wgmma_stages(int s) { g_stages = s; }
int wgmma_stages() { return g_stages; }
bool gemm_wgmma_available(int) { return false; }
const char* gemm_last_plan() { return "host-mock"; }

void gemm(int, DType dt, int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
          const void* A, int64_t lda, int64_t strideA, const void* B, int64_t ldb, int64_t strideB, float beta, void* C,
          int64_t ldc, int64_t strideC, const GemmEpilogue& ep) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        float s = 0;
        for (int64_t k = 0; k < K; ++k)
          s += ld(dt, A, b * strideA + (transA ? k * lda + m : m * lda + k)) *
               ld(dt, B, b * strideB + (transB ? n * ldb + k : k * ldb + n));
        const int64_t ci = b * strideC + m * ldc + n;
        float o = alpha * s;
        if (beta != 0.f) o += beta * ld(dt, C, ci);
        if (ep.bias) o += ld(dt, ep.bias, n);
        if (ep.residual) o += ld(dt, ep.residual, b * ep.stride_residual + m * ep.ldr + n);
        st(dt, C, ci, o);
      }
}

void conv2d_nhwc(int, DType dt, const Conv2dParams& p, const void* x, const void* w, const void* bias,
                 const void* residual, void* y) {
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t pp = 0; pp < p.P; ++pp)
      for (int64_t q = 0; q < p.Q; ++q)
        for (int64_t k = 0; k < p.K; ++k) {
          float s = 0;
          for (int64_t r = 0; r < p.R; ++r)
            for (int64_t t = 0; t < p.S; ++t) {
              const int64_t ih = pp * p.stride_h - p.pad_h + r * p.dil_h, iw = q * p.stride_w - p.pad_w + t * p.dil_w;
              if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
              for (int64_t c = 0; c < p.C; ++c)
                s += ld(dt, x, ((n * p.H + ih) * p.W + iw) * p.C + c) * ld(dt, w, ((k * p.R + r) * p.S + t) * p.C + c);
            }
          const int64_t yi = ((n * p.P + pp) * p.Q + q) * p.K + k;
          if (bias) s += ld(dt, bias, k);
          if (residual) s += ld(dt, residual, yi);
          st(dt, y, yi, s);
        }
}

}  // namespace dk::cuda
