// Optimiser updates on device, in place (contracts: native/cuda/backward.h; the rounding
// sequence of native/cpu/optim.cc). AdamW and the EMA are written with explicit
// round-to-nearest intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn, and the two
// __fmaf_rn of the contract): nvcc would otherwise contract a*b+c into FMA, and the CPU's
// sequence of float32 roundings is what makes a CUDA step match a CPU step bit for bit.
//
// Norms: a tensor's sum of squares is taken per chunk of 16384 elements (the CPU's chunking) in
// double, then the chunk partials are added in order, so the result does not vary between runs.
// Lists of tensors travel by value in the kernel parameters (128 per launch), no host-to-device
// copy; clip_grad_norm computes its coefficient on the device and the scaling kernels read it
// from device memory, so nothing waits for the GPU.
#include <cmath>

#include "backward.h"
#include "kernel_util.cuh"
#include "runtime.h"

namespace dk::cuda {
namespace opt {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 1 << 14;  // elements per partial sum, as cpu::sum_squares
constexpr int kGroup = 128;          // tensors per launch (~3 KB of kernel parameters)

__device__ __forceinline__ int64_t gtid() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t gstride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__global__ void __launch_bounds__(kThreads) adamw_kernel(float* __restrict__ p, const float* __restrict__ g,
                                                         float* __restrict__ m, float* __restrict__ v, int64_t n,
                                                         AdamWScalars s) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    float pi = __fmul_rn(p[i], s.decay);
    const float gi = g[i];
    const float mi = __fmaf_rn(s.one_minus_beta1, gi, __fmul_rn(s.beta1, m[i]));
    const float vi = __fmaf_rn(__fmul_rn(s.one_minus_beta2, gi), gi, __fmul_rn(s.beta2, v[i]));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.sqrt_bc2), s.eps);
    pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
  }
}

__global__ void __launch_bounds__(kThreads) ema_kernel(float* __restrict__ shadow, const float* __restrict__ p,
                                                       int64_t n, float one_minus_decay) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const float sv = shadow[i];
    const float d = __fsub_rn(sv, p[i]);
    const float t = __fmul_rn(one_minus_decay, d);
    shadow[i] = __fsub_rn(sv, t);
  }
}

__global__ void __launch_bounds__(kThreads) add_kernel(float* __restrict__ dst, const float* __restrict__ src,
                                                       int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) dst[i] = __fadd_rn(dst[i], src[i]);
}

__global__ void __launch_bounds__(kThreads) scale_kernel(float* __restrict__ x, int64_t n, float s) {
  for (int64_t i = gtid(); i < n; i += gstride()) x[i] = __fmul_rn(x[i], s);
}

// Up to kGroup tensors and, per tensor, the index of its first chunk (chunk0[count] = total).
struct Group {
  int count;
  float* p[kGroup];
  int64_t n[kGroup];
  int64_t chunk0[kGroup + 1];
};

__device__ __forceinline__ int tensor_of_chunk(const Group& g, int64_t b) {
  int lo = 0, hi = g.count - 1;  // last k with chunk0[k] <= b
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (g.chunk0[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Block per chunk: sum of x^2 in double over the chunk, fixed tree, into partial[b].
__global__ void __launch_bounds__(kThreads) sumsq_chunks(Group g, double* __restrict__ partial) {
  __shared__ double sh[kThreads];
  const int64_t b = blockIdx.x;
  const int k = tensor_of_chunk(g, b);
  const int64_t i0 = (b - g.chunk0[k]) * kChunk;
  const int64_t i1 = min(g.n[k], i0 + kChunk);
  const float* x = g.p[k];
  double s = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += static_cast<double>(x[i]) * x[i];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int h = kThreads / 2; h >= 1; h >>= 1) {
    if (threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[b] = sh[0];
}

// Thread per tensor: its chunk partials in order -> float(sqrt(sum)).
__global__ void finish_norms(Group g, const double* __restrict__ partial, float* __restrict__ out) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= g.count) return;
  double s = 0;
  for (int64_t b = g.chunk0[k]; b < g.chunk0[k + 1]; ++b) s += partial[b];
  out[k] = static_cast<float>(sqrt(s));
}

// One thread: the CPU's clip arithmetic over the per-tensor norms, in tensor order.
__global__ void clip_coef(const float* __restrict__ norms, int count, float max_norm, float* __restrict__ total,
                          float* __restrict__ coef) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double sq = 0;
  for (int k = 0; k < count; ++k) sq += static_cast<double>(norms[k]) * norms[k];
  const float tn = static_cast<float>(sqrt(sq));
  total[0] = tn;
  float c = __fdiv_rn(max_norm, __fadd_rn(tn, 1e-6f));
  if (c > 1.f) c = 1.f;
  *coef = c;
}

// Block per chunk: every element of the chunk *= *coef.
__global__ void __launch_bounds__(kThreads) scale_chunks(Group g, const float* __restrict__ coef) {
  const int64_t b = blockIdx.x;
  const int k = tensor_of_chunk(g, b);
  const int64_t i0 = (b - g.chunk0[k]) * kChunk;
  const int64_t i1 = min(g.n[k], i0 + kChunk);
  const float c = *coef;
  float* x = g.p[k];
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) x[i] = __fmul_rn(x[i], c);
}

// Splits the list into groups of kGroup and calls fn(group, first tensor index).
template <typename FN> void for_groups(const float* const* xs, const int64_t* ns, int count, FN&& fn) {
  for (int k0 = 0; k0 < count; k0 += kGroup) {
    Group g{};
    g.count = count - k0 < kGroup ? count - k0 : kGroup;
    int64_t c = 0;
    for (int k = 0; k < g.count; ++k) {
      g.p[k] = const_cast<float*>(xs[k0 + k]);
      g.n[k] = ns[k0 + k] > 0 ? ns[k0 + k] : 0;
      g.chunk0[k] = c;
      c += (g.n[k] + kChunk - 1) / kChunk;
    }
    g.chunk0[g.count] = c;
    if (c > 0x7fffffffLL) throw_range("l2_norms: tensor too large for the CUDA kernel");
    fn(g, k0);
  }
}

int64_t max_group_chunks(const int64_t* ns, int count) {
  int64_t best = 0;
  for (int k0 = 0; k0 < count; k0 += kGroup) {
    int64_t c = 0;
    for (int k = k0; k < count && k < k0 + kGroup; ++k) c += ns[k] > 0 ? (ns[k] + kChunk - 1) / kChunk : 0;
    if (c > best) best = c;
  }
  return best;
}

// Norms of every tensor into out[count]; partial: room for max_group_chunks doubles (groups run
// one after the other on the stream, so they share it).
void norms_into(int device, const float* const* xs, const int64_t* ns, int count, double* partial, float* out) {
  cudaStream_t s = stream(device);
  for_groups(xs, ns, count, [&](const Group& g, int k0) {
    const int64_t chunks = g.chunk0[g.count];
    if (chunks > 0) {
      sumsq_chunks<<<static_cast<unsigned>(chunks), kThreads, 0, s>>>(g, partial);
      ku::launch_check("l2_norms");
    }
    finish_norms<<<1, kGroup, 0, s>>>(g, partial, out + k0);
    ku::launch_check("l2_norms");
  });
}

}  // namespace opt

// ================================================================ entry points
void adamw_step(int device, float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  if (n <= 0) return;
  opt::adamw_kernel<<<ku::grid_for(n, opt::kThreads, device), opt::kThreads, 0, stream(device)>>>(p, g, m, v, n, s);
  ku::launch_check("adamw_step");
}

void ema_update(int device, float* shadow, const float* p, int64_t n, float one_minus_decay) {
  if (n <= 0) return;
  opt::ema_kernel<<<ku::grid_for(n, opt::kThreads, device), opt::kThreads, 0, stream(device)>>>(shadow, p, n,
                                                                                                one_minus_decay);
  ku::launch_check("ema_update");
}

void add_inplace(int device, float* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  opt::add_kernel<<<ku::grid_for(n, opt::kThreads, device), opt::kThreads, 0, stream(device)>>>(dst, src, n);
  ku::launch_check("add_inplace");
}

void scale_inplace(int device, float* x, int64_t n, float s) {
  if (n <= 0) return;
  opt::scale_kernel<<<ku::grid_for(n, opt::kThreads, device), opt::kThreads, 0, stream(device)>>>(x, n, s);
  ku::launch_check("scale_inplace");
}

void l2_norms(int device, const float* const* xs, const int64_t* ns, int count, float* out) {
  if (count <= 0) return;
  const int64_t chunks = opt::max_group_chunks(ns, count);
  Scratch ws(device, static_cast<size_t>(chunks > 0 ? chunks : 1) * sizeof(double));
  opt::norms_into(device, xs, ns, count, static_cast<double*>(ws.ptr), out);
}

void clip_grad_norm(int device, float* const* gs, const int64_t* ns, int count, float max_norm, float* total) {
  cudaStream_t s = stream(device);
  if (count <= 0) {  // no gradients: total 0 (the CPU's sqrt of an empty sum)
    check(cudaMemsetAsync(total, 0, sizeof(float), s), "clip_grad_norm");
    return;
  }
  const int64_t chunks = opt::max_group_chunks(ns, count);
  // partial sums, then count norms and the coefficient (floats)
  const size_t part_bytes = static_cast<size_t>(chunks > 0 ? chunks : 1) * sizeof(double);
  Scratch ws(device, part_bytes + static_cast<size_t>(count + 1) * sizeof(float));
  double* partial = static_cast<double*>(ws.ptr);
  float* norms = reinterpret_cast<float*>(static_cast<char*>(ws.ptr) + part_bytes);
  float* coef = norms + count;
  opt::norms_into(device, gs, ns, count, partial, norms);
  opt::clip_coef<<<1, 1, 0, s>>>(norms, count, max_norm, total, coef);
  ku::launch_check("clip_grad_norm");
  opt::for_groups(gs, ns, count, [&](const opt::Group& g, int) {
    const int64_t c = g.chunk0[g.count];
    if (c <= 0) return;
    opt::scale_chunks<<<static_cast<unsigned>(c), opt::kThreads, 0, s>>>(g, coef);
    ku::launch_check("clip_grad_norm");
  });
}

}  // namespace dk::cuda
