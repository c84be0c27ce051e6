// Group norm (+ fused SiLU), layer norm and softmax backward on device (contracts:
// native/cuda/backward.h; math and rounding points of native/cpu/norm_backward.cc and
// elementwise_backward.cc). float32 storage, statistics in double.
//
// Group norm mirrors the CPU's passes so that the float partial sums are the same numbers:
// a "task" is (sample n, chunk of 64 rows); a block per task, a thread per channel, walks its
// rows in order, summing in float (as the CPU does per chunk), and stores the per-channel
// partial in double. Every cross-task sum is then taken in a fixed order (a block per group or
// per channel, fixed tree): no atomics, the same result on every run.
//   1. per-channel sums of x             -> mean per (n, group)
//   2. per-channel sums of (x - mean)^2  -> rstd per (n, group)
//   3. dy' = dy * silu'(y) (kept in dx), per-channel sums of dy' and dy' xhat
//      -> dbeta, dgamma (over all tasks), and per (n, group) means of dy' gamma, dy' gamma xhat
//   4. dx = rstd (dy' gamma - mean_g(dy' gamma) - xhat mean_g(dy' gamma xhat))
#include <cmath>

#include "backward.h"
#include "kernel_util.cuh"
#include "runtime.h"

namespace dk::cuda {
namespace nb {

constexpr int kThreads = 256;
constexpr int64_t kRows = 64;  // rows per group-norm task, as the CPU

using deriv::exp_fast;  // the CPU's (core/derivatives.h): the fused-SiLU derivative uses it

__device__ __forceinline__ float silu_grad(float z) {
  const float sg = 1.f / (1.f + exp_fast(-z));
  return sg * (1.f + z * (1.f - sg));
}

// Sums v over the block in a fixed tree (every thread gets the result). sh: blockDim doubles.
__device__ __forceinline__ double block_sum(double v, double* sh) {
  const int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int h = blockDim.x / 2; h >= 1; h >>= 1) {
    if (t < h) sh[t] += sh[t + h];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

struct GnbGeo {
  int64_t N, L, C, G, Cg, chunks;
};

enum GnPass { kSumX = 0, kSumSq = 1, kDyPrime = 2 };

// Block per task (n, chunk), thread per channel (c += blockDim). Pass kSumX: part = sum x;
// kSumSq: part = sum (x - mean)^2; kDyPrime: dy' into dx (when wanted), part = sum dy',
// part2 = sum dy' xhat. Float within the chunk, in row order, as the CPU.
template <int PASS>
__global__ void __launch_bounds__(kThreads) gnb_rows(GnbGeo geo, const float* __restrict__ x,
                                                     const float* __restrict__ dy, const float* __restrict__ mean,
                                                     const float* __restrict__ rstd, const float* __restrict__ gamma,
                                                     const float* __restrict__ beta, bool silu, float* __restrict__ dx,
                                                     double* __restrict__ part, double* __restrict__ part2) {
  const int64_t task = blockIdx.x;
  const int64_t n = task / geo.chunks, k = task - n * geo.chunks;
  const int64_t l0 = min(geo.L, k * kRows), l1 = min(geo.L, (k + 1) * kRows);
  for (int64_t c = threadIdx.x; c < geo.C; c += blockDim.x) {
    const int64_t g = c / geo.Cg;
    const float* xc = x + n * geo.L * geo.C + c;
    float f = 0.f, f2 = 0.f;
    if constexpr (PASS == kSumX) {
      for (int64_t l = l0; l < l1; ++l) f += xc[l * geo.C];
    } else if constexpr (PASS == kSumSq) {
      const float mc = mean[n * geo.G + g];
      for (int64_t l = l0; l < l1; ++l) {
        const float d = xc[l * geo.C] - mc;
        f = __fadd_rn(f, __fmul_rn(d, d));  // no contraction: the CPU's two roundings
      }
    } else {
      const float mc = mean[n * geo.G + g], rc = rstd[n * geo.G + g];
      const float ga = gamma ? gamma[c] : 1.f, be = beta ? beta[c] : 0.f;
      const float* dc = dy + n * geo.L * geo.C + c;
      float* oc = dx ? dx + n * geo.L * geo.C + c : nullptr;
      for (int64_t l = l0; l < l1; ++l) {
        const float xh = (xc[l * geo.C] - mc) * rc;
        float d = dc[l * geo.C];
        if (silu) d = d * silu_grad(__fadd_rn(__fmul_rn(xh, ga), be));
        if (oc) oc[l * geo.C] = d;
        f += d;
        f2 = __fadd_rn(f2, __fmul_rn(d, xh));
      }
    }
    part[task * geo.C + c] = f;
    if constexpr (PASS == kDyPrime) part2[task * geo.C + c] = f2;
  }
}

// Block per (n, g): the group's total over its chunks and channels, each channel's partial
// weighted by w[c] when given. MODE 0: mean = s / M; 1: rstd = 1 / sqrt(s / M + eps);
// 2: ma = sum(part * gamma) / M and mb = sum(part2 * gamma) / M.
template <int MODE>
__global__ void __launch_bounds__(kThreads) gnb_group(GnbGeo geo, const double* __restrict__ part,
                                                      const double* __restrict__ part2,
                                                      const float* __restrict__ gamma, float eps,
                                                      float* __restrict__ out, float* __restrict__ out2) {
  __shared__ double sh[kThreads];
  const int64_t ng = blockIdx.x;
  const int64_t n = ng / geo.G, g = ng - n * geo.G;
  const int64_t M = geo.L * geo.Cg;
  const int64_t items = geo.chunks * geo.Cg;
  double s = 0, s2 = 0;
  for (int64_t e = threadIdx.x; e < items; e += blockDim.x) {
    const int64_t k = e / geo.Cg, c = g * geo.Cg + (e - k * geo.Cg);
    const int64_t idx = (n * geo.chunks + k) * geo.C + c;
    if constexpr (MODE == 2) {
      const double w = gamma ? gamma[c] : 1.0;
      s += part[idx] * w;
      s2 += part2[idx] * w;
    } else {
      s += part[idx];
    }
  }
  s = block_sum(s, sh);
  if constexpr (MODE == 2) s2 = block_sum(s2, sh);
  if (threadIdx.x != 0) return;
  if constexpr (MODE == 0) {
    out[ng] = M ? static_cast<float>(s / M) : 0.f;
  } else if constexpr (MODE == 1) {
    out[ng] = static_cast<float>(1.0 / sqrt((M ? s / M : 0.0) + static_cast<double>(eps)));
  } else {
    out[ng] = M ? static_cast<float>(s / M) : 0.f;
    out2[ng] = M ? static_cast<float>(s2 / M) : 0.f;
  }
}

// Block per channel c: sums part[t*C + c] (and part2) over `tasks` in a fixed tree; null
// outputs are skipped. Used for dbeta/dgamma of both norms.
__global__ void __launch_bounds__(kThreads) param_sums(const double* __restrict__ part,
                                                       const double* __restrict__ part2, int64_t tasks, int64_t C,
                                                       float* __restrict__ out, float* __restrict__ out2) {
  __shared__ double sh[kThreads];
  const int64_t c = blockIdx.x;
  double s = 0, s2 = 0;
  for (int64_t t = threadIdx.x; t < tasks; t += blockDim.x) {
    if (out) s += part[t * C + c];
    if (out2) s2 += part2[t * C + c];
  }
  if (out) s = block_sum(s, sh);
  if (out2) s2 = block_sum(s2, sh);
  if (threadIdx.x == 0) {
    if (out) out[c] = static_cast<float>(s);
    if (out2) out2[c] = static_cast<float>(s2);
  }
}

// dx holds dy'; rewritten in place to the input gradient.
__global__ void __launch_bounds__(kThreads) gnb_dx(GnbGeo geo, const float* __restrict__ x,
                                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                                   const float* __restrict__ ma, const float* __restrict__ mb,
                                                   const float* __restrict__ gamma, float* __restrict__ dx) {
  const int64_t total = geo.N * geo.L * geo.C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total; e += stride) {
    const int64_t c = e % geo.C;
    const int64_t n = e / (geo.L * geo.C);
    const int64_t ng = n * geo.G + c / geo.Cg;
    const float rc = rstd[ng];
    const float xh = (x[e] - mean[ng]) * rc;
    const float ga = gamma ? gamma[c] : 1.f;
    // rc * ((o*gam - a) - xh*b), each product and difference rounded as on the CPU
    dx[e] = __fmul_rn(rc, __fsub_rn(__fsub_rn(__fmul_rn(dx[e], ga), ma[ng]), __fmul_rn(xh, mb[ng])));
  }
}

// ---------------------------------------------------------------- layer norm
// A warp per row: double statistics as the CPU, then dx. Row statistics (float mean, rstd) are
// kept for the dgamma/dbeta pass.
__global__ void __launch_bounds__(kThreads) lnb_rows(const float* __restrict__ x, const float* __restrict__ dy,
                                                     int64_t rows, int64_t C, const float* __restrict__ gamma,
                                                     float eps, float* __restrict__ dx, float2* __restrict__ stats) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float* xr = x + r * C;
    const float* dr = dy + r * C;
    double s = 0;
    for (int64_t c = lane; c < C; c += 32) s += xr[c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const double mean = s / C;
    double v = 0;
    for (int64_t c = lane; c < C; c += 32) {
      const double d = xr[c] - mean;
      v += d * d;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const float rstd = static_cast<float>(1.0 / sqrt(v / C + static_cast<double>(eps)));
    const float meanf = static_cast<float>(mean);
    if (lane == 0 && stats) stats[r] = make_float2(meanf, rstd);
    if (!dx) continue;
    double a = 0, b = 0;
    for (int64_t c = lane; c < C; c += 32) {
      const float xh = (xr[c] - meanf) * rstd;
      const float dxh = dr[c] * (gamma ? gamma[c] : 1.f);
      a += dxh;
      b += static_cast<double>(dxh) * xh;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_xor_sync(0xffffffffu, a, o);
      b += __shfl_xor_sync(0xffffffffu, b, o);
    }
    const float ma = static_cast<float>(a / C), mb = static_cast<float>(b / C);
    float* o = dx + r * C;
    for (int64_t c = lane; c < C; c += 32) {
      const float xh = (xr[c] - meanf) * rstd;
      const float dxh = dr[c] * (gamma ? gamma[c] : 1.f);
      o[c] = __fmul_rn(rstd, __fsub_rn(__fsub_rn(dxh, ma), __fmul_rn(xh, mb)));
    }
  }
}

// Block per chunk of kRows rows, thread per channel: double partials of dy xhat and dy.
__global__ void __launch_bounds__(kThreads) lnb_params(const float* __restrict__ x, const float* __restrict__ dy,
                                                       int64_t rows, int64_t C, const float2* __restrict__ stats,
                                                       double* __restrict__ pg, double* __restrict__ pb) {
  const int64_t k = blockIdx.x;
  const int64_t r0 = k * kRows, r1 = min(rows, r0 + kRows);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double sg = 0, sb = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const float2 st = stats[r];
      const float xh = (x[r * C + c] - st.x) * st.y;
      const float d = dy[r * C + c];
      sg += static_cast<double>(d) * xh;
      sb += d;
    }
    pg[k * C + c] = sg;
    pb[k * C + c] = sb;
  }
}

// ---------------------------------------------------------------- softmax
// A warp per row: s = sum y*dy in double, rounded once; dx = y (dy - s).
__global__ void __launch_bounds__(kThreads) softmax_bw(const float* __restrict__ y, const float* __restrict__ dy,
                                                       float* __restrict__ dx, int64_t rows, int64_t C) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float* yr = y + r * C;
    const float* dr = dy + r * C;
    double s = 0;
    for (int64_t c = lane; c < C; c += 32) s += static_cast<double>(yr[c]) * dr[c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float sf = static_cast<float>(s);
    float* o = dx + r * C;
    for (int64_t c = lane; c < C; c += 32) o[c] = __fmul_rn(yr[c], __fsub_rn(dr[c], sf));
  }
}

inline int block_for_channels(int64_t C) {
  const int64_t t = ((C + 31) / 32) * 32;
  return static_cast<int>(t < kThreads ? t : kThreads);
}

}  // namespace nb

// ================================================================ entry points
void group_norm_backward(int device, const float* x, const float* dy, int64_t N, int64_t L, int64_t C, int64_t G,
                         const float* gamma, const float* beta, float eps, bool silu, float* dx, float* dgamma,
                         float* dbeta) {
  if (N <= 0 || C <= 0 || G <= 0) return;
  if (!dx && !dgamma && !dbeta) return;
  nb::GnbGeo geo{};
  geo.N = N;
  geo.L = L;
  geo.C = C;
  geo.G = G;
  geo.Cg = C / G;
  geo.chunks = L > 0 ? (L + nb::kRows - 1) / nb::kRows : 1;
  const int64_t tasks = N * geo.chunks, NG = N * G;
  if (tasks > 0x7fffffffLL || NG > 0x7fffffffLL) throw_range("group_norm_backward: tensor too large for the CUDA kernel");
  // part, part2 [tasks, C] double; mean, rstd, ma, mb [N, G] float
  const size_t part_bytes = static_cast<size_t>(tasks * C) * sizeof(double);
  const size_t ng_bytes = static_cast<size_t>(NG) * sizeof(float);
  Scratch ws(device, 2 * part_bytes + 4 * ng_bytes);
  double* part = static_cast<double*>(ws.ptr);
  double* part2 = part + tasks * C;
  float* mean = reinterpret_cast<float*>(part2 + tasks * C);
  float* rstd = mean + NG;
  float* ma = rstd + NG;
  float* mb = ma + NG;
  cudaStream_t s = stream(device);
  const unsigned tg = static_cast<unsigned>(tasks), gg = static_cast<unsigned>(NG);
  const int tb = nb::block_for_channels(C);
  const char* what = "group_norm_backward";
  // 1. mean
  nb::gnb_rows<nb::kSumX><<<tg, tb, 0, s>>>(geo, x, dy, nullptr, nullptr, gamma, beta, silu, nullptr, part, nullptr);
  ku::launch_check(what);
  nb::gnb_group<0><<<gg, nb::kThreads, 0, s>>>(geo, part, nullptr, nullptr, eps, mean, nullptr);
  ku::launch_check(what);
  // 2. rstd
  nb::gnb_rows<nb::kSumSq><<<tg, tb, 0, s>>>(geo, x, dy, mean, nullptr, gamma, beta, silu, nullptr, part, nullptr);
  ku::launch_check(what);
  nb::gnb_group<1><<<gg, nb::kThreads, 0, s>>>(geo, part, nullptr, nullptr, eps, rstd, nullptr);
  ku::launch_check(what);
  // 3. dy' (into dx) and its sums
  nb::gnb_rows<nb::kDyPrime><<<tg, tb, 0, s>>>(geo, x, dy, mean, rstd, gamma, beta, silu, dx, part, part2);
  ku::launch_check(what);
  if (dbeta || dgamma) {
    nb::param_sums<<<static_cast<unsigned>(C), nb::kThreads, 0, s>>>(part, part2, tasks, C, dbeta, dgamma);
    ku::launch_check(what);
  }
  if (!dx) return;
  // 4. dx
  nb::gnb_group<2><<<gg, nb::kThreads, 0, s>>>(geo, part, part2, gamma, eps, ma, mb);
  ku::launch_check(what);
  nb::gnb_dx<<<ku::grid_for(N * L * C, nb::kThreads, device), nb::kThreads, 0, s>>>(geo, x, mean, rstd, ma, mb, gamma,
                                                                                    dx);
  ku::launch_check(what);
}

void layer_norm_backward(int device, const float* x, const float* dy, int64_t rows, int64_t C, const float* gamma,
                         float eps, float* dx, float* dgamma, float* dbeta) {
  if (C <= 0) return;
  const bool params = dgamma || dbeta;
  if (rows <= 0) {  // empty: the parameter gradients are sums over nothing
    cudaStream_t s = stream(device);
    if (dgamma) check(cudaMemsetAsync(dgamma, 0, sizeof(float) * C, s), "layer_norm_backward");
    if (dbeta) check(cudaMemsetAsync(dbeta, 0, sizeof(float) * C, s), "layer_norm_backward");
    return;
  }
  if (!dx && !params) return;
  const int64_t chunks = (rows + nb::kRows - 1) / nb::kRows;
  if (chunks > 0x7fffffffLL) throw_range("layer_norm_backward: tensor too large for the CUDA kernel");
  const size_t stat_bytes = params ? static_cast<size_t>(rows) * sizeof(float2) : 0;
  const size_t part_bytes = params ? static_cast<size_t>(chunks * C) * sizeof(double) : 0;
  Scratch ws(device, 2 * part_bytes + stat_bytes);
  double* pg = static_cast<double*>(ws.ptr);
  double* pb = params ? pg + chunks * C : nullptr;
  float2* stats = params ? reinterpret_cast<float2*>(pb + chunks * C) : nullptr;
  cudaStream_t s = stream(device);
  nb::lnb_rows<<<ku::grid_for(rows, nb::kThreads / 32, device), nb::kThreads, 0, s>>>(x, dy, rows, C, gamma, eps, dx,
                                                                                     stats);
  ku::launch_check("layer_norm_backward");
  if (!params) return;
  nb::lnb_params<<<static_cast<unsigned>(chunks), nb::block_for_channels(C), 0, s>>>(x, dy, rows, C, stats, pg, pb);
  ku::launch_check("layer_norm_backward");
  nb::param_sums<<<static_cast<unsigned>(C), nb::kThreads, 0, s>>>(pg, pb, chunks, C, dgamma, dbeta);
  ku::launch_check("layer_norm_backward");
}

void softmax_backward(int device, const float* y, const float* dy, float* dx, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  nb::softmax_bw<<<ku::grid_for(rows, nb::kThreads / 32, device), nb::kThreads, 0, stream(device)>>>(y, dy, dx, rows,
                                                                                                     C);
  ku::launch_check("softmax_backward");
}

}  // namespace dk::cuda
