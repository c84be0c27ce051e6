// Attention for training: a forward that also keeps each row's logsumexp, and the flash-style
// backward that recomputes the probabilities from it, one tile at a time (never Nq x Nk).
//
// Per (batch b, head h), with s_ij = scale q_i.k_j + mask_ij, P_ij = exp(s_ij - lse_i):
//   out_i = sum_j P_ij v_j                 lse_i = log sum_j exp(s_ij)
//   dP_ij = dout_i . v_j                   Delta_i = dout_i . out_i  (= sum_j P_ij dP_ij)
//   dS_ij = P_ij (dP_ij - Delta_i)
//   dq_i = scale sum_j dS_ij k_j     dk_j = scale sum_i dS_ij q_i     dv_j = sum_i P_ij dout_i
// Two passes so no two threads write the same row: tiles of queries produce dq, tiles of keys
// produce dk and dv. Each tile transposes the operand it streams over ([D][N]) so every inner
// loop is a contiguous axpy or dot the compiler vectorises.
//
// Semantics follow attention(): causal query i sees keys j <= i + (Nk - Nq); mask values are
// floored at -FLT_MAX; a row that sees no key outputs 0 and gets lse = +inf (so P = 0).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/thread_pool.h"
#include "backward.h"

namespace dk::cpu {
namespace {

constexpr int64_t kTile = 32;

inline float dotf(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int t = 0; t < 8; ++t) acc[t] += a[i + t] * b[i + t];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpyf(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Keys query i may see: [0, key_end(i)).
inline int64_t key_end(const AttentionParams& p, int64_t i) {
  if (!p.causal) return p.Nk;
  return std::max<int64_t>(0, std::min<int64_t>(p.Nk, i + (p.Nk - p.Nq) + 1));
}
// Queries that see key j: [query_begin(j), Nq).
inline int64_t query_begin(const AttentionParams& p, int64_t j) {
  if (!p.causal) return 0;
  return std::max<int64_t>(0, j - (p.Nk - p.Nq));
}

inline const float* mask_row(const AttentionParams& p, int64_t b, int64_t h, int64_t i) {
  return p.mask ? p.mask + b * p.mask_b + h * p.mask_h + i * p.mask_q : nullptr;
}

// dst[d * n + t] = src[t * row + d] for t < n, d < D (one head's rows, transposed).
void transpose_rows(const float* src, int64_t row, int64_t n, int64_t D, float* dst, float scale = 1.f) {
  for (int64_t t = 0; t < n; ++t) {
    const float* s = src + t * row;
    for (int64_t d = 0; d < D; ++d) dst[d * n + t] = s[d] * scale;
  }
}

// srow[j] = scale q.k_j + mask_j for j < jn, keys transposed in kt [D][Nk].
void scores(const AttentionParams& p, const float* qi, const float* kt, const float* mrow, int64_t jn, float* srow) {
  std::fill(srow, srow + jn, 0.f);
  for (int64_t d = 0; d < p.D; ++d) axpyf(qi[d], kt + d * p.Nk, srow, jn);
  if (mrow)
    for (int64_t j = 0; j < jn; ++j) srow[j] = srow[j] * p.scale + std::max(mrow[j], -FLT_MAX);
  else
    for (int64_t j = 0; j < jn; ++j) srow[j] *= p.scale;
}

// Runs fn(b, h, tile, first) over every (b, h, tile of `count` rows); `first` is true when the
// (b, h) differs from the previous call on this thread (so per-head packing can be reused).
template <typename F>
void for_tiles(const AttentionParams& p, int64_t count, F fn) {
  const int64_t tiles = (count + kTile - 1) / kTile, total = p.B * p.heads * tiles;
  parallel_for(total, 1, [&](int64_t lo, int64_t hi) {
    int64_t last = -1;
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t bh = t / tiles, tile = t % tiles;
      fn(bh / p.heads, bh % p.heads, tile, bh != last);
      last = bh;
    }
  });
}

}  // namespace

void attention_forward_lse(const AttentionParams& p, const float* q, const float* k, const float* v, float* out,
                           float* lse) {
  if (p.B <= 0 || p.heads <= 0 || p.Nq <= 0) return;
  const int64_t Nk = p.Nk, D = p.D, Dv = p.Dv;
  for_tiles(p, p.Nq, [&, Nk](int64_t b, int64_t h, int64_t tile, bool first) {
    thread_local std::vector<float> kt, vt, srow;
    if (first) {
      kt.resize(static_cast<size_t>(D * Nk));
      vt.resize(static_cast<size_t>(Dv * Nk));
      srow.resize(static_cast<size_t>(Nk) + 1);
      transpose_rows(k + b * p.k_batch + h * D, p.k_row, Nk, D, kt.data());
      transpose_rows(v + b * p.v_batch + h * Dv, p.v_row, Nk, Dv, vt.data());
    }
    const int64_t i1 = std::min(p.Nq, (tile + 1) * kTile);
    for (int64_t i = tile * kTile; i < i1; ++i) {
      float* o = out + b * p.o_batch + i * p.o_row + h * Dv;
      float* l = lse + (b * p.heads + h) * p.Nq + i;
      const int64_t jn = key_end(p, i);
      if (jn <= 0) {
        std::fill(o, o + Dv, 0.f);
        *l = INFINITY;
        continue;
      }
      scores(p, q + b * p.q_batch + i * p.q_row + h * D, kt.data(), mask_row(p, b, h, i), jn, srow.data());
      float m = srow[0];
      for (int64_t j = 1; j < jn; ++j) m = std::max(m, srow[j]);
      double sum = 0;
      for (int64_t j = 0; j < jn; ++j) {
        srow[j] = std::exp(srow[j] - m);
        sum += srow[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t d = 0; d < Dv; ++d) o[d] = dotf(srow.data(), vt.data() + d * Nk, jn) * inv;
      *l = m + static_cast<float>(std::log(sum));
    }
  });
}

void attention_backward(const AttentionParams& p, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  if (p.B <= 0 || p.heads <= 0) return;
  const int64_t Nq = p.Nq, Nk = p.Nk, D = p.D, Dv = p.Dv, H = p.heads;
  // contiguous outputs [B, N, H*D]
  const int64_t dq_row = H * D, dk_row = H * D, dv_row = H * Dv;

  // ---- pass 1: dq, per tile of queries
  if (Nq > 0) {
    for_tiles(p, Nq, [&](int64_t b, int64_t h, int64_t tile, bool first) {
      thread_local std::vector<float> kt, vt, srow, dprow;
      if (first) {
        kt.resize(static_cast<size_t>(D * Nk));
        vt.resize(static_cast<size_t>(Dv * Nk));
        srow.resize(static_cast<size_t>(Nk) + 1);
        dprow.resize(static_cast<size_t>(Nk) + 1);
        transpose_rows(k + b * p.k_batch + h * D, p.k_row, Nk, D, kt.data());
        transpose_rows(v + b * p.v_batch + h * Dv, p.v_row, Nk, Dv, vt.data());
      }
      const int64_t i1 = std::min(Nq, (tile + 1) * kTile);
      for (int64_t i = tile * kTile; i < i1; ++i) {
        float* g = dq + b * Nq * dq_row + i * dq_row + h * D;
        const int64_t jn = key_end(p, i);
        const float li = lse[(b * H + h) * Nq + i];
        if (jn <= 0 || std::isinf(li)) {
          std::fill(g, g + D, 0.f);
          continue;
        }
        const float* doi = dout + b * p.o_batch + i * p.o_row + h * Dv;
        const float* oi = out + b * p.o_batch + i * p.o_row + h * Dv;
        scores(p, q + b * p.q_batch + i * p.q_row + h * D, kt.data(), mask_row(p, b, h, i), jn, srow.data());
        std::fill(dprow.begin(), dprow.begin() + jn, 0.f);
        for (int64_t d = 0; d < Dv; ++d) axpyf(doi[d], vt.data() + d * Nk, dprow.data(), jn);
        const float delta = dotf(doi, oi, Dv);
        for (int64_t j = 0; j < jn; ++j) srow[j] = std::exp(srow[j] - li) * (dprow[j] - delta);
        for (int64_t d = 0; d < D; ++d) g[d] = p.scale * dotf(srow.data(), kt.data() + d * Nk, jn);
      }
    });
  }

  // ---- pass 2: dk and dv, per tile of keys
  if (Nk > 0) {
    for_tiles(p, Nk, [&](int64_t b, int64_t h, int64_t tile, bool first) {
      thread_local std::vector<float> qt, dot, delta, st, dpt;
      if (first) {
        qt.resize(static_cast<size_t>(D * Nq) + 1);
        dot.resize(static_cast<size_t>(Dv * Nq) + 1);
        delta.resize(static_cast<size_t>(Nq) + 1);
        st.resize(static_cast<size_t>(Nq) + 1);
        dpt.resize(static_cast<size_t>(Nq) + 1);
        transpose_rows(q + b * p.q_batch + h * D, p.q_row, Nq, D, qt.data());
        transpose_rows(dout + b * p.o_batch + h * Dv, p.o_row, Nq, Dv, dot.data());
        for (int64_t i = 0; i < Nq; ++i)
          delta[i] = dotf(dout + b * p.o_batch + i * p.o_row + h * Dv, out + b * p.o_batch + i * p.o_row + h * Dv, Dv);
      }
      const float* lrow = lse + (b * H + h) * Nq;
      const int64_t j1 = std::min(Nk, (tile + 1) * kTile);
      for (int64_t j = tile * kTile; j < j1; ++j) {
        float* gk = dk + b * Nk * dk_row + j * dk_row + h * D;
        float* gv = dv + b * Nk * dv_row + j * dv_row + h * Dv;
        const int64_t i0 = query_begin(p, j), n = Nq - i0;
        if (n <= 0) {
          std::fill(gk, gk + D, 0.f);
          std::fill(gv, gv + Dv, 0.f);
          continue;
        }
        const float* kj = k + b * p.k_batch + j * p.k_row + h * D;
        const float* vj = v + b * p.v_batch + j * p.v_row + h * Dv;
        float* s = st.data() + i0;
        std::fill(s, s + n, 0.f);
        for (int64_t d = 0; d < D; ++d) axpyf(kj[d], qt.data() + d * Nq + i0, s, n);
        for (int64_t i = 0; i < n; ++i) {
          float x = s[i] * p.scale;
          if (p.mask) x += std::max(mask_row(p, b, h, i0 + i)[j], -FLT_MAX);
          s[i] = std::exp(x - lrow[i0 + i]);  // P_ij; 0 where lse is +inf
        }
        for (int64_t d = 0; d < Dv; ++d) gv[d] = dotf(s, dot.data() + d * Nq + i0, n);
        float* dp = dpt.data() + i0;
        std::fill(dp, dp + n, 0.f);
        for (int64_t d = 0; d < Dv; ++d) axpyf(vj[d], dot.data() + d * Nq + i0, dp, n);
        for (int64_t i = 0; i < n; ++i) s[i] *= dp[i] - delta[i0 + i];
        for (int64_t d = 0; d < D; ++d) gk[d] = p.scale * dotf(s, qt.data() + d * Nq + i0, n);
      }
    });
  }
}

}  // namespace dk::cpu
