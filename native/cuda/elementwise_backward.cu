// Backward of the elementwise family and the small data-movement ops on device (contracts:
// native/cuda/backward.h = native/cpu/backward.h; the CPU kernels in elementwise_backward.cc are
// the reference). float32 storage. Derivatives are evaluated in double and rounded once, as on
// the CPU, so both backends agree to the last bit or two. Every loop is grid-stride with 64-bit
// indices (activations of a large batch pass 2^31 elements).
#include <cmath>

#include "backward.h"
#include "kernel_util.cuh"
#include "runtime.h"

namespace dk::cuda {
namespace ewb {

constexpr int kThreads = 256;
__device__ __forceinline__ int64_t gtid() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t gstride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

using deriv::binary_grad;  // the CPU's formulas (core/derivatives.h)
using deriv::gelu_erf;
using deriv::unary_grad;


// ---------------------------------------------------------------- kernels
// The op is a kernel argument, not a template parameter: one switch per element costs nothing
// next to the double-precision math, and keeps 16 unary x 7 binary instantiations out.
__global__ void __launch_bounds__(kThreads) unary_bw(UnaryOp op, const float* __restrict__ x,
                                                     const float* __restrict__ dy, float* __restrict__ dx,
                                                     int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    if (op == UnaryOp::Neg) dx[i] = -dy[i];
    else dx[i] = static_cast<float>(dy[i] * unary_grad(op, x[i]));
  }
}

struct BwGeo {
  int ndim;
  int64_t shape[cpu::kMaxDims];
  int64_t sa[cpu::kMaxDims], sb[cpu::kMaxDims];
};

// dfull is contiguous over geo.shape (as dy); a and b are read through their broadcast strides.
__global__ void __launch_bounds__(kThreads) binary_bw(BwGeo geo, BinaryOp op, int which, const float* __restrict__ a,
                                                      const float* __restrict__ b, const float* __restrict__ dy,
                                                      float* __restrict__ dfull, int64_t n) {
  for (int64_t e = gtid(); e < n; e += gstride()) {
    int64_t rem = e, oa = 0, ob = 0;
    for (int d = geo.ndim - 1; d >= 0; d--) {
      const int64_t q = rem / geo.shape[d];
      const int64_t c = rem - q * geo.shape[d];
      oa += c * geo.sa[d];
      ob += c * geo.sb[d];
      rem = q;
    }
    dfull[e] = static_cast<float>(dy[e] * binary_grad(op, which, a[oa], b[ob]));
  }
}

__global__ void __launch_bounds__(kThreads) binary_scalar_bw(BinaryOp op, const float* __restrict__ a, float s,
                                                             bool scalar_first, const float* __restrict__ dy,
                                                             float* __restrict__ dx, int64_t n) {
  const int which = scalar_first ? 1 : 0;  // the tensor's place in (a op s) or (s op a)
  for (int64_t i = gtid(); i < n; i += gstride()) {
    if (op == BinaryOp::Mul) {
      dx[i] = dy[i] * s;  // float, as the CPU's fast path
    } else {
      const double x = a[i];
      const double gr = scalar_first ? binary_grad(op, which, s, x) : binary_grad(op, which, x, s);
      dx[i] = static_cast<float>(dy[i] * gr);
    }
  }
}

__global__ void __launch_bounds__(kThreads) clamp_bw(const float* __restrict__ x, float lo, float hi,
                                                     const float* __restrict__ dy, float* __restrict__ dx,
                                                     int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) dx[i] = (x[i] >= lo && x[i] <= hi) ? dy[i] : 0.f;
}

// One thread per output element (r, i) of dy [rows, C]: writes dx[r, i] and dx[r, C + i].
__global__ void __launch_bounds__(kThreads) geglu_bw(const float* __restrict__ x, const float* __restrict__ dy,
                                                     float* __restrict__ dx, int64_t rows, int64_t C) {
  const int64_t n = rows * C;
  for (int64_t e = gtid(); e < n; e += gstride()) {
    const int64_t r = e / C, i = e - r * C;
    const float h = x[r * 2 * C + i], g = x[r * 2 * C + C + i], d = dy[e];
    dx[r * 2 * C + i] = static_cast<float>(d * gelu_erf(g));
    dx[r * 2 * C + C + i] = static_cast<float>(static_cast<double>(d) * h * unary_grad(UnaryOp::Gelu, g));
  }
}

// x [outer, n, inner] with inner > 1: one thread per (o, i); neighbouring threads read
// neighbouring columns, so every pass over k is coalesced.
__global__ void __launch_bounds__(kThreads) max_bw_cols(const float* __restrict__ x, const float* __restrict__ y,
                                                        const float* __restrict__ dy, float* __restrict__ dx,
                                                        int64_t outer, int64_t n, int64_t inner) {
  const int64_t m = outer * inner;
  for (int64_t oi = gtid(); oi < m; oi += gstride()) {
    const int64_t o = oi / inner, i = oi - o * inner;
    const float* xs = x + o * n * inner + i;
    float* ds = dx + o * n * inner + i;
    const float mx = y[oi];
    int64_t ties = 0;
    for (int64_t k = 0; k < n; ++k) ties += xs[k * inner] == mx;
    const float share = ties ? dy[oi] / static_cast<float>(ties) : 0.f;
    for (int64_t k = 0; k < n; ++k) ds[k * inner] = xs[k * inner] == mx ? share : 0.f;
  }
}

// inner == 1: a warp per row of n contiguous values; the tie count is an exact integer sum.
__global__ void __launch_bounds__(kThreads) max_bw_rows(const float* __restrict__ x, const float* __restrict__ y,
                                                        const float* __restrict__ dy, float* __restrict__ dx,
                                                        int64_t outer, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kThreads / 32) + (threadIdx.x >> 5); row < outer;
       row += warps) {
    const float* xs = x + row * n;
    float* ds = dx + row * n;
    const float mx = y[row];
    long long ties = 0;
    for (int64_t k = lane; k < n; k += 32) ties += xs[k] == mx;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ties += __shfl_xor_sync(0xffffffffu, ties, o);
    const float share = ties ? dy[row] / static_cast<float>(ties) : 0.f;
    for (int64_t k = lane; k < n; k += 32) ds[k] = xs[k] == mx ? share : 0.f;
  }
}

// One thread per dx element [N, H, W, C]; the CPU's order of the four adds.
__global__ void __launch_bounds__(kThreads) upsample2x_bw(const float* __restrict__ dy, float* __restrict__ dx,
                                                          int64_t N, int64_t H, int64_t W, int64_t C) {
  const int64_t n_out = N * H * W * C;
  for (int64_t e = gtid(); e < n_out; e += gstride()) {
    int64_t rem = e;
    const int64_t c = rem % C;
    rem /= C;
    const int64_t w = rem % W;
    rem /= W;
    const int64_t h = rem % H;
    const int64_t nn = rem / H;
    const float* r0 = dy + ((nn * 2 * H + 2 * h) * 2 * W + 2 * w) * C + c;
    const float* r1 = r0 + 2 * W * C;
    dx[e] = (r0[0] + r0[C]) + (r1[0] + r1[C]);
  }
}

__device__ __forceinline__ int64_t load_id(const void* ids, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
}

// Deterministic scatter-add, the CPU's scheme: a thread owns column d of the table and adds the
// rows of dy in id order, so repeated ids never race and the sums do not vary between runs.
// Ids outside [0, V) are skipped (the binding validated them; this only keeps memory safe).
__global__ void __launch_bounds__(128) embedding_bw_cols(const void* __restrict__ ids, bool is64, int64_t n,
                                                         const float* __restrict__ dy, int64_t D, int64_t V,
                                                         float* __restrict__ dtable) {
  for (int64_t d = gtid(); d < D; d += gstride()) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = load_id(ids, is64, i);
      if (id < 0 || id >= V) continue;
      dtable[id * D + d] += dy[i * D + d];
    }
  }
}

// Many ids: one thread per dy element with atomicAdd (the sum order of repeated ids varies).
__global__ void __launch_bounds__(kThreads) embedding_bw_atomic(const void* __restrict__ ids, bool is64, int64_t n,
                                                                const float* __restrict__ dy, int64_t D, int64_t V,
                                                                float* __restrict__ dtable) {
  const int64_t total = n * D;
  for (int64_t e = gtid(); e < total; e += gstride()) {
    const int64_t i = e / D, d = e - i * D;
    const int64_t id = load_id(ids, is64, i);
    if (id < 0 || id >= V) continue;
    atomicAdd(dtable + id * D + d, dy[e]);
  }
}

// Position of the first id outside [0, V) (atomicMin over positions; stays ~0 when none).
__global__ void __launch_bounds__(kThreads) first_bad_id_kernel(const void* __restrict__ ids, bool is64, int64_t n,
                                                                int64_t V, unsigned long long* __restrict__ pos) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const int64_t id = load_id(ids, is64, i);
    if (id < 0 || id >= V) atomicMin(pos, static_cast<unsigned long long>(i));
  }
}

// One thread per dx element [outer, size, inner]: the slice's rows take dy, the rest 0.
__global__ void __launch_bounds__(kThreads) slice_bw(const float* __restrict__ dy, float* __restrict__ dx,
                                                     int64_t outer, int64_t size, int64_t count, int64_t inner,
                                                     int64_t start, int64_t step) {
  const int64_t n = outer * size * inner;
  for (int64_t e = gtid(); e < n; e += gstride()) {
    const int64_t k = e % inner;
    const int64_t t = e / inner;
    const int64_t j = t % size, o = t / size;
    float v = 0.f;
    const int64_t off = j - start;
    if (off >= 0 && off % step == 0) {
      const int64_t i = off / step;
      if (i < count) v = dy[(o * count + i) * inner + k];
    }
    dx[e] = v;
  }
}

}  // namespace ewb

// ================================================================ entry points
using ewb::kThreads;

void unary_backward(int device, UnaryOp op, const float* x, const float* dy, float* dx, int64_t n) {
  if (n <= 0) return;
  ewb::unary_bw<<<ku::grid_for(n, kThreads, device), kThreads, 0, stream(device)>>>(op, x, dy, dx, n);
  ku::launch_check("unary_backward");
}

void binary_backward(int device, BinaryOp op, int which, int ndim, const int64_t* shape_in, const float* a,
                     const int64_t* sa_in, const float* b, const int64_t* sb_in, const float* dy, float* dfull) {
  if (ndim < 0 || ndim > cpu::kMaxDims)
    throw_range("binary_backward: rank must be 0.." + std::to_string(cpu::kMaxDims));
  ewb::BwGeo geo{};
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    geo.shape[d] = shape_in[d];
    geo.sa[d] = sa_in[d];
    geo.sb[d] = sb_in[d];
    n *= shape_in[d];
  }
  if (n <= 0) return;
  // fewer dims, fewer divisions per element (the output is contiguous, so it always merges)
  int64_t* strides[2] = {geo.sa, geo.sb};
  geo.ndim = ku::collapse_dims(ndim, geo.shape, strides, 2);
  ewb::binary_bw<<<ku::grid_for(n, kThreads, device), kThreads, 0, stream(device)>>>(geo, op, which, a, b, dy, dfull,
                                                                                       n);
  ku::launch_check("binary_backward");
}

void binary_scalar_backward(int device, BinaryOp op, const float* a, float s, bool scalar_first, const float* dy,
                            float* dx, int64_t n) {
  if (n <= 0) return;
  ewb::binary_scalar_bw<<<ku::grid_for(n, kThreads, device), kThreads, 0, stream(device)>>>(op, a, s, scalar_first,
                                                                                              dy, dx, n);
  ku::launch_check("binary_scalar_backward");
}

void clamp_backward(int device, const float* x, float lo, float hi, const float* dy, float* dx, int64_t n) {
  if (n <= 0) return;
  ewb::clamp_bw<<<ku::grid_for(n, kThreads, device), kThreads, 0, stream(device)>>>(x, lo, hi, dy, dx, n);
  ku::launch_check("clamp_backward");
}

void geglu_backward(int device, const float* x, const float* dy, float* dx, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  ewb::geglu_bw<<<ku::grid_for(rows * C, kThreads, device), kThreads, 0, stream(device)>>>(x, dy, dx, rows, C);
  ku::launch_check("geglu_backward");
}

void max_backward(int device, const float* x, const float* y, const float* dy, float* dx, int64_t outer, int64_t n,
                  int64_t inner) {
  if (outer <= 0 || inner <= 0 || n <= 0) return;
  cudaStream_t s = stream(device);
  if (inner == 1)
    ewb::max_bw_rows<<<ku::grid_for(outer, kThreads / 32, device), kThreads, 0, s>>>(x, y, dy, dx, outer, n);
  else
    ewb::max_bw_cols<<<ku::grid_for(outer * inner, kThreads, device), kThreads, 0, s>>>(x, y, dy, dx, outer, n, inner);
  ku::launch_check("max_backward");
}

void upsample_nearest2x_backward(int device, const float* dy, float* dx, int64_t N, int64_t H, int64_t W, int64_t C) {
  const int64_t n = N * H * W * C;
  if (n <= 0) return;
  ewb::upsample2x_bw<<<ku::grid_for(n, kThreads, device), kThreads, 0, stream(device)>>>(dy, dx, N, H, W, C);
  ku::launch_check("upsample_nearest2x_backward");
}

void embedding_backward(int device, const void* ids, bool ids_is_64, int64_t n, const float* dy, int64_t D, int64_t V,
                        float* dtable) {
  if (V <= 0 || D <= 0) return;
  cudaStream_t s = stream(device);
  check(cudaMemsetAsync(dtable, 0, sizeof(float) * static_cast<size_t>(V * D), s), "embedding_backward");
  if (n <= 0) return;
  // The column scheme runs D threads through n rows each: deterministic and plenty for a text
  // encoder's batch of tokens. Past that (little parallelism, long serial loops) use atomics.
  constexpr int64_t kSerialIds = 8192;
  if (n <= kSerialIds) {
    const unsigned g = static_cast<unsigned>((D + 127) / 128);
    ewb::embedding_bw_cols<<<g, 128, 0, s>>>(ids, ids_is_64, n, dy, D, V, dtable);
  } else {
    ewb::embedding_bw_atomic<<<ku::grid_for(n * D, kThreads, device), kThreads, 0, s>>>(ids, ids_is_64, n, dy, D, V,
                                                                                         dtable);
  }
  ku::launch_check("embedding_backward");
}

int64_t embedding_first_bad_id(int device, const void* ids, bool ids_is_64, int64_t n, int64_t V, int64_t* bad_id) {
  if (n <= 0) return -1;
  cudaStream_t s = stream(device);
  auto* pos = static_cast<unsigned long long*>(device_alloc(device, sizeof(unsigned long long)));
  unsigned long long host_pos = ~0ull;
  try {
    check(cudaMemsetAsync(pos, 0xff, sizeof host_pos, s), "embedding ids check");  // ~0: none found
    ewb::first_bad_id_kernel<<<ku::grid_for(n, kThreads, device), kThreads, 0, s>>>(ids, ids_is_64, n, V, pos);
    ku::launch_check("embedding ids check");
    copy_d2h(device, &host_pos, pos, sizeof host_pos);  // waits for the stream
  } catch (...) {
    device_free(device, pos, sizeof(unsigned long long));
    throw;
  }
  device_free(device, pos, sizeof(unsigned long long));
  if (host_pos >= static_cast<unsigned long long>(n)) return -1;
  const int64_t i = static_cast<int64_t>(host_pos);
  if (bad_id) {
    if (ids_is_64) {
      copy_d2h(device, bad_id, static_cast<const int64_t*>(ids) + i, sizeof(int64_t));
    } else {
      int32_t v = 0;
      copy_d2h(device, &v, static_cast<const int32_t*>(ids) + i, sizeof v);
      *bad_id = v;
    }
  }
  return i;
}

void slice_backward(int device, const float* dy, float* dx, int64_t outer, int64_t size, int64_t count, int64_t inner,
                    int64_t start, int64_t step) {
  const int64_t n = outer * size * inner;
  if (n <= 0) return;
  if (step < 1) throw_range("slice_backward: step must be >= 1");
  ewb::slice_bw<<<ku::grid_for(n, kThreads, device), kThreads, 0, stream(device)>>>(dy, dx, outer, size, count, inner,
                                                                                      start, step);
  ku::launch_check("slice_backward");
}

}  // namespace dk::cuda
