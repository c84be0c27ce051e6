// CUDA kernel entry points: the same contracts as native/cpu/kernels.h, on device pointers,
// with a storage dtype (float32, float16 or bfloat16; accumulation in float32). Each call
// launches on the device's stream (stream.cuh) and returns without synchronising; errors
// (launch failures, bad configurations) throw dk::Error. Plain C++ header: g++ includes it.
// Index types, enums and parameter structs are shared with the CPU backend.
#pragma once
#include <cstdint>

#include "../core/dtype.h"
#include "../cpu/kernels.h"

namespace dk::cuda {

using cpu::AttentionParams;
using cpu::BinaryOp;
using cpu::Conv2dParams;
using cpu::GemmEpilogue;  // bias / residual pointers are device pointers in the storage dtype
using cpu::ReduceOp;
using cpu::UnaryOp;

// gemm.cu: tensor cores for F16/BF16 (mma.sync or wgmma on sm_90), FMA path for F32.
void gemm(int device, DType dt, int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
          float alpha, const void* A, int64_t lda, int64_t strideA, const void* B, int64_t ldb, int64_t strideB,
          float beta, void* C, int64_t ldc, int64_t strideC, const GemmEpilogue& ep);
// conv2d.cu: implicit GEMM on NHWC / OHWI.
void conv2d_nhwc(int device, DType dt, const Conv2dParams& p, const void* x, const void* w, const void* bias,
                 const void* residual, void* y);
// attention.cu: fused flash attention (online softmax); mask (if any) is float32.
void attention(int device, DType dt, const AttentionParams& p, const void* q, const void* k, const void* v, void* out);
// norm.cu
void group_norm(int device, DType dt, const void* x, void* y, int64_t N, int64_t L, int64_t C, int64_t G,
                const void* gamma, const void* beta, float eps, bool silu);
void layer_norm(int device, DType dt, const void* x, void* y, int64_t rows, int64_t C, const void* gamma,
                const void* beta, float eps);
void softmax_lastdim(int device, DType dt, const void* x, void* y, int64_t rows, int64_t C);
// elementwise.cu
void binary(int device, DType dt, BinaryOp op, int ndim, const int64_t* shape, const void* a, const int64_t* sa,
            const void* b, const int64_t* sb, void* out);
void binary_scalar(int device, DType dt, BinaryOp op, const void* a, float s, bool scalar_first, void* out, int64_t n);
void unary(int device, DType dt, UnaryOp op, const void* a, void* out, int64_t n);
void clamp(int device, DType dt, const void* a, float lo, float hi, void* out, int64_t n);
void axpby(int device, DType dt, int64_t n, float a, const void* x, float b, const void* y, float c, const void* z,
           void* out);
void geglu(int device, DType dt, const void* x, void* out, int64_t rows, int64_t C);
// copy.cu (strided_copy works on raw elements of `elem` bytes, any dtype)
void strided_copy(int device, int ndim, const int64_t* shape, const void* src, const int64_t* strides, size_t elem,
                  void* dst);
void cast(int device, DType src_dt, const void* src, DType dst_dt, void* dst, int64_t n);
void upsample_nearest2x_nhwc(int device, DType dt, const void* x, void* y, int64_t N, int64_t H, int64_t W, int64_t C);
void embedding(int device, DType dt, const void* ids, bool ids_is_64, int64_t n, const void* table, int64_t D,
               void* out);
void timestep_embedding(int device, DType dt, const float* t, int64_t B, int64_t dim, bool flip_sin_to_cos,
                        float downscale_freq_shift, float scale, float max_period, void* out);
// reduce.cu
void reduce(int device, DType dt, ReduceOp op, const void* x, void* out, int64_t outer, int64_t n, int64_t inner);
// random.cu: the same Philox4x32-10 stream and Box-Muller mapping as the CPU kernel.
void randn_philox(int device, DType dt, uint64_t seed, uint64_t offset, void* out, int64_t n);

}  // namespace dk::cuda

namespace dk::cuda {
// copy2d.cu: cudaMemcpy2DAsync on the device's stream (device pointers).
void copy_2d(int device, void* dst, int64_t dpitch, const void* src, int64_t spitch, int64_t width_bytes,
             int64_t height);
}  // namespace dk::cuda
