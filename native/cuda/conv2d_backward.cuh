// Device code of conv2d_backward.cu (see there for the algorithms). Kept free of CUDA headers
// so that native/cuda/lab/grad_emu_check.cc can run these exact kernels on the host under a
// small thread emulator (no GPU needed for index-math checks).
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "../core/error.h"
#include "../cpu/kernels.h"

namespace dk::cuda::cbw {

__device__ __forceinline__ int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr int BM = 64, BN = 64, BK = 16, kThreads = 256;

// acc[i][j] += sum_kk As[kk][ty+16i] * Bs[kk][tx+16j]
__device__ __forceinline__ void tile_fma(const float (&As)[BK][BM + 4], const float (&Bs)[BK][BN + 4],
                                         float (&acc)[4][4], int tx, int ty) {
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    float a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

struct Geom {
  int N, H, W, C, K, R, S, P, Q;
  int sh, sw, ph, pw, dh, dw;
};

// dx [N*H*W, C]: grid (pixel tiles, channel tiles).
__global__ void __launch_bounds__(kThreads) dx_kernel(const Geom g, const float* __restrict__ dy,
                                                      const float* __restrict__ w, float* __restrict__ dx) {
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t M = int64_t(g.N) * g.H * g.W;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  const int T = g.R * g.S * g.K;

  // This thread's A rows (pixels): image base into dy and h + ph, w + pw.
  int64_t dy_img[4];
  int hp[4], wp[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m < M) {
      const int64_t nh = m / g.W;
      const int wq = static_cast<int>(m - nh * g.W);
      const int n = static_cast<int>(nh / g.H), h = static_cast<int>(nh - int64_t(n) * g.H);
      dy_img[i] = int64_t(n) * g.P * g.Q * g.K;
      hp[i] = h + g.ph;
      wp[i] = wq + g.pw;
    } else {
      dy_img[i] = 0;
      hp[i] = INT_MIN / 2;  // never valid
      wp[i] = INT_MIN / 2;
    }
  }
  // This thread's B column (channel) is fixed: c = n0 + (tid & 63); its slice rows kk = (tid >> 6) + 4i.
  const int bc = n0 + (tid & 63), bk0 = tid >> 6;

  float acc[4][4] = {};
  for (int t0 = 0; t0 < T; t0 += BK) {
    {  // A: dy gathered; column t = t0 + tx = (r*S + s)*K + k
      const int t = t0 + tx;
      int k = 0, r = 0, s = 0;
      const bool tv = t < T;
      if (tv) {
        const int rs = t / g.K;
        k = t - rs * g.K;
        r = rs / g.S;
        s = rs - r * g.S;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float v = 0.f;
        const int ah = hp[i] - r * g.dh, aw = wp[i] - s * g.dw;
        if (tv && ah >= 0 && aw >= 0) {
          const int p = ah / g.sh, q = aw / g.sw;
          if (p * g.sh == ah && q * g.sw == aw && p < g.P && q < g.Q)
            v = dy[dy_img[i] + (int64_t(p) * g.Q + q) * g.K + k];
        }
        As[tx][ty + 16 * i] = v;
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // B: w[k, r, s, c] for t = (r*S + s)*K + k
      const int kk = bk0 + 4 * i, t = t0 + kk;
      float v = 0.f;
      if (t < T && bc < g.C) {
        const int rs = t / g.K, k = t - rs * g.K;
        v = w[(int64_t(k) * g.R * g.S + rs) * g.C + bc];
      }
      Bs[kk][tid & 63] = v;
    }
    __syncthreads();
    tile_fma(As, Bs, acc, tx, ty);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = n0 + tx + 16 * j;
      if (c < g.C) dx[m * g.C + c] = acc[i][j];
    }
  }
}

// dw [K, RSC] (or split z's partial of it): grid (RSC tiles, K tiles, splits); split z sums the
// pixels [z*per, min(M, (z+1)*per)).
__global__ void __launch_bounds__(kThreads) dw_kernel(const Geom g, const float* __restrict__ dy,
                                                      const float* __restrict__ x, float* __restrict__ out,
                                                      int64_t per, int64_t split_stride) {
  __shared__ float As[BK][BM + 4];  // [m][k]
  __shared__ float Bs[BK][BN + 4];  // [m][j]
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int RSC = g.R * g.S * g.C;
  const int64_t M = int64_t(g.N) * g.P * g.Q;
  const int n0 = blockIdx.x * BN, k0 = blockIdx.y * BM;
  const int64_t mb = int64_t(blockIdx.z) * per, me = lmin(M, mb + per);
  float* o = out + int64_t(blockIdx.z) * split_stride;

  const int lane64 = tid & 63, kk0 = tid >> 6;
  // This thread's B column j = (r*S + s)*C + c is fixed.
  const int j = n0 + lane64;
  const bool jv = j < RSC;
  int jc = 0, jr = 0, js = 0;
  if (jv) {
    const int rs = j / g.C;
    jc = j - rs * g.C;
    jr = (rs / g.S) * g.dh;
    js = (rs % g.S) * g.dw;
  }
  const int ak = k0 + lane64;  // this thread's A column (output channel k)
  const int PQ = g.P * g.Q;

  float acc[4][4] = {};
  for (int64_t mt = mb; mt < me; mt += BK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int kk = kk0 + 4 * i;
      const int64_t m = mt + kk;
      float a = 0.f, b = 0.f;
      if (m < me) {
        if (ak < g.K) a = dy[m * g.K + ak];
        if (jv) {
          const int n = static_cast<int>(m / PQ), pq = static_cast<int>(m - int64_t(n) * PQ);
          const int p = pq / g.Q, q = pq - p * g.Q;
          const int h = p * g.sh - g.ph + jr, ww = q * g.sw - g.pw + js;
          if (static_cast<unsigned>(h) < static_cast<unsigned>(g.H) && static_cast<unsigned>(ww) < static_cast<unsigned>(g.W))
            b = x[((int64_t(n) * g.H + h) * g.W + ww) * g.C + jc];
        }
      }
      As[kk][lane64] = a;
      Bs[kk][lane64] = b;
    }
    __syncthreads();
    tile_fma(As, Bs, acc, tx, ty);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int k = k0 + ty + 16 * i;
    if (k >= g.K) continue;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int c = n0 + tx + 16 * jj;
      if (c < RSC) o[int64_t(k) * RSC + c] = acc[i][jj];
    }
  }
}

// out[e] = sum over z < splits of part[z*n + e], in order.
__global__ void sum_splits_kernel(const float* __restrict__ part, int splits, int64_t n, float* __restrict__ out) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    float s = part[e];
    for (int z = 1; z < splits; ++z) s += part[int64_t(z) * n + e];
    out[e] = s;
  }
}

// Column sums, stage 1: grid (column tiles of 32, row chunks); block (32, 8). Chunk z covers rows
// [z*per, (z+1)*per); each of the 8 row lanes strides by 8, then the lanes are added in order.
__global__ void colsum_partial_kernel(const float* __restrict__ x, int64_t rows, int64_t C, int64_t per,
                                      double* __restrict__ part) {
  __shared__ double red[8][33];
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * per, r1 = lmin(rows, r0 + per);
  double s = 0.0;
  if (c < C)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += x[r * C + c];
  red[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double t = red[0][threadIdx.x];
    for (int y = 1; y < 8; ++y) t += red[y][threadIdx.x];
    part[int64_t(blockIdx.y) * C + c] = t;
  }
}

__global__ void colsum_final_kernel(const double* __restrict__ part, int chunks, int64_t C, float* __restrict__ out) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int z = 0; z < chunks; ++z) s += part[int64_t(z) * C + c];
    out[c] = static_cast<float>(s);
  }
}

// ---------------------------------------------------------------- host-side planning

inline Geom geom_of(const cpu::Conv2dParams& p, const char* op) {
  // Pixel and reduction indices are int (element offsets are int64 in the kernels).
  const int64_t lim = INT_MAX / 2;
  if (p.N * p.H * p.W > (int64_t(1) << 40) || p.N * p.P * p.Q > (int64_t(1) << 40) || p.H > lim || p.W > lim ||
      p.C > lim || p.K > lim || p.P > lim || p.Q > lim || p.R * p.S * p.K > lim || p.R * p.S * p.C > lim ||
      p.P * p.Q > lim || p.H + p.pad_h > lim || p.W + p.pad_w > lim || (p.R - 1) * p.dil_h > lim ||
      (p.S - 1) * p.dil_w > lim || p.stride_h > lim || p.stride_w > lim)
    throw_range(std::string(op) + ": problem too large for the CUDA kernel");
  if (p.R < 1 || p.S < 1 || p.stride_h < 1 || p.stride_w < 1 || p.dil_h < 1 || p.dil_w < 1 || p.pad_h < 0 ||
      p.pad_w < 0)
    throw_range(std::string(op) + ": invalid geometry");
  Geom g;
  g.N = static_cast<int>(p.N);
  g.H = static_cast<int>(p.H);
  g.W = static_cast<int>(p.W);
  g.C = static_cast<int>(p.C);
  g.K = static_cast<int>(p.K);
  g.R = static_cast<int>(p.R);
  g.S = static_cast<int>(p.S);
  g.P = static_cast<int>(p.P);
  g.Q = static_cast<int>(p.Q);
  g.sh = static_cast<int>(p.stride_h);
  g.sw = static_cast<int>(p.stride_w);
  g.ph = static_cast<int>(p.pad_h);
  g.pw = static_cast<int>(p.pad_w);
  g.dh = static_cast<int>(p.dil_h);
  g.dw = static_cast<int>(p.dil_w);
  return g;
}

// Splits of dw's pixel range: enough blocks for ~8 per SM, each split at least 512 pixels, the
// partials at most 16M floats (64 MB). `per` (a multiple of BK) is each split's length.
inline int64_t plan_dw_splits(int64_t M, int64_t K, int64_t RSC, int sms, int64_t* per_out) {
  const int64_t tiles = ((RSC + BN - 1) / BN) * ((K + BM - 1) / BM), want_blocks = int64_t(sms) * 8;
  int64_t splits = std::max<int64_t>(1, want_blocks / tiles);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, M / 512));
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, (int64_t(1) << 24) / (K * RSC)));
  splits = std::min<int64_t>(splits, 65535);
  int64_t per = (M + splits - 1) / splits;
  per = (per + BK - 1) / BK * BK;
  *per_out = per;
  return (M + per - 1) / per;
}

// Row chunks of column_sum: about 4 blocks per SM in all, each at least 256 rows.
inline int64_t plan_colsum_chunks(int64_t rows, int64_t C, int sms, int64_t* per_out) {
  const int64_t ctiles = (C + 31) / 32;
  int64_t chunks = std::max<int64_t>(1, int64_t(sms) * 4 / ctiles);
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, rows / 256));
  chunks = std::min<int64_t>(chunks, 65535);
  const int64_t per = (rows + chunks - 1) / chunks;
  *per_out = per;
  return (rows + per - 1) / per;
}

}  // namespace dk::cuda::cbw
