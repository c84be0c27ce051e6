// Attention for training: a forward that also keeps each row's logsumexp, and the flash-style
// backward that recomputes the probabilities from it, one tile of rows at a time (memory
// O(tile x N) per thread, never the whole N x N score matrix).
//
// Per (batch b, head h), with s_ij = scale q_i.k_j + mask_ij, P_ij = exp(s_ij - lse_i):
//   out_i = sum_j P_ij v_j                 lse_i = log sum_j exp(s_ij)
//   dP_ij = dout_i . v_j                   Delta_i = dout_i . out_i  (= sum_j P_ij dP_ij)
//   dS_ij = P_ij (dP_ij - Delta_i)
//   dq_i = scale sum_j dS_ij k_j     dk_j = scale sum_i dS_ij q_i     dv_j = sum_i P_ij dout_i
// Every product is an sgemm on a tile (the packed SIMD kernels; called inside a parallel task,
// sgemm runs on that thread). Work split:
//  * many (b, h) pairs (>= threads): one task per (b, h) walks its query tiles, writes dq and
//    accumulates dk, dv (5 GEMMs per tile);
//  * few pairs (e.g. the VAE's single head): tiles of queries produce dq, then tiles of keys
//    produce dk, dv from the transposed scores (7 GEMMs per tile pair, all tiles in parallel).
//
// Semantics follow attention(): causal query i sees keys j <= i + (Nk - Nq); mask values are
// floored at -FLT_MAX; a row that sees no key outputs 0 and gets lse = +inf (so P = 0).
// The elementwise loops select with comparisons (exp_fast, masks, clamps); GCC only if-converts,
// and so vectorises, them when FP traps are not observable. No code here reads FP exceptions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/thread_pool.h"
#include "backward.h"

namespace dk::cpu {
namespace {

constexpr int64_t kTile = 64;

inline float dotf(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int t = 0; t < 8; ++t) acc[t] += a[i + t] * b[i + t];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Keys query i may see: [0, key_end(i)).
inline int64_t key_end(const AttentionParams& p, int64_t i) {
  if (!p.causal) return p.Nk;
  return std::max<int64_t>(0, std::min<int64_t>(p.Nk, i + (p.Nk - p.Nq) + 1));
}

// A row masked everywhere has all its visible scores at -FLT_MAX (masks are floored there): the
// forward averages V over them, a function of V alone. Its lse = -FLT_MAX + log(n) rounds to
// -FLT_MAX (the marker, no other row gets it), so exp(s - lse) gives 1 where the forward used
// 1/n, and its dS must be 0 (the row does not depend on q or k).
inline float masked_row_prob(const AttentionParams& p, int64_t i) {
  return 1.f / static_cast<float>(key_end(p, i));
}

inline const float* mask_row(const AttentionParams& p, int64_t b, int64_t h, int64_t i) {
  return p.mask ? p.mask + b * p.mask_b + h * p.mask_h + i * p.mask_q : nullptr;
}

// One (b, h) head's operands as strided row blocks.
struct Head {
  const float *q, *k, *v, *o, *dout;
  const float* lse;  // [Nq]
  float *dq, *dk, *dv;
};

Head head_of(const AttentionParams& p, int64_t b, int64_t h, const float* q, const float* k, const float* v,
             const float* o, const float* dout, const float* lse, float* dq, float* dk, float* dv) {
  const int64_t H = p.heads, D = p.D, Dv = p.Dv;
  Head t;
  t.q = q + b * p.q_batch + h * D;
  t.k = k + b * p.k_batch + h * D;
  t.v = v + b * p.v_batch + h * Dv;
  t.o = o ? o + b * p.o_batch + h * Dv : nullptr;
  t.dout = dout ? dout + b * p.o_batch + h * Dv : nullptr;
  t.lse = lse + (b * H + h) * p.Nq;
  t.dq = dq ? dq + b * p.Nq * H * D + h * D : nullptr;
  t.dk = dk ? dk + b * p.Nk * H * D + h * D : nullptr;
  t.dv = dv ? dv + b * p.Nk * H * Dv + h * Dv : nullptr;
  return t;
}

// s [rows, Nk] = scale * q[i0:i0+rows] k^T + mask, -inf where causal hides the key.
void scores_rows(const AttentionParams& p, const Head& t, int64_t b, int64_t h, int64_t i0, int64_t rows, float* s) {
  sgemm(1, false, true, rows, p.Nk, p.D, p.scale, t.q + i0 * p.q_row, p.q_row, 0, t.k, p.k_row, 0, 0.f, s, p.Nk, 0);
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * p.Nk;
    if (const float* m = mask_row(p, b, h, i0 + r))
      for (int64_t j = 0; j < p.Nk; ++j) sr[j] += std::max(m[j], -FLT_MAX);
    for (int64_t j = key_end(p, i0 + r); j < p.Nk; ++j) sr[j] = -INFINITY;
  }
}

// p = exp(s - lse_row) in place over rows of Nk.
void probs_rows(const AttentionParams& p, const Head& t, int64_t i0, int64_t rows, float* s) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * p.Nk;
    const float l = t.lse[i0 + r];  // +inf for a row that sees no key: exp(-inf) = 0
    for (int64_t j = 0; j < p.Nk; ++j) sr[j] = exp_fast(sr[j] - l);
    if (l == -FLT_MAX) {
      const float u = masked_row_prob(p, i0 + r);
      for (int64_t j = 0; j < p.Nk; ++j) sr[j] *= u;
    }
  }
}

// The query-tile step: P and dS for rows [i0, i0+rows), dq for them, and when dkT/dvT are given
// (fused mode) dkT [D, Nk] += scale q^T dS and dvT [Dv, Nk] += dout^T P. The transposed
// accumulators keep the long Nk dimension as the GEMM's N, where sgemm is fastest.
void query_tile(const AttentionParams& p, const Head& t, int64_t b, int64_t h, int64_t i0, int64_t rows, float* dkT,
                float* dvT, bool first, float* P, float* dS) {
  const int64_t Nk = p.Nk, HD = p.heads * p.D;
  scores_rows(p, t, b, h, i0, rows, P);
  probs_rows(p, t, i0, rows, P);
  // dS = dout V^T, then P (dS - Delta)
  sgemm(1, false, true, rows, Nk, p.Dv, 1.f, t.dout + i0 * p.o_row, p.o_row, 0, t.v, p.v_row, 0, 0.f, dS, Nk, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float delta = dotf(t.dout + (i0 + r) * p.o_row, t.o + (i0 + r) * p.o_row, p.Dv);
    float* d = dS + r * Nk;
    const float* pr = P + r * Nk;
    if (t.lse[i0 + r] == -FLT_MAX) {
      std::fill(d, d + Nk, 0.f);
      continue;
    }
    for (int64_t j = 0; j < Nk; ++j) d[j] = pr[j] * (d[j] - delta);
  }
  // dq = scale dS K
  sgemm(1, false, false, rows, p.D, Nk, p.scale, dS, Nk, 0, t.k, p.k_row, 0, 0.f, t.dq + i0 * HD, HD, 0);
  if (!dkT) return;
  const float beta = first ? 0.f : 1.f;
  sgemm(1, true, false, p.Dv, Nk, rows, 1.f, t.dout + i0 * p.o_row, p.o_row, 0, P, Nk, 0, beta, dvT, Nk, 0);
  sgemm(1, true, false, p.D, Nk, rows, p.scale, t.q + i0 * p.q_row, p.q_row, 0, dS, Nk, 0, beta, dkT, Nk, 0);
}

// dst rows [N] of `width` at pitch `ld` = srcT [width, N] transposed.
void untranspose(const float* srcT, int64_t width, int64_t N, float* dst, int64_t ld) {
  for (int64_t j = 0; j < N; ++j)
    for (int64_t d = 0; d < width; ++d) dst[j * ld + d] = srcT[d * N + j];
}

// The key-tile step (two-pass mode): dk, dv for keys [j0, j0+cols) from the transposed scores.
void key_tile(const AttentionParams& p, const Head& t, int64_t b, int64_t h, int64_t j0, int64_t cols,
              const float* delta, float* PT, float* dST) {
  const int64_t Nq = p.Nq, HD = p.heads * p.D, HDv = p.heads * p.Dv;
  // PT [cols, Nq] = exp(scale k q^T + mask^T - lse)
  sgemm(1, false, true, cols, Nq, p.D, p.scale, t.k + j0 * p.k_row, p.k_row, 0, t.q, p.q_row, 0, 0.f, PT, Nq, 0);
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t j = j0 + c;
    float* row = PT + c * Nq;
    if (p.mask)
      for (int64_t i = 0; i < Nq; ++i) row[i] += std::max(mask_row(p, b, h, i)[j], -FLT_MAX);
    // causal: queries before i_begin do not see key j
    const int64_t i_begin = p.causal ? std::min(Nq, std::max<int64_t>(0, j - (p.Nk - Nq))) : 0;
    std::fill(row, row + i_begin, 0.f);
    for (int64_t i = i_begin; i < Nq; ++i) row[i] = exp_fast(row[i] - t.lse[i]);  // lse +inf: 0
    for (int64_t i = i_begin; i < Nq; ++i)
      if (t.lse[i] == -FLT_MAX) row[i] *= masked_row_prob(p, i);
  }
  // dST = (v dout^T - Delta) PT
  sgemm(1, false, true, cols, Nq, p.Dv, 1.f, t.v + j0 * p.v_row, p.v_row, 0, t.dout, p.o_row, 0, 0.f, dST, Nq, 0);
  for (int64_t c = 0; c < cols; ++c) {
    float* d = dST + c * Nq;
    const float* pr = PT + c * Nq;
    for (int64_t i = 0; i < Nq; ++i) d[i] = t.lse[i] == -FLT_MAX ? 0.f : pr[i] * (d[i] - delta[i]);
  }
  sgemm(1, false, false, cols, p.Dv, Nq, 1.f, PT, Nq, 0, t.dout, p.o_row, 0, 0.f, t.dv + j0 * HDv, HDv, 0);
  sgemm(1, false, false, cols, p.D, Nq, p.scale, dST, Nq, 0, t.q, p.q_row, 0, 0.f, t.dk + j0 * HD, HD, 0);
}

}  // namespace

void attention_forward_lse(const AttentionParams& p, const float* q, const float* k, const float* v, float* out,
                           float* lse) {
  if (p.B <= 0 || p.heads <= 0 || p.Nq <= 0) return;
  const int64_t Nk = p.Nk, Dv = p.Dv, tiles = (p.Nq + kTile - 1) / kTile;
  parallel_for(p.B * p.heads * tiles, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> s(static_cast<size_t>(kTile * std::max<int64_t>(Nk, 1)));
    std::vector<float> inv(kTile);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t bh = task / tiles, b = bh / p.heads, h = bh % p.heads;
      const int64_t i0 = (task % tiles) * kTile, rows = std::min(kTile, p.Nq - i0);
      const Head t = head_of(p, b, h, q, k, v, nullptr, nullptr, lse, nullptr, nullptr, nullptr);
      float* o = out + b * p.o_batch + i0 * p.o_row + h * Dv;
      float* l = lse + (b * p.heads + h) * p.Nq + i0;
      if (Nk <= 0) {
        for (int64_t r = 0; r < rows; ++r) { std::fill(o + r * p.o_row, o + r * p.o_row + Dv, 0.f); l[r] = INFINITY; }
        continue;
      }
      scores_rows(p, t, b, h, i0, rows, s.data());
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s.data() + r * Nk;
        float lanes[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        int64_t j = 0;
        for (; j + 8 <= Nk; j += 8)
          for (int u = 0; u < 8; ++u) lanes[u] = sr[j + u] > lanes[u] ? sr[j + u] : lanes[u];
        float m = lanes[0];
        for (int u = 1; u < 8; ++u) m = std::max(m, lanes[u]);
        for (; j < Nk; ++j) m = std::max(m, sr[j]);
        if (m == -INFINITY) {  // sees no key
          std::fill(sr, sr + Nk, 0.f);
          inv[r] = 0.f;
          l[r] = INFINITY;
          continue;
        }
        for (int64_t jj = 0; jj < Nk; ++jj) sr[jj] = exp_fast(sr[jj] - m);
        float sum = 0.f;
        {
          float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          int64_t jj = 0;
          for (; jj + 8 <= Nk; jj += 8)
            for (int u = 0; u < 8; ++u) acc[u] += sr[jj + u];
          sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
          for (; jj < Nk; ++jj) sum += sr[jj];
        }
        inv[r] = 1.f / sum;
        l[r] = m + std::log(sum);
      }
      sgemm(1, false, false, rows, Dv, Nk, 1.f, s.data(), Nk, 0, t.v, p.v_row, 0, 0.f, o, p.o_row, 0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < Dv; ++d) o[r * p.o_row + d] *= inv[r];
    }
  });
}

void attention_backward(const AttentionParams& p, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  if (p.B <= 0 || p.heads <= 0) return;
  const int64_t Nq = p.Nq, Nk = p.Nk, BH = p.B * p.heads;
  if (Nq <= 0 || Nk <= 0) {
    if (Nq > 0) std::memset(dq, 0, sizeof(float) * p.B * Nq * p.heads * p.D);
    if (Nk > 0) {
      std::memset(dk, 0, sizeof(float) * p.B * Nk * p.heads * p.D);
      std::memset(dv, 0, sizeof(float) * p.B * Nk * p.heads * p.Dv);
    }
    return;
  }
  const int64_t qtiles = (Nq + kTile - 1) / kTile;
  auto head = [&](int64_t bh) { return head_of(p, bh / p.heads, bh % p.heads, q, k, v, out, dout, lse, dq, dk, dv); };

  if (BH >= num_threads()) {  // one task per head: dq, dk and dv in one pass
    parallel_for(BH, 1, [&](int64_t lo, int64_t hi) {
      std::vector<float> P(static_cast<size_t>(kTile * Nk)), dS(static_cast<size_t>(kTile * Nk));
      std::vector<float> dkT(static_cast<size_t>(p.D * Nk)), dvT(static_cast<size_t>(p.Dv * Nk));
      for (int64_t bh = lo; bh < hi; ++bh) {
        const Head t = head(bh);
        for (int64_t tile = 0; tile < qtiles; ++tile) {
          const int64_t i0 = tile * kTile;
          query_tile(p, t, bh / p.heads, bh % p.heads, i0, std::min(kTile, Nq - i0), dkT.data(), dvT.data(), tile == 0,
                     P.data(), dS.data());
        }
        untranspose(dkT.data(), p.D, Nk, t.dk, p.heads * p.D);
        untranspose(dvT.data(), p.Dv, Nk, t.dv, p.heads * p.Dv);
      }
    });
    return;
  }
  // few heads: every query tile and every key tile in parallel
  parallel_for(BH * qtiles, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> P(static_cast<size_t>(kTile * Nk)), dS(static_cast<size_t>(kTile * Nk));
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t bh = task / qtiles, i0 = (task % qtiles) * kTile;
      query_tile(p, head(bh), bh / p.heads, bh % p.heads, i0, std::min(kTile, Nq - i0), nullptr, nullptr, false, P.data(),
                 dS.data());
    }
  });
  std::vector<float> delta(static_cast<size_t>(BH * Nq));
  parallel_for(BH, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; ++bh) {
      const Head t = head(bh);
      for (int64_t i = 0; i < Nq; ++i) delta[bh * Nq + i] = dotf(t.dout + i * p.o_row, t.o + i * p.o_row, p.Dv);
    }
  });
  const int64_t ktiles = (Nk + kTile - 1) / kTile;
  parallel_for(BH * ktiles, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> PT(static_cast<size_t>(kTile * Nq)), dST(static_cast<size_t>(kTile * Nq));
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t bh = task / ktiles, j0 = (task % ktiles) * kTile;
      key_tile(p, head(bh), bh / p.heads, bh % p.heads, j0, std::min(kTile, Nk - j0), delta.data() + bh * Nq, PT.data(), dST.data());
    }
  });
}

}  // namespace dk::cpu
