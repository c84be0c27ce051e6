// Helpers shared by the non-GEMM CUDA kernel families (attention, norm, elementwise, copy,
// reduce, random): storage-dtype conversion, dtype dispatch, 16-byte packs, fast integer
// division for index decomposition, launch checking. Compute is always float32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../core/dtype.h"
#include "../core/error.h"
#include "stream.cuh"

namespace dk::cuda::ku {

// ---------------------------------------------------------------- float <-> storage
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Elements of T in one 16-byte access.
template <typename T> struct Pack {
  static constexpr int N = 16 / sizeof(T);
  alignas(16) T v[N];
};

template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline bool aligned_to(const void* p, size_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

// ---------------------------------------------------------------- unsigned 32-bit division
// q = n / d for n < 2^31 with one mulhi (Granlund & Montgomery's round-up method):
// s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1, q = (mulhi(n, m) + n) >> s.
struct FastDiv {
  uint32_t d = 1, m = 0, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t div) : d(div) {
    s = 0;
    while ((uint64_t(1) << s) < div) s++;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - div)) / div + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

// ---------------------------------------------------------------- launch helpers
inline void launch_check(const char* what) { check(cudaGetLastError(), what); }

inline int sm_count(int device) {
  static int cache[64] = {};
  if (device < 0 || device >= 64) return 108;
  if (cache[device] == 0) {
    int n = 0;
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    cache[device] = n > 0 ? n : 1;
  }
  return cache[device];
}

// Blocks for a grid-stride loop over `work` items with `per_block` items per pass, capped so
// that a huge tensor does not launch millions of blocks.
inline unsigned grid_for(int64_t work, int64_t per_block, int device, int waves = 8) {
  int64_t b = (work + per_block - 1) / per_block;
  int64_t cap = static_cast<int64_t>(sm_count(device)) * waves * 4;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b);
}

[[noreturn]] inline void bad_dtype(const char* op, DType dt) {
  throw_type(std::string(op) + ": CUDA kernel does not support dtype " + dtype_name(dt) +
             " (expected float32, float16 or bfloat16)");
}

}  // namespace dk::cuda::ku

// Runs BODY with `T` bound to the storage type of floating dtype DT (float, __half, __nv_bfloat16).
#define DK_DISPATCH_FLOAT(DT, OPNAME, ...)                      \
  do {                                                          \
    switch (DT) {                                               \
      case ::dk::DType::F32: {                                  \
        using T = float;                                        \
        __VA_ARGS__;                                            \
      } break;                                                  \
      case ::dk::DType::F16: {                                  \
        using T = __half;                                       \
        __VA_ARGS__;                                            \
      } break;                                                  \
      case ::dk::DType::BF16: {                                 \
        using T = __nv_bfloat16;                                \
        __VA_ARGS__;                                            \
      } break;                                                  \
      default: ::dk::cuda::ku::bad_dtype(OPNAME, DT);           \
    }                                                           \
  } while (0)

namespace dk::cuda::ku {

// Drops size-1 dims and merges neighbouring dims that every operand walks contiguously
// (stride[outer] == stride[inner] * shape[inner]); the contiguous output always does.
// shape/strides are rewritten in place (outermost first); returns the new rank (>= 1).
inline int collapse_dims(int ndim, int64_t* shape, int64_t* const* strides, int nops) {
  int out = 0;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    if (out > 0) {
      bool merge = true;
      for (int k = 0; k < nops; k++)
        if (strides[k][out - 1] != strides[k][d] * shape[d]) { merge = false; break; }
      if (merge) {
        shape[out - 1] *= shape[d];
        for (int k = 0; k < nops; k++) strides[k][out - 1] = strides[k][d];
        continue;
      }
    }
    shape[out] = shape[d];
    for (int k = 0; k < nops; k++) strides[k][out] = strides[k][d];
    out++;
  }
  if (out == 0) {  // all dims of size 1 (or rank 0): one element
    shape[0] = 1;
    for (int k = 0; k < nops; k++) strides[k][0] = 1;
    out = 1;
  }
  return out;
}

}  // namespace dk::cuda::ku
