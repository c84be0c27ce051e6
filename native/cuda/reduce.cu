// Sum / Mean / Max over the middle axis of x [outer, n, inner] (contract: native/cpu/kernels.h,
// reduce.cc). float32 accumulation; Max propagates NaN. Three tilings keep reads coalesced:
//   inner == 1, n <= 4096: a warp per row;
//   inner < 32:            a block per [n, inner] slab, read flat; thread t always meets
//                          column t % inner, then a fixed tree over the row slots;
//   inner >= 32:           32 columns x 8 row-slots per block.
// When that gives too few blocks for the GPU, n is split across blocks (grid.y); the float32
// partials are then combined in split order by a second launch. Fixed orders everywhere, so
// results are the same on every run.
#include <cmath>

#include "kernel_util.cuh"
#include "kernels.h"
#include "runtime.h"

namespace dk::cuda {
namespace red {

using ku::from_f;
using ku::to_f;

template <bool MAX> __device__ __forceinline__ float ident() { return MAX ? -INFINITY : 0.f; }
template <bool MAX> __device__ __forceinline__ float comb(float a, float b) {
  if constexpr (MAX) return (b > a || isnan(b)) ? b : a;  // NaN sticks
  else return a + b;
}

// Writes a finished value (Mean divides by n), or the raw partial for split s.
template <typename T>
__device__ __forceinline__ void emit(float v, int64_t idx, T* out, float* ws, int64_t split, int64_t per_split,
                                     bool mean, int64_t n) {
  if (ws) ws[split * per_split + idx] = v;
  else out[idx] = from_f<T>(mean ? v / static_cast<float>(n) : v);
}

template <typename T, bool MAX>
__global__ void __launch_bounds__(256) reduce_warp_rows(const T* __restrict__ x, T* __restrict__ out, int64_t outer,
                                                        int64_t n, bool mean) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * 8;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5); row < outer; row += warps) {
    const T* xr = x + row * n;
    float a = ident<MAX>();
    for (int64_t k = lane; k < n; k += 32) a = comb<MAX>(a, to_f(xr[k]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = comb<MAX>(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (lane == 0) out[row] = from_f<T>(mean ? a / static_cast<float>(n) : a);
  }
}

// blockIdx.x: outer index, blockIdx.y: split. RR row-slots (a power of two) x inner columns.
template <typename T, bool MAX>
__global__ void __launch_bounds__(256) reduce_slab(const T* __restrict__ x, T* __restrict__ out,
                                                   float* __restrict__ ws, int64_t outer, int64_t n, int inner,
                                                   int RR, int64_t rows_per_split, bool mean) {
  __shared__ float acc[256];
  const int t = threadIdx.x;
  const int64_t o = blockIdx.x;
  const int64_t k0 = blockIdx.y * rows_per_split;
  const int64_t k1 = min(n, k0 + rows_per_split);
  const int active = inner * RR;
  float a = ident<MAX>();
  if (t < active) {
    const int c = t % inner, r = t / inner;
    const T* xs = x + o * n * inner + c;
    for (int64_t k = k0 + r; k < k1; k += RR) a = comb<MAX>(a, to_f(xs[k * inner]));
  }
  acc[t] = a;
  __syncthreads();
  for (int h = RR / 2; h >= 1; h >>= 1) {
    if (t < h * inner) acc[t] = comb<MAX>(acc[t], acc[t + h * inner]);
    __syncthreads();
  }
  if (t < inner) emit<T>(acc[t], o * inner + t, out, ws, blockIdx.y, outer * inner, mean, n);
}

// blockIdx.x: (column tile, outer) flattened, blockIdx.y: split. Block (32, 8).
template <typename T, bool MAX>
__global__ void __launch_bounds__(256) reduce_cols(const T* __restrict__ x, T* __restrict__ out,
                                                   float* __restrict__ ws, int64_t outer, int64_t n,
                                                   int64_t inner, int64_t tiles, int64_t rows_per_split,
                                                   bool mean) {
  __shared__ float acc[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tile = blockIdx.x % tiles, o = blockIdx.x / tiles;
  const int64_t i = tile * 32 + tx;
  const int64_t k0 = blockIdx.y * rows_per_split;
  const int64_t k1 = min(n, k0 + rows_per_split);
  float a = ident<MAX>();
  if (i < inner) {
    const T* xs = x + o * n * inner + i;
    for (int64_t k = k0 + ty; k < k1; k += 8) a = comb<MAX>(a, to_f(xs[k * inner]));
  }
  acc[ty][tx] = a;
  __syncthreads();
#pragma unroll
  for (int h = 4; h >= 1; h >>= 1) {
    if (ty < h) acc[ty][tx] = comb<MAX>(acc[ty][tx], acc[ty + h][tx]);
    __syncthreads();
  }
  if (ty == 0 && i < inner) emit<T>(acc[0][tx], o * inner + i, out, ws, blockIdx.y, outer * inner, mean, n);
}

// out[j] = combine over splits s of ws[s * m + j], in split order.
template <typename T, bool MAX>
__global__ void __launch_bounds__(256) reduce_combine(const float* __restrict__ ws, T* __restrict__ out, int64_t m,
                                                      int64_t splits, int64_t n, bool mean) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < m; j += stride) {
    float a = ident<MAX>();
    for (int64_t s = 0; s < splits; s++) a = comb<MAX>(a, ws[s * m + j]);
    out[j] = from_f<T>(mean ? a / static_cast<float>(n) : a);
  }
}

template <typename T>
__global__ void fill_kernel(T* out, int64_t m, float v) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < m; j += stride)
    out[j] = from_f<T>(v);
}

template <typename T, bool MAX>
void reduce_t(int device, const T* x, T* out, int64_t outer, int64_t n, int64_t inner, bool mean) {
  const int64_t m = outer * inner;
  cudaStream_t s = stream(device);
  if (n == 0) {  // empty reduction: 0 (Sum), NaN (Mean: 0/0), -inf (Max)
    const float v = MAX ? -INFINITY : (mean ? NAN : 0.f);
    fill_kernel<T><<<ku::grid_for(m, 256, device), 256, 0, s>>>(out, m, v);
    ku::launch_check("reduce");
    return;
  }
  if (inner == 1 && n <= 4096) {
    reduce_warp_rows<T, MAX><<<ku::grid_for(outer, 8, device), 256, 0, s>>>(x, out, outer, n, mean);
    ku::launch_check("reduce");
    return;
  }
  const bool slab = inner < 32;
  const int64_t tiles = (inner + 31) / 32;
  const int64_t natural = slab ? outer : outer * tiles;
  if (natural > 0x7fffffffLL) throw_range("reduce: tensor too large for the CUDA kernel");
  // Split n when the natural grid leaves the GPU idle and each split still has real work.
  const int64_t want = 4LL * ku::sm_count(device);
  int64_t splits = 1;
  if (natural < want) {
    splits = (want + natural - 1) / natural;
    const int64_t max_by_work = std::max<int64_t>(1, n * inner / 4096);
    splits = std::min(std::min(splits, max_by_work), std::min<int64_t>(n, 65535));
  }
  const int64_t rps = (n + splits - 1) / splits;
  splits = (n + rps - 1) / rps;
  float* ws = nullptr;
  const size_t ws_bytes = splits > 1 ? static_cast<size_t>(splits * m) * sizeof(float) : 0;
  if (splits > 1) ws = static_cast<float*>(device_alloc(device, ws_bytes));
  try {
    if (slab) {
      int RR = 1;
      while (RR * 2 * inner <= 256) RR *= 2;
      reduce_slab<T, MAX><<<dim3(static_cast<unsigned>(outer), static_cast<unsigned>(splits)), 256, 0, s>>>(
          x, out, ws, outer, n, static_cast<int>(inner), RR, rps, mean);
    } else {
      reduce_cols<T, MAX><<<dim3(static_cast<unsigned>(natural), static_cast<unsigned>(splits)), dim3(32, 8), 0, s>>>(
          x, out, ws, outer, n, inner, tiles, rps, mean);
    }
    ku::launch_check("reduce");
    if (ws) {
      reduce_combine<T, MAX><<<ku::grid_for(m, 256, device), 256, 0, s>>>(ws, out, m, splits, n, mean);
      ku::launch_check("reduce");
    }
  } catch (...) {
    if (ws) device_free(device, ws, ws_bytes);
    throw;
  }
  if (ws) device_free(device, ws, ws_bytes);  // stream-ordered reuse (one stream per device)
}

}  // namespace red

void reduce(int device, DType dt, ReduceOp op, const void* x, void* out, int64_t outer, int64_t n, int64_t inner) {
  if (outer <= 0 || inner <= 0 || n < 0) return;
  if (op != ReduceOp::Sum && op != ReduceOp::Mean && op != ReduceOp::Max)
    throw_range("reduce: unknown op " + std::to_string(static_cast<int>(op)));
  DK_DISPATCH_FLOAT(dt, "reduce", {
    const T* px = static_cast<const T*>(x);
    T* po = static_cast<T*>(out);
    if (op == ReduceOp::Max) red::reduce_t<T, true>(device, px, po, outer, n, inner, false);
    else red::reduce_t<T, false>(device, px, po, outer, n, inner, op == ReduceOp::Mean);
  });
}

}  // namespace dk::cuda
