// Device code of attention_backward.cu (algorithms described there). Kept free of CUDA headers
// so that native/cuda/lab/grad_emu_check.cc can run these exact kernels on the host under a
// small thread emulator (no GPU needed for index-math and edge-case checks).
//
// Every kernel works on 64 x 64 tiles of the score matrix with 256 threads: thread (ty, tx) =
// (tid / 16, tid % 16) holds the 4 x 4 scores at rows ty + 16i, columns tx + 16j. Operands are
// streamed through shared memory in 16-deep slices; accumulators of width 16*JD (a template
// bound; a block handles one chunk of that many output columns, blockIdx picks the chunk) stay
// in registers at rows ty + 16i, columns tx + 16jd.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>

#include "../core/error.h"
#include "../cpu/kernels.h"

namespace dk::cuda::abw {

constexpr int kT = 64, kSlice = 16, kThreads = 256, kPad = 4;

struct Args {
  const float *q, *k, *v, *o, *dout, *lse, *delta;
  float *out, *lse_out, *dq, *dk, *dv;
  int Nq, Nk, H, D, Dv;
  int off;  // causal: query i sees key j <= i + off (off = Nk - Nq)
  bool causal;
  float scale;
  int64_t q_batch, q_row, k_batch, k_row, v_batch, v_row, o_batch, o_row;
  const float* mask;
  int64_t mask_b, mask_h, mask_q;
  int qtiles, ktiles, chunks;  // tiles of the grid's walking dimension, column chunks
};

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// The mask as the CPU kernels add it: floored at -FLT_MAX (NaN stays NaN).
__device__ __forceinline__ float mask_floor(float m) { return m < -FLT_MAX ? -FLT_MAX : m; }

// Whether query i sees key j (both in range).
__device__ __forceinline__ bool sees(const Args& a, int i, int j) {
  return i < a.Nq && j < a.Nk && (!a.causal || j <= i + a.off);
}

// A row masked everywhere has every visible score at -FLT_MAX (masks are floored there), so the
// forward averages V, a function of V alone; its lse = -FLT_MAX + log(n) rounds back to -FLT_MAX
// (the marker) and exp(s - lse) is 1: the probabilities are 1/n (n = the keys the row sees) and
// dS is 0. The CPU backward does the same.
__device__ __forceinline__ float prob_scale(const Args& a, int i, float lse) {
  if (lse != -FLT_MAX) return 1.f;
  const int n = a.causal ? imax(0, imin(a.Nk, i + a.off + 1)) : a.Nk;
  return n > 0 ? 1.f / static_cast<float>(n) : 0.f;
}

// acc[i][j] = sum over d < depth of A[r_i, d] * B[c_j, d] for rows r_i = ty + 16i of A (na
// valid rows at pitch lda) and c_j = tx + 16j of B (nb valid rows at pitch ldb); zero padded.
// Ends with a barrier, so the slices may be reused at once.
__device__ __forceinline__ void dot_tile(const float* __restrict__ A, int64_t lda, int na,
                                         const float* __restrict__ B, int64_t ldb, int nb, int depth,
                                         float (&As)[kSlice][kT + kPad], float (&Bs)[kSlice][kT + kPad],
                                         float (&acc)[4][4]) {
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int d0 = 0; d0 < depth; d0 += kSlice) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int e = tid + kThreads * u, r = e >> 4, dd = e & 15, d = d0 + dd;
      As[dd][r] = (r < na && d < depth) ? A[r * lda + d] : 0.f;
      Bs[dd][r] = (r < nb && d < depth) ? B[r * ldb + d] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSlice; ++kk) {
      float x[4], y[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) x[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) y[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
    }
    __syncthreads();
  }
}

// acc[i][jd] += sum over t < 64 of Ps[t][ty + 16i] * X[t, c0 + tx + 16jd] for the rows t < nt of
// X (pitch ldx) and the columns c < cw of this chunk (zero beyond). Ps is [64][64 + pad] in
// shared memory, written before the call (the call starts with a barrier and ends with one).
template <int JD>
__device__ __forceinline__ void accumulate_pv(const float (&Ps)[kT][kT + kPad], const float* __restrict__ X,
                                              int64_t ldx, int nt, int cw, float (&Xs)[kSlice][16 * JD + kPad],
                                              float (&acc)[4][JD]) {
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  __syncthreads();
  for (int t0 = 0; t0 < kT && t0 < nt; t0 += kSlice) {
    for (int e = tid; e < kSlice * 16 * JD; e += kThreads) {
      const int tt = e / (16 * JD), c = e - tt * (16 * JD), t = t0 + tt;
      Xs[tt][c] = (t < nt && c < cw) ? X[t * ldx + c] : 0.f;
    }
    __syncthreads();
#pragma unroll 4
    for (int tt = 0; tt < kSlice; ++tt) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = Ps[t0 + tt][ty + 16 * i];
#pragma unroll
      for (int jd = 0; jd < JD; ++jd) {
        if (jd * 16 >= cw) break;  // uniform over the block
        const float x = Xs[tt][tx + 16 * jd];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][jd] = fmaf(p[i], x, acc[i][jd]);
      }
    }
    __syncthreads();
  }
}

// Reductions over the 16 threads that share a row (consecutive lanes of one warp).
__device__ __forceinline__ float row_max16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}
__device__ __forceinline__ float row_sum16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---------------------------------------------------------------- forward with lse
// Block: 64 queries of one (b, h), one chunk of 16*JD output columns. Online softmax over key
// tiles; out = O / l, lse = m + log l; a row that saw no key gets 0 and lse = +inf.
template <int JD>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const Args a) {
  __shared__ float As[kSlice][kT + kPad];
  __shared__ float Bs[kSlice][kT + kPad];
  __shared__ float Ps[kT][kT + kPad];  // [key][query]
  __shared__ float Xs[kSlice][16 * JD + kPad];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t blk = blockIdx.x;
  const int tile = static_cast<int>(blk % a.qtiles);
  const int64_t rest = blk / a.qtiles;
  const int chunk = static_cast<int>(rest % a.chunks);
  const int bh = static_cast<int>(rest / a.chunks), b = bh / a.H, h = bh % a.H;
  const int i0 = tile * kT, rows = imin(kT, a.Nq - i0);
  const int c0 = chunk * 16 * JD, cw = imin(16 * JD, a.Dv - c0);
  const float* q = a.q + b * a.q_batch + int64_t(i0) * a.q_row + int64_t(h) * a.D;
  const float* kb = a.k + b * a.k_batch + int64_t(h) * a.D;
  const float* vb = a.v + b * a.v_batch + int64_t(h) * a.Dv + c0;
  const float* mrow[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    mrow[i] = a.mask ? a.mask + b * a.mask_b + h * a.mask_h + int64_t(imin(i0 + ty + 16 * i, a.Nq - 1)) * a.mask_q
                     : nullptr;

  float m[4], l[4], acc[4][JD];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) acc[i][jd] = 0.f;
  }
  const int kend = a.causal ? imax(0, imin(a.Nk, i0 + rows - 1 + a.off + 1)) : a.Nk;
  for (int j0 = 0; j0 < kend; j0 += kT) {
    const int cols = imin(kT, a.Nk - j0);
    float s[4][4];
    dot_tile(q, a.q_row, rows, kb + int64_t(j0) * a.k_row, a.k_row, cols, a.D, As, Bs, s);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int gi = i0 + ty + 16 * i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int gj = j0 + tx + 16 * j;
        float x = -INFINITY;
        if (sees(a, gi, gj)) {
          x = s[i][j] * a.scale;
          if (mrow[i]) x += mask_floor(mrow[i][gj]);
        }
        s[i][j] = x;
        mx = x > mx ? x : mx;
      }
      mx = row_max16(mx);
      const float mn = mx > m[i] ? mx : m[i];
      float alpha = 1.f, sum = 0.f;
      if (mn != -INFINITY) {
        alpha = expf(m[i] - mn);  // m = -inf: 0
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          s[i][j] = expf(s[i][j] - mn);
          sum += s[i][j];
        }
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
      }
      sum = row_sum16(sum);
      m[i] = mn;
      l[i] = l[i] * alpha + sum;
#pragma unroll
      for (int jd = 0; jd < JD; ++jd) acc[i][jd] *= alpha;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Ps[tx + 16 * j][ty + 16 * i] = s[i][j];
    accumulate_pv<JD>(Ps, vb + int64_t(j0) * a.v_row, a.v_row, cols, cw, Xs, acc);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i, gi = i0 + r;
    if (r >= rows) continue;
    const bool none = m[i] == -INFINITY;
    const float inv = none ? 0.f : 1.f / l[i];
    float* o = a.out + b * a.o_batch + int64_t(gi) * a.o_row + int64_t(h) * a.Dv + c0;
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) {
      const int c = tx + 16 * jd;
      if (c < cw) o[c] = none ? 0.f : acc[i][jd] * inv;
    }
    if (chunk == 0 && tx == 0) a.lse_out[int64_t(bh) * a.Nq + gi] = none ? INFINITY : m[i] + logf(l[i]);
  }
}

// ---------------------------------------------------------------- Delta = rowsum(dout * out)
// One warp per (b, h, query): delta[(b*H + h)*Nq + i]. The loop is uniform over the block.
__global__ void __launch_bounds__(kThreads) delta_kernel(const Args a, float* __restrict__ delta, int64_t rows) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  for (int64_t r0 = int64_t(blockIdx.x) * kWarps; r0 < rows; r0 += int64_t(gridDim.x) * kWarps) {
    const int64_t r = r0 + wib;
    float s = 0.f;
    if (r < rows) {
      const int64_t bh = r / a.Nq, i = r - bh * a.Nq, b = bh / a.H, h = bh % a.H;
      const int64_t off = b * a.o_batch + i * a.o_row + h * a.Dv;
      for (int d = lane; d < a.Dv; d += 32) s = fmaf(a.dout[off + d], a.o[off + d], s);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (r < rows && lane == 0) delta[r] = s;
  }
}

// ---------------------------------------------------------------- dK, dV
// Block: 64 keys of one (b, h), one chunk of 16*JD columns of dk (of D) and dv (of Dv). Walks the
// query tiles that can see these keys, with the transposed tile S^T [keys, queries]:
//   P^T = exp(scale K Q^T + mask^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - Delta),
//   dV += P^T dO, dK += dS^T Q (times scale at the end).
template <int JD>
__global__ void __launch_bounds__(kThreads) dkv_kernel(const Args a) {
  __shared__ float As[kSlice][kT + kPad];
  __shared__ float Bs[kSlice][kT + kPad];
  __shared__ float Ps[kT][kT + kPad];  // [query][key]
  __shared__ float Xs[kSlice][16 * JD + kPad];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t blk = blockIdx.x;
  const int tile = static_cast<int>(blk % a.ktiles);
  const int64_t rest = blk / a.ktiles;
  const int chunk = static_cast<int>(rest % a.chunks);
  const int bh = static_cast<int>(rest / a.chunks), b = bh / a.H, h = bh % a.H;
  const int j0 = tile * kT, cols = imin(kT, a.Nk - j0);
  const int c0 = chunk * 16 * JD;
  const int cwk = imin(16 * JD, a.D - c0), cwv = imin(16 * JD, a.Dv - c0);  // <= 0: nothing of that one
  const float* kt = a.k + b * a.k_batch + int64_t(j0) * a.k_row + int64_t(h) * a.D;
  const float* vt = a.v + b * a.v_batch + int64_t(j0) * a.v_row + int64_t(h) * a.Dv;
  const float* qb = a.q + b * a.q_batch + int64_t(h) * a.D;
  const float* ob = a.dout + b * a.o_batch + int64_t(h) * a.Dv;
  const float* lse = a.lse + int64_t(bh) * a.Nq;
  const float* delta = a.delta + int64_t(bh) * a.Nq;
  const float* mbase = a.mask ? a.mask + b * a.mask_b + h * a.mask_h : nullptr;

  float dk[4][JD], dv[4][JD];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) dk[i][jd] = dv[i][jd] = 0.f;
  // queries before j0 - off see none of these keys
  const int ibeg = a.causal ? imin(a.Nq, imax(0, j0 - a.off)) : 0;
  for (int i0 = ibeg; i0 < a.Nq; i0 += kT) {
    const int rows = imin(kT, a.Nq - i0);
    float p[4][4], ds[4][4];
    dot_tile(kt, a.k_row, cols, qb + int64_t(i0) * a.q_row, a.q_row, rows, a.D, As, Bs, p);
    dot_tile(vt, a.v_row, cols, ob + int64_t(i0) * a.o_row, a.o_row, rows, a.Dv, As, Bs, ds);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int gi = i0 + tx + 16 * j;
      const bool qv = gi < a.Nq;
      const float l = qv ? lse[gi] : INFINITY, dl = qv ? delta[gi] : 0.f;
      const float ps = qv ? prob_scale(a, gi, l) : 0.f;
      const float* mr = mbase && qv ? mbase + int64_t(gi) * a.mask_q : nullptr;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int gj = j0 + ty + 16 * i;
        float x = 0.f;
        if (sees(a, gi, gj)) {
          float sc = p[i][j] * a.scale;
          if (mr) sc += mask_floor(mr[gj]);
          x = expf(sc - l) * ps;  // lse = +inf (row sees no key): 0
        }
        p[i][j] = x;
        ds[i][j] = l == -FLT_MAX ? 0.f : x * (ds[i][j] - dl);
      }
    }
    if (cwv > 0) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) Ps[tx + 16 * j][ty + 16 * i] = p[i][j];
      accumulate_pv<JD>(Ps, ob + int64_t(i0) * a.o_row + c0, a.o_row, rows, cwv, Xs, dv);
    }
    if (cwk > 0) {
      // (accumulate_pv ended with a barrier: Ps is free)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) Ps[tx + 16 * j][ty + 16 * i] = ds[i][j];
      accumulate_pv<JD>(Ps, qb + int64_t(i0) * a.q_row + c0, a.q_row, rows, cwk, Xs, dk);
    }
  }
  const int64_t HD = int64_t(a.H) * a.D, HDv = int64_t(a.H) * a.Dv;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i;
    if (r >= cols) continue;
    const int64_t key = int64_t(b) * a.Nk + j0 + r;
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) {
      const int c = tx + 16 * jd;
      if (c < cwk) a.dk[key * HD + int64_t(h) * a.D + c0 + c] = dk[i][jd] * a.scale;
      if (c < cwv) a.dv[key * HDv + int64_t(h) * a.Dv + c0 + c] = dv[i][jd];
    }
  }
}

// ---------------------------------------------------------------- dQ
// Block: 64 queries of one (b, h), one chunk of 16*JD columns of dq. Walks the key tiles these
// queries see: P = exp(scale Q K^T + mask - lse), dS = P (dO V^T - Delta), dQ += dS K (times
// scale at the end).
template <int JD>
__global__ void __launch_bounds__(kThreads) dq_kernel(const Args a) {
  __shared__ float As[kSlice][kT + kPad];
  __shared__ float Bs[kSlice][kT + kPad];
  __shared__ float Ps[kT][kT + kPad];  // [key][query]
  __shared__ float Xs[kSlice][16 * JD + kPad];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t blk = blockIdx.x;
  const int tile = static_cast<int>(blk % a.qtiles);
  const int64_t rest = blk / a.qtiles;
  const int chunk = static_cast<int>(rest % a.chunks);
  const int bh = static_cast<int>(rest / a.chunks), b = bh / a.H, h = bh % a.H;
  const int i0 = tile * kT, rows = imin(kT, a.Nq - i0);
  const int c0 = chunk * 16 * JD, cw = imin(16 * JD, a.D - c0);
  const float* qt = a.q + b * a.q_batch + int64_t(i0) * a.q_row + int64_t(h) * a.D;
  const float* ot = a.dout + b * a.o_batch + int64_t(i0) * a.o_row + int64_t(h) * a.Dv;
  const float* kb = a.k + b * a.k_batch + int64_t(h) * a.D;
  const float* vb = a.v + b * a.v_batch + int64_t(h) * a.Dv;
  float l[4], dl[4], ps[4];
  const float* mrow[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int gi = i0 + ty + 16 * i;
    const bool qv = gi < a.Nq;
    l[i] = qv ? a.lse[int64_t(bh) * a.Nq + gi] : INFINITY;
    dl[i] = qv ? a.delta[int64_t(bh) * a.Nq + gi] : 0.f;
    ps[i] = qv ? prob_scale(a, gi, l[i]) : 0.f;
    mrow[i] = a.mask && qv ? a.mask + b * a.mask_b + h * a.mask_h + int64_t(gi) * a.mask_q : nullptr;
  }
  float acc[4][JD];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) acc[i][jd] = 0.f;
  const int kend = a.causal ? imax(0, imin(a.Nk, i0 + rows - 1 + a.off + 1)) : a.Nk;
  for (int j0 = 0; j0 < kend; j0 += kT) {
    const int cols = imin(kT, a.Nk - j0);
    float p[4][4], ds[4][4];
    dot_tile(qt, a.q_row, rows, kb + int64_t(j0) * a.k_row, a.k_row, cols, a.D, As, Bs, p);
    dot_tile(ot, a.o_row, rows, vb + int64_t(j0) * a.v_row, a.v_row, cols, a.Dv, As, Bs, ds);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int gi = i0 + ty + 16 * i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int gj = j0 + tx + 16 * j;
        float x = 0.f;
        if (sees(a, gi, gj)) {
          float sc = p[i][j] * a.scale;
          if (mrow[i]) sc += mask_floor(mrow[i][gj]);
          x = expf(sc - l[i]) * ps[i];
        }
        ds[i][j] = l[i] == -FLT_MAX ? 0.f : x * (ds[i][j] - dl[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Ps[tx + 16 * j][ty + 16 * i] = ds[i][j];
    accumulate_pv<JD>(Ps, kb + int64_t(j0) * a.k_row + c0, a.k_row, cols, cw, Xs, acc);
  }
  const int64_t HD = int64_t(a.H) * a.D;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i;
    if (r >= rows) continue;
    float* dq = a.dq + (int64_t(b) * a.Nq + i0 + r) * HD + int64_t(h) * a.D + c0;
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) {
      const int c = tx + 16 * jd;
      if (c < cw) dq[c] = acc[i][jd] * a.scale;
    }
  }
}

// ---------------------------------------------------------------- host-side planning

// The accumulator width (in 16-column units) for heads of `width` columns.
inline int jd_for(int64_t width) {
  if (width <= 32) return 2;
  if (width <= 64) return 4;
  if (width <= 80) return 5;
  return 10;
}

inline Args make_args(const cpu::AttentionParams& p, const char* op) {
  const int64_t lim = INT_MAX / 4;
  if (p.Nq > lim || p.Nk > lim || p.heads > lim || p.D > lim || p.Dv > lim || p.B * p.heads > lim || p.D < 0 ||
      p.Dv < 0 || p.Nk < 0)
    ::dk::throw_range(std::string(op) + ": problem too large for the CUDA kernel");
  Args a{};
  a.Nq = static_cast<int>(p.Nq);
  a.Nk = static_cast<int>(p.Nk);
  a.H = static_cast<int>(p.heads);
  a.D = static_cast<int>(p.D);
  a.Dv = static_cast<int>(p.Dv);
  a.off = static_cast<int>(p.Nk - p.Nq);
  a.causal = p.causal;
  a.scale = p.scale;
  a.q_batch = p.q_batch;
  a.q_row = p.q_row;
  a.k_batch = p.k_batch;
  a.k_row = p.k_row;
  a.v_batch = p.v_batch;
  a.v_row = p.v_row;
  a.o_batch = p.o_batch;
  a.o_row = p.o_row;
  a.mask = p.mask;
  a.mask_b = p.mask_b;
  a.mask_h = p.mask_h;
  a.mask_q = p.mask_q;
  a.qtiles = static_cast<int>((p.Nq + kT - 1) / kT);
  a.ktiles = static_cast<int>((p.Nk + kT - 1) / kT);
  return a;
}

}  // namespace dk::cuda::abw
