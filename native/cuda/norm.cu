// Normalisations on device (contracts: native/cpu/kernels.h, norm.cc). gamma/beta are in the
// storage dtype; all statistics are float32 (group norm's cross-block combine in float64).
//
// group_norm runs in one launch per call for small groups (gn_fused_small, below), else in three,
// because one (n, g) group can hold millions of elements (SD's VAE: L = 512*512 rows, C/G = 16):
//   1. stats:    grid (P chunks of rows, N). A block reads its rows of x[n] whole (contiguous,
//                16-byte loads), each thread owning one channel pack for all its rows, and writes
//                the sum and sum of squares per group for its chunk. Values are shifted by the
//                group's first element x[n, 0, g*Cg] so E[x^2] - E[x]^2 does not cancel.
//   2. finalize: one warp per (n, g) adds the P partials in a fixed order (float64) and writes
//                the group mean and per-channel a = rstd*gamma, b = beta.
//   3. apply:    same tiling as 1; y = (x - mean)*a + b (then SiLU), held in registers.
// Every sum is taken in a fixed order, so results do not vary between runs.
#include <cmath>

#include "kernel_util.cuh"
#include "kernels.h"
#include "runtime.h"

namespace dk::cuda {
namespace nrm {

using ku::from_f;
using ku::Pack;
using ku::to_f;

// Loads VEC consecutive elements (VEC == Pack::N uses one 16-byte load).
template <typename T, int VEC> __device__ __forceinline__ void load_vec(const T* p, float (&v)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    Pack<T> pk = ku::load_pack(p);
#pragma unroll
    for (int k = 0; k < VEC; k++) v[k] = to_f(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; k++) v[k] = to_f(p[k]);
  }
}
template <typename T, int VEC> __device__ __forceinline__ void store_vec(T* p, const float (&v)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    Pack<T> pk;
#pragma unroll
    for (int k = 0; k < VEC; k++) pk.v[k] = from_f<T>(v[k]);
    ku::store_pack(p, pk);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; k++) p[k] = from_f<T>(v[k]);
  }
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

// ---------------------------------------------------------------- group norm
struct GnGeo {
  int64_t L, C;
  int G, Cg;
  int cv;       // channel packs per row (C / VEC)
  int R;        // rows per pass when each thread owns one pack (cv <= threads), else 1
  int threads;  // threads that own packs (cv*R, or 256 when cv > 256); the block is this rounded up to 32
  int64_t rpc;  // rows per chunk
  int P;        // chunks per sample
};

// Pack j of a row belongs to group (j*VEC)/Cg; thread t owns pack t % cv of rows t/cv, +R, ...
// (cv <= threads), or packs t, t+threads, ... of every row (cv > threads).
template <typename T, int VEC>
__global__ void gn_stats(GnGeo geo, const T* __restrict__ x, float2* __restrict__ partial) {
  extern __shared__ float2 part[];
  const int chunk = blockIdx.x, n = blockIdx.y, t = threadIdx.x;
  const int64_t l0 = chunk * geo.rpc;
  const int64_t l1 = min(geo.L, l0 + geo.rpc);
  const T* xn = x + static_cast<int64_t>(n) * geo.L * geo.C;
  const bool own = geo.cv <= geo.threads;
  const int j0 = own ? t % geo.cv : t;
  const int r0 = own ? t / geo.cv : 0;
  const int rstep = own ? geo.R : 1;
  if (!own || t < geo.threads) {
    for (int j = j0; j < geo.cv; j += geo.threads) {
      const int g = j * VEC / geo.Cg;
      const float shift = to_f(xn[static_cast<int64_t>(g) * geo.Cg]);
      float s = 0.f, ss = 0.f;
      const T* p = xn + static_cast<int64_t>(j) * VEC;
      int64_t l = l0 + r0;
      // two rows per step: more loads in flight
      for (; l + rstep < l1; l += 2 * rstep) {
        float v[VEC], w[VEC];
        load_vec<T, VEC>(p + l * geo.C, v);
        load_vec<T, VEC>(p + (l + rstep) * geo.C, w);
#pragma unroll
        for (int k = 0; k < VEC; k++) {
          const float d = v[k] - shift, e = w[k] - shift;
          s += d + e;
          ss += d * d + e * e;
        }
      }
      if (l < l1) {
        float v[VEC];
        load_vec<T, VEC>(p + l * geo.C, v);
#pragma unroll
        for (int k = 0; k < VEC; k++) {
          const float d = v[k] - shift;
          s += d;
          ss += d * d;
        }
      }
      part[own ? t : j] = make_float2(s, ss);
      if (own) break;
    }
  }
  __syncthreads();
  // Per-group sum over its (R rows x Cg/VEC packs) slots, in a fixed order.
  const int cpg = geo.Cg / VEC;
  const int rr = own ? geo.R : 1;
  const int lane = t & 31, warp = t >> 5, nwarps = (blockDim.x + 31) >> 5;
  for (int g = warp; g < geo.G; g += nwarps) {
    float s = 0.f, ss = 0.f;
    for (int e = lane; e < rr * cpg; e += 32) {
      const int r = e / cpg, jj = e - r * cpg;
      const float2 v = part[r * geo.cv + g * cpg + jj];
      s += v.x;
      ss += v.y;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, o);
      ss += __shfl_xor_sync(0xffffffffu, ss, o);
    }
    if (lane == 0) partial[(static_cast<int64_t>(n) * geo.P + chunk) * geo.G + g] = make_float2(s, ss);
  }
}

template <typename T>
__global__ void gn_finalize(GnGeo geo, int N, const T* __restrict__ x, const float2* __restrict__ partial,
                            const T* __restrict__ gamma, const T* __restrict__ beta, float eps,
                            float2* __restrict__ ab, float* __restrict__ means) {
  const int lane = threadIdx.x & 31;
  const int w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (w >= N * geo.G) return;
  const int n = w / geo.G, g = w - n * geo.G;
  double s = 0.0, ss = 0.0;
  for (int p = lane; p < geo.P; p += 32) {
    const float2 v = partial[(static_cast<int64_t>(n) * geo.P + p) * geo.G + g];
    s += v.x;
    ss += v.y;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    s += __shfl_xor_sync(0xffffffffu, s, o);
    ss += __shfl_xor_sync(0xffffffffu, ss, o);
  }
  const double cnt = static_cast<double>(geo.L) * geo.Cg;
  const double shift = to_f(x[static_cast<int64_t>(n) * geo.L * geo.C + static_cast<int64_t>(g) * geo.Cg]);
  const double ms = s / cnt;
  double var = ss / cnt - ms * ms;
  if (var < 0.0) var = 0.0;
  const double rstd = 1.0 / sqrt(var + static_cast<double>(eps));
  if (lane == 0) means[w] = static_cast<float>(shift + ms);
  for (int c = g * geo.Cg + lane; c < (g + 1) * geo.Cg; c += 32) {
    const double ga = gamma ? to_f(gamma[c]) : 1.0;
    ab[static_cast<int64_t>(n) * geo.C + c] =
        make_float2(static_cast<float>(rstd * ga), beta ? to_f(beta[c]) : 0.f);
  }
}

template <typename T, int VEC, bool SILU>
__global__ void gn_apply(GnGeo geo, const T* __restrict__ x, const float2* __restrict__ ab,
                         const float* __restrict__ means, T* __restrict__ y) {
  const int chunk = blockIdx.x, n = blockIdx.y, t = threadIdx.x;
  const int64_t l0 = chunk * geo.rpc;
  const int64_t l1 = min(geo.L, l0 + geo.rpc);
  const int64_t base = static_cast<int64_t>(n) * geo.L * geo.C;
  const bool own = geo.cv <= geo.threads;
  if (t >= geo.threads) return;
  const int j0 = own ? t % geo.cv : t;
  const int r0 = own ? t / geo.cv : 0;
  const int rstep = own ? geo.R : 1;
  for (int j = j0; j < geo.cv; j += geo.threads) {
    const float mean = means[static_cast<int64_t>(n) * geo.G + j * VEC / geo.Cg];
    float a[VEC], b[VEC];
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      const float2 v = ab[static_cast<int64_t>(n) * geo.C + j * VEC + k];
      a[k] = v.x;
      b[k] = v.y;
    }
    const int64_t off = base + static_cast<int64_t>(j) * VEC;
    for (int64_t l = l0 + r0; l < l1; l += rstep) {
      float v[VEC];
      load_vec<T, VEC>(x + off + l * geo.C, v);
#pragma unroll
      for (int k = 0; k < VEC; k++) {
        v[k] = (v[k] - mean) * a[k] + b[k];
        if constexpr (SILU) v[k] = silu(v[k]);
      }
      store_vec<T, VEC>(y + off + l * geo.C, v);
    }
    if (own) break;
  }
}

// Generic fallback (C/VEC beyond what one block's shared memory holds): one block per (n, g).
template <typename T>
__global__ void gn_stats_simple(GnGeo geo, const T* __restrict__ x, float2* __restrict__ partial) {
  const int g = blockIdx.x, n = blockIdx.y;
  const T* xn = x + static_cast<int64_t>(n) * geo.L * geo.C + static_cast<int64_t>(g) * geo.Cg;
  const float shift = to_f(xn[0]);
  float s = 0.f, ss = 0.f;
  const int64_t cnt = geo.L * geo.Cg;
  for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x) {
    const int64_t l = e / geo.Cg, c = e - l * geo.Cg;
    const float d = to_f(xn[l * geo.C + c]) - shift;
    s += d;
    ss += d * d;
  }
  __shared__ float2 red[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    s += __shfl_xor_sync(0xffffffffu, s, o);
    ss += __shfl_xor_sync(0xffffffffu, ss, o);
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = make_float2(s, ss);
  __syncthreads();
  if (threadIdx.x == 0) {
    float2 r = make_float2(0.f, 0.f);
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); w++) {
      r.x += red[w].x;
      r.y += red[w].y;
    }
    partial[static_cast<int64_t>(n) * geo.G + g] = r;  // P == 1
  }
}

// Small groups (L*Cg <= kFusedGroupElems: SD U-Net levels 16x16 and 8x8): one block per (n, g)
// takes the statistics and applies the normalisation in one launch instead of three (the group's
// second read comes from L1/L2). The shift, the float64 combine and the formula for the mean,
// a = rstd*gamma and b = beta are those of stats/finalize/apply above; the partial sums are split
// differently (thread by thread over packs), so results may differ from that path in the last
// float bits, and do not depend on the batch size.
constexpr int64_t kFusedGroupElems = 16384;

template <typename T, int VEC, bool SILU>
__global__ void __launch_bounds__(256) gn_fused_small(GnGeo geo, const T* __restrict__ x, const T* __restrict__ gamma,
                                                      const T* __restrict__ beta, float eps, T* __restrict__ y) {
  const int g = blockIdx.x, n = blockIdx.y, t = threadIdx.x;
  const int64_t base = static_cast<int64_t>(n) * geo.L * geo.C + static_cast<int64_t>(g) * geo.Cg;
  const T* xn = x + base;
  T* yn = y + base;
  const int cpg = geo.Cg / VEC;
  const int64_t packs = geo.L * cpg;
  const float shift = to_f(xn[0]);
  float s = 0.f, ss = 0.f;
  for (int64_t p = t; p < packs; p += blockDim.x) {
    const int64_t l = p / cpg;
    const int j = static_cast<int>(p - l * cpg);
    float v[VEC];
    load_vec<T, VEC>(xn + l * geo.C + j * VEC, v);
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      const float d = v[k] - shift;
      s += d;
      ss += d * d;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    s += __shfl_xor_sync(0xffffffffu, s, o);
    ss += __shfl_xor_sync(0xffffffffu, ss, o);
  }
  __shared__ float2 red[8];
  __shared__ double stat[2];  // mean (as float), rstd
  if ((t & 31) == 0) red[t >> 5] = make_float2(s, ss);
  __syncthreads();
  if (t == 0) {
    double S = 0.0, SS = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); w++) {
      S += red[w].x;
      SS += red[w].y;
    }
    const double cnt = static_cast<double>(geo.L) * geo.Cg;
    const double ms = S / cnt;
    double var = SS / cnt - ms * ms;
    if (var < 0.0) var = 0.0;
    stat[0] = static_cast<float>(static_cast<double>(shift) + ms);
    stat[1] = 1.0 / sqrt(var + static_cast<double>(eps));
  }
  __syncthreads();
  const float mean = static_cast<float>(stat[0]);
  const double rstd = stat[1];
  for (int64_t p = t; p < packs; p += blockDim.x) {
    const int64_t l = p / cpg;
    const int j = static_cast<int>(p - l * cpg);
    const int c0 = g * geo.Cg + j * VEC;
    float v[VEC];
    load_vec<T, VEC>(xn + l * geo.C + j * VEC, v);
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      const float a = static_cast<float>(rstd * (gamma ? static_cast<double>(to_f(gamma[c0 + k])) : 1.0));
      const float b = beta ? to_f(beta[c0 + k]) : 0.f;
      v[k] = (v[k] - mean) * a + b;
      if constexpr (SILU) v[k] = silu(v[k]);
    }
    store_vec<T, VEC>(yn + l * geo.C + j * VEC, v);
  }
}

template <typename T, int VEC>
void launch_gn_fused_small(const GnGeo& geo, int64_t N, const T* x, const T* gamma, const T* beta, float eps, bool silu,
                           T* y, cudaStream_t s) {
  const dim3 grid(geo.G, static_cast<unsigned>(N));
  if (silu) gn_fused_small<T, VEC, true><<<grid, 256, 0, s>>>(geo, x, gamma, beta, eps, y);
  else gn_fused_small<T, VEC, false><<<grid, 256, 0, s>>>(geo, x, gamma, beta, eps, y);
}

template <typename T>
void group_norm_t(int device, const T* x, T* y, int64_t N, int64_t L, int64_t C, int64_t G, const T* gamma,
                  const T* beta, float eps, bool silu) {
  if (G <= 0 || C % G != 0) throw_range("group_norm: channels must divide into groups");
  if (N <= 0 || L <= 0 || C <= 0) return;
  if (N > 65535) throw_range("group_norm: batch over 65535 is not supported on CUDA");
  constexpr int V = Pack<T>::N;
  GnGeo geo{};
  geo.L = L;
  geo.C = C;
  geo.G = static_cast<int>(G);
  geo.Cg = static_cast<int>(C / G);
  int vec = 1;
  for (int v = V; v > 1; v /= 2)
    if (geo.Cg % v == 0 && ku::aligned_to(x, v * sizeof(T)) && ku::aligned_to(y, v * sizeof(T))) {
      vec = v;
      break;
    }
  if (L * geo.Cg <= kFusedGroupElems) {
    cudaStream_t s = stream(device);
    switch (vec) {
      case 8: launch_gn_fused_small<T, 8>(geo, N, x, gamma, beta, eps, silu, y, s); break;
      case 4: launch_gn_fused_small<T, 4>(geo, N, x, gamma, beta, eps, silu, y, s); break;
      case 2: launch_gn_fused_small<T, 2>(geo, N, x, gamma, beta, eps, silu, y, s); break;
      default: launch_gn_fused_small<T, 1>(geo, N, x, gamma, beta, eps, silu, y, s); break;
    }
    ku::launch_check("group_norm");
    return;
  }
  const int64_t cv = C / vec;
  const int max_slots = 6144;  // 48 KB of float2 per block
  const bool simple = cv > max_slots;
  geo.cv = static_cast<int>(cv);
  if (cv <= 256) {
    geo.R = static_cast<int>(256 / cv);
    geo.threads = static_cast<int>(cv) * geo.R;
  } else {
    geo.R = 1;
    geo.threads = 256;
  }
  // Chunks: enough blocks to fill the GPU a few times over, each reading at least ~8 KB.
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(T));
  const int64_t min_rows = std::max<int64_t>(geo.R, (8192 + row_bytes - 1) / row_bytes);
  const int64_t target = std::max<int64_t>(1, (16LL * ku::sm_count(device) + N - 1) / N);
  int64_t P = std::min<int64_t>(target, (L + min_rows - 1) / min_rows);
  if (P < 1) P = 1;
  if (P > 65535) P = 65535;
  geo.rpc = (L + P - 1) / P;
  geo.P = static_cast<int>((L + geo.rpc - 1) / geo.rpc);
  if (simple) geo.P = 1;

  const size_t part_bytes = static_cast<size_t>(N) * geo.P * G * sizeof(float2);
  const size_t ab_bytes = static_cast<size_t>(N) * C * sizeof(float2);
  const size_t mean_bytes = static_cast<size_t>(N) * G * sizeof(float);
  const size_t ws_bytes = part_bytes + ab_bytes + mean_bytes;
  char* ws = static_cast<char*>(device_alloc(device, ws_bytes));
  float2* partial = reinterpret_cast<float2*>(ws);
  float2* ab = reinterpret_cast<float2*>(ws + part_bytes);
  float* means = reinterpret_cast<float*>(ws + part_bytes + ab_bytes);
  cudaStream_t s = stream(device);
  try {
    const dim3 grid(geo.P, static_cast<unsigned>(N));
    const int bs = (geo.threads + 31) / 32 * 32;
    const size_t smem = static_cast<size_t>(cv <= 256 ? geo.threads : cv) * sizeof(float2);
    if (simple) {
      gn_stats_simple<T><<<dim3(geo.G, static_cast<unsigned>(N)), 256, 0, s>>>(geo, x, partial);
    } else {
      switch (vec) {
        case 8: gn_stats<T, 8><<<grid, bs, smem, s>>>(geo, x, partial); break;
        case 4: gn_stats<T, 4><<<grid, bs, smem, s>>>(geo, x, partial); break;
        case 2: gn_stats<T, 2><<<grid, bs, smem, s>>>(geo, x, partial); break;
        default: gn_stats<T, 1><<<grid, bs, smem, s>>>(geo, x, partial); break;
      }
    }
    ku::launch_check("group_norm");
    const int warps = static_cast<int>(N * G);
    gn_finalize<T><<<(warps + 7) / 8, 256, 0, s>>>(geo, static_cast<int>(N), x, partial, gamma, beta, eps, ab,
                                                   means);
    ku::launch_check("group_norm");
    if (simple) {  // the apply kernel's tiling with one pack column per thread pass
      geo.P = static_cast<int>(std::min<int64_t>(L, 65535));
      geo.rpc = (L + geo.P - 1) / geo.P;
      geo.P = static_cast<int>((L + geo.rpc - 1) / geo.rpc);
    }
    const dim3 agrid(geo.P, static_cast<unsigned>(N));
#define DK_GN_APPLY(V_)                                                                    \
  case V_:                                                                                 \
    if (silu) gn_apply<T, V_, true><<<agrid, bs, 0, s>>>(geo, x, ab, means, y);          \
    else gn_apply<T, V_, false><<<agrid, bs, 0, s>>>(geo, x, ab, means, y);              \
    break;
    switch (vec) {
      DK_GN_APPLY(8) DK_GN_APPLY(4) DK_GN_APPLY(2)
      default:
        if (silu) gn_apply<T, 1, true><<<agrid, bs, 0, s>>>(geo, x, ab, means, y);
        else gn_apply<T, 1, false><<<agrid, bs, 0, s>>>(geo, x, ab, means, y);
    }
#undef DK_GN_APPLY
    ku::launch_check("group_norm");
  } catch (...) {
    device_free(device, ws, ws_bytes);
    throw;
  }
  device_free(device, ws, ws_bytes);  // stream-ordered reuse (one stream per device)
}

// ---------------------------------------------------------------- row reductions
// TPR threads cooperate on one row: a warp (32) or the whole block (256).
template <int TPR> __device__ __forceinline__ float row_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if constexpr (TPR > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // red[] free from the previous use
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = 0.f;
#pragma unroll
    for (int w = 0; w < TPR / 32; w++) v += red[w];
  }
  return v;
}

// Combines online-softmax states (max m, sum s of exp(x - m)).
__device__ __forceinline__ void sm_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

template <int TPR> __device__ __forceinline__ void row_softmax_state(float& m, float& s, float2* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    sm_merge(m, s, m2, s2);
  }
  if constexpr (TPR > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = make_float2(m, s);
    __syncthreads();
    m = -INFINITY;
    s = 0.f;
#pragma unroll
    for (int w = 0; w < TPR / 32; w++) sm_merge(m, s, red[w].x, red[w].y);
  }
}

// x [rows, C]: mean, then variance of (x - mean), then y; re-reads of the row hit L1.
template <typename T, int VEC, int TPR>
__global__ void __launch_bounds__(256) layer_norm_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                                                         int64_t C, const T* __restrict__ gamma,
                                                         const T* __restrict__ beta, float eps) {
  __shared__ float red[8];
  constexpr int RPB = 256 / TPR;
  const int lane = threadIdx.x % TPR;
  const int64_t cv = C / VEC;
  for (int64_t rb = static_cast<int64_t>(blockIdx.x) * RPB; rb < rows; rb += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t row = rb + threadIdx.x / TPR;
    const bool active = row < rows;  // TPR == 256 has one row per block, so whole blocks agree
    const T* xr = x + (active ? row : 0) * C;
    float s = 0.f;
    if (active)
      for (int64_t j = lane; j < cv; j += TPR) {
        float v[VEC];
        load_vec<T, VEC>(xr + j * VEC, v);
#pragma unroll
        for (int k = 0; k < VEC; k++) s += v[k];
      }
    const float mean = row_sum<TPR>(s, red) / static_cast<float>(C);
    float ss = 0.f;
    if (active)
      for (int64_t j = lane; j < cv; j += TPR) {
        float v[VEC];
        load_vec<T, VEC>(xr + j * VEC, v);
#pragma unroll
        for (int k = 0; k < VEC; k++) ss += (v[k] - mean) * (v[k] - mean);
      }
    const float rstd = rsqrtf(row_sum<TPR>(ss, red) / static_cast<float>(C) + eps);
    if (!active) continue;
    T* yr = y + row * C;
    for (int64_t j = lane; j < cv; j += TPR) {
      float v[VEC];
      load_vec<T, VEC>(xr + j * VEC, v);
      float g[VEC], b[VEC];
      if (gamma) load_vec<T, VEC>(gamma + j * VEC, g);
      else
#pragma unroll
        for (int k = 0; k < VEC; k++) g[k] = 1.f;
      if (beta) load_vec<T, VEC>(beta + j * VEC, b);
      else
#pragma unroll
        for (int k = 0; k < VEC; k++) b[k] = 0.f;
#pragma unroll
      for (int k = 0; k < VEC; k++) v[k] = (v[k] - mean) * rstd * g[k] + b[k];
      store_vec<T, VEC>(yr + j * VEC, v);
    }
  }
}

template <typename T, int VEC, int TPR>
__global__ void __launch_bounds__(256) softmax_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                                                      int64_t C) {
  __shared__ float2 red[8];
  constexpr int RPB = 256 / TPR;
  const int lane = threadIdx.x % TPR;
  const int64_t cv = C / VEC;
  for (int64_t rb = static_cast<int64_t>(blockIdx.x) * RPB; rb < rows; rb += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t row = rb + threadIdx.x / TPR;
    const bool active = row < rows;
    const T* xr = x + (active ? row : 0) * C;
    float m = -INFINITY, s = 0.f;
    if (active)
      for (int64_t j = lane; j < cv; j += TPR) {
        float v[VEC];
        load_vec<T, VEC>(xr + j * VEC, v);
        float vm = v[0];
#pragma unroll
        for (int k = 1; k < VEC; k++) vm = fmaxf(vm, v[k]);
        const float mn = fmaxf(m, vm);
        if (mn == -INFINITY) continue;
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < VEC; k++) acc += expf(v[k] - mn);
        s = s * expf(m - mn) + acc;
        m = mn;
      }
    row_softmax_state<TPR>(m, s, red);
    if (!active) continue;
    const float inv = 1.0f / s;
    T* yr = y + row * C;
    for (int64_t j = lane; j < cv; j += TPR) {
      float v[VEC];
      load_vec<T, VEC>(xr + j * VEC, v);
#pragma unroll
      for (int k = 0; k < VEC; k++) v[k] = expf(v[k] - m) * inv;
      store_vec<T, VEC>(yr + j * VEC, v);
    }
  }
}

}  // namespace nrm

// ================================================================ entry points
void group_norm(int device, DType dt, const void* x, void* y, int64_t N, int64_t L, int64_t C, int64_t G,
                const void* gamma, const void* beta, float eps, bool silu) {
  DK_DISPATCH_FLOAT(dt, "group_norm", {
    nrm::group_norm_t<T>(device, static_cast<const T*>(x), static_cast<T*>(y), N, L, C, G,
                         static_cast<const T*>(gamma), static_cast<const T*>(beta), eps, silu);
  });
}

void layer_norm(int device, DType dt, const void* x, void* y, int64_t rows, int64_t C, const void* gamma,
                const void* beta, float eps) {
  if (rows <= 0 || C <= 0) return;
  DK_DISPATCH_FLOAT(dt, "layer_norm", {
    const T* px = static_cast<const T*>(x);
    T* py = static_cast<T*>(y);
    const T* pg = static_cast<const T*>(gamma);
    const T* pb = static_cast<const T*>(beta);
    const bool aligned = ku::aligned16(px) && ku::aligned16(py) && (!pg || ku::aligned16(pg)) &&
                         (!pb || ku::aligned16(pb));
    constexpr int V = ku::Pack<T>::N;
    const bool vec = aligned && C % V == 0;
    const int64_t cv = vec ? C / V : C;
    const bool wide = cv > 256;
    unsigned g = ku::grid_for(rows, wide ? 1 : 8, device);
    cudaStream_t s = stream(device);
    if (vec) {
      if (wide) nrm::layer_norm_kernel<T, V, 256><<<g, 256, 0, s>>>(px, py, rows, C, pg, pb, eps);
      else nrm::layer_norm_kernel<T, V, 32><<<g, 256, 0, s>>>(px, py, rows, C, pg, pb, eps);
    } else {
      if (wide) nrm::layer_norm_kernel<T, 1, 256><<<g, 256, 0, s>>>(px, py, rows, C, pg, pb, eps);
      else nrm::layer_norm_kernel<T, 1, 32><<<g, 256, 0, s>>>(px, py, rows, C, pg, pb, eps);
    }
    ku::launch_check("layer_norm");
  });
}

void softmax_lastdim(int device, DType dt, const void* x, void* y, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  DK_DISPATCH_FLOAT(dt, "softmax_lastdim", {
    const T* px = static_cast<const T*>(x);
    T* py = static_cast<T*>(y);
    constexpr int V = ku::Pack<T>::N;
    const bool vec = ku::aligned16(px) && ku::aligned16(py) && C % V == 0;
    const int64_t cv = vec ? C / V : C;
    const bool wide = cv > 256;
    unsigned g = ku::grid_for(rows, wide ? 1 : 8, device);
    cudaStream_t s = stream(device);
    if (vec) {
      if (wide) nrm::softmax_kernel<T, V, 256><<<g, 256, 0, s>>>(px, py, rows, C);
      else nrm::softmax_kernel<T, V, 32><<<g, 256, 0, s>>>(px, py, rows, C);
    } else {
      if (wide) nrm::softmax_kernel<T, 1, 256><<<g, 256, 0, s>>>(px, py, rows, C);
      else nrm::softmax_kernel<T, 1, 32><<<g, 256, 0, s>>>(px, py, rows, C);
    }
    ku::launch_check("softmax_lastdim");
  });
}

}  // namespace dk::cuda
