// bfloat16 flash-attention rows with AVX512_BF16 (vdpbf16ps: 16 lanes x a pair of bf16 products
// accumulated in float32). Same transposed layout as attention_internal.h (queries in the lanes,
// panels of 32 queries = two zmm), but every operand is packed as bf16 *pairs* along the
// reduction axis, so one 32-bit broadcast feeds a vdpbf16ps:
//   QT [P][D/2][32] pairs (q[c][2d], q[c][2d+1]),   Kp [groups][D/2][RK] pairs (k[j][2d], k[j][2d+1])
//   Vp [keys/2][Dv] pairs (v[2j][i], v[2j+1][i]),    Pb [keys/2][32] pairs (p[2j][c], p[2j+1][c])
// S = QK^T comes out in float32, is scaled by scale*log2(e), masked, and the online softmax
// (running max and sum) is float32 as in the float32 kernel; P is rounded to bf16 for PV, the
// output accumulator OT stays float32 and is rounded once at the end.
#include <immintrin.h>

#include <cstring>

#include "attention_bf16.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dk::cpu::attn {
namespace {

constexpr int MQ = kBf16Panel;
constexpr int RK = 12;  // keys per S tile: 24 accumulators + 2 query vectors + 1 broadcast
constexpr int RV = 12;  // output dims per OT tile

inline __m512bh bh(__m512i x) { return (__m512bh)x; }

inline uint32_t pair(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); }

// 2^x for x <= 0, exactly 0 at x <= -125: f = x - floor(x) in one vreduceps, 2^f on [0, 1) of
// degree 4 (relative error 2.7e-6, Lawson fit), and vscalefps applies 2^floor(x) itself.
// P is rounded to bf16 (2^-9) anyway and 2.7e-6 in the running sum is far below the output's
// rounding; against the float32 kernel's exp2 that is 4 floating-point operations fewer.
inline __m512 exp2v(__m512 x) {
  const __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(0.013534121215343475f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.052011482417583466f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24144279956817627f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6930038332939148f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000026226043701f));
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.f), _CMP_GT_OQ);
  return _mm512_maskz_scalef_ps(live, p, x);
}

struct Layout {
  int64_t P, D2, nkb, qt, ot, m, l, kp, vp, s, pb, total;
  Layout(const Shape& s_, int64_t rows) {
    P = ceil_div(rows, MQ);
    D2 = (s_.D + 1) / 2;
    nkb = ceil_div(imin(kKeyBlock, s_.Nk), RK) * RK;  // a multiple of RK, so even
    qt = 0;
    ot = qt + align16(P * D2 * MQ);
    m = ot + align16(P * s_.Dv * MQ);
    l = m + align16(P * MQ);
    kp = l + align16(P * MQ);
    vp = kp + align16(nkb * D2);
    s = vp + align16(nkb / 2 * s_.Dv);
    pb = s + align16(nkb * MQ);
    total = pb + align16(nkb / 2 * MQ) + 16;
  }
};

// S[i][:] = scale * sum_d Kp[d][i] QT[d][:] for the RK keys of one group; mx = max(mx, S) over
// the first `valid` keys when mx is given.
void qk_tile(const uint32_t* __restrict kp, const uint32_t* __restrict qt, int64_t D2, __m512 scale,
             float* __restrict s, __m512* mx, int valid) {
  __m512 acc[RK][2];
#pragma GCC unroll 12
  for (int i = 0; i < RK; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D2; ++d) {
    const __m512bh q0 = bh(_mm512_loadu_si512(qt + d * MQ)), q1 = bh(_mm512_loadu_si512(qt + d * MQ + 16));
#pragma GCC unroll 12
    for (int i = 0; i < RK; ++i) {
      const __m512bh kb = bh(_mm512_set1_epi32(static_cast<int>(kp[d * RK + i])));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], kb, q0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], kb, q1);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < RK; ++i) {
    acc[i][0] = _mm512_mul_ps(acc[i][0], scale);
    acc[i][1] = _mm512_mul_ps(acc[i][1], scale);
    _mm512_storeu_ps(s + i * MQ, acc[i][0]);
    _mm512_storeu_ps(s + i * MQ + 16, acc[i][1]);
  }
  if (!mx) return;
  // Max over the tile as a tree in registers, then one update of mx: folding each key into mx in
  // turn made a store-to-load chain through memory (a fifth of the kernel's time). Padding keys
  // (i >= valid, S = 0 from zero-packed K) are -inf here.
  const __m512 ninf = _mm512_set1_ps(kNegInf);
#pragma GCC unroll 12
  for (int i = 0; i < RK; ++i) {
    const __mmask16 k = i < valid ? 0xFFFF : 0;
    acc[i][0] = _mm512_mask_mov_ps(ninf, k, acc[i][0]);
    acc[i][1] = _mm512_mask_mov_ps(ninf, k, acc[i][1]);
  }
#pragma GCC unroll 4
  for (int w = 1; w < RK; w *= 2)
#pragma GCC unroll 12
    for (int i = 0; i + w < RK; i += 2 * w) {
      acc[i][0] = _mm512_max_ps(acc[i][0], acc[i + w][0]);
      acc[i][1] = _mm512_max_ps(acc[i][1], acc[i + w][1]);
    }
  mx[0] = _mm512_max_ps(mx[0], acc[0][0]);
  mx[1] = _mm512_max_ps(mx[1], acc[0][1]);
}

// OT[i][:] = alpha * OT[i][:] + sum_j V[j][i] P[j][:] for R output dims, over nk2 key pairs.
template <int R>
void pv_tile(const uint32_t* __restrict vp, int64_t ldv, const uint32_t* __restrict pb, int64_t nk2,
             float* __restrict ot, const __m512* alpha) {
  __m512 acc[R][2];
#pragma GCC unroll 12
  for (int i = 0; i < R; ++i) {
    acc[i][0] = _mm512_mul_ps(alpha[0], _mm512_loadu_ps(ot + i * MQ));
    acc[i][1] = _mm512_mul_ps(alpha[1], _mm512_loadu_ps(ot + i * MQ + 16));
  }
  for (int64_t j = 0; j < nk2; ++j) {
    const __m512bh p0 = bh(_mm512_loadu_si512(pb + j * MQ)), p1 = bh(_mm512_loadu_si512(pb + j * MQ + 16));
    const uint32_t* vr = vp + j * ldv;
#pragma GCC unroll 12
    for (int i = 0; i < R; ++i) {
      const __m512bh vb = bh(_mm512_set1_epi32(static_cast<int>(vr[i])));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], vb, p0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], vb, p1);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < R; ++i) {
    _mm512_storeu_ps(ot + i * MQ, acc[i][0]);
    _mm512_storeu_ps(ot + i * MQ + 16, acc[i][1]);
  }
}

using PvFn = void (*)(const uint32_t*, int64_t, const uint32_t*, int64_t, float*, const __m512*);
template <int R>
PvFn pv_for(int r) {
  if constexpr (R == 0) {
    return nullptr;
  } else {
    return r == R ? &pv_tile<R> : pv_for<R - 1>(r);
  }
}

}  // namespace

int64_t bf16_scratch_floats(const Shape& s, int64_t rows) { return Layout(s, rows).total; }

void bf16_rows_avx512(const Shape& s, const HeadBf16& h, int64_t q0, int64_t q1, float* scratch) {
  const int64_t D = s.D, Dv = s.Dv, nrows = q1 - q0;
  const Layout L(s, nrows);
  const int64_t P = L.P, D2 = L.D2;
  uint32_t* qt_all = reinterpret_cast<uint32_t*>(scratch + L.qt);
  float* ot_all = scratch + L.ot;
  float* m_all = scratch + L.m;
  float* l_all = scratch + L.l;
  uint32_t* kp = reinterpret_cast<uint32_t*>(scratch + L.kp);
  uint32_t* vp = reinterpret_cast<uint32_t*>(scratch + L.vp);
  float* sb = scratch + L.s;
  uint32_t* pb = reinterpret_cast<uint32_t*>(scratch + L.pb);
  const __m512 scale = _mm512_set1_ps(s.scale_log2);

  // Pack the queries as pairs along D (zero past D and past the last query); reset the state.
  for (int64_t p = 0; p < P; ++p) {
    uint32_t* qt = qt_all + p * D2 * MQ;
    const int64_t qa = q0 + p * MQ, nv = imin(MQ, q1 - qa);
    for (int64_t c = 0; c < MQ; ++c) {
      if (c >= nv) {
        for (int64_t d = 0; d < D2; ++d) qt[d * MQ + c] = 0;
        continue;
      }
      const uint16_t* qr = reinterpret_cast<const uint16_t*>(h.q + (qa + c) * s.q_row);
      for (int64_t d = 0; d < D / 2; ++d) qt[d * MQ + c] = pair(qr[2 * d], qr[2 * d + 1]);
      if (D & 1) qt[(D2 - 1) * MQ + c] = pair(qr[D - 1], 0);
    }
    for (int64_t i = 0; i < Dv * MQ; ++i) ot_all[p * Dv * MQ + i] = 0.f;
    for (int64_t c = 0; c < MQ; ++c) {
      m_all[p * MQ + c] = kMinusFltMax;
      l_all[p * MQ + c] = 0.f;
    }
  }

  const int64_t off = s.Nk - s.Nq;
  const int64_t kend = s.causal ? imin(s.Nk, q1 - 1 + off + 1) : s.Nk;

  const int64_t ngroups = ceil_div(Dv, RV);
  const int64_t gsize = ngroups ? ceil_div(Dv, ngroups) : 0;
  const int64_t glast = Dv - (ngroups - 1) * gsize;
  PvFn pv_full = ngroups ? pv_for<RV>(static_cast<int>(gsize)) : nullptr;
  PvFn pv_last = ngroups ? pv_for<RV>(static_cast<int>(glast)) : nullptr;
  // Interleaves 16 values of key 2j (low half of a cvtne2ps result) with 16 of key 2j+1.
  alignas(64) uint16_t idx_lanes[32];
  for (int c = 0; c < 16; ++c) {
    idx_lanes[2 * c] = static_cast<uint16_t>(c);
    idx_lanes[2 * c + 1] = static_cast<uint16_t>(16 + c);
  }
  const __m512i interleave = _mm512_load_si512(idx_lanes);

  for (int64_t kb0 = 0; kb0 < kend; kb0 += kKeyBlock) {
    const int64_t nk = imin(kKeyBlock, kend - kb0);
    const int64_t ngk = ceil_div(nk, RK);
    for (int64_t g = 0; g < ngk; ++g) {
      uint32_t* dst = kp + g * D2 * RK;
      for (int i = 0; i < RK; ++i) {
        const int64_t j = g * RK + i;
        if (j < nk) {
          const uint16_t* kr = reinterpret_cast<const uint16_t*>(h.k + (kb0 + j) * s.k_row);
          for (int64_t d = 0; d < D / 2; ++d) dst[d * RK + i] = pair(kr[2 * d], kr[2 * d + 1]);
          if (D & 1) dst[(D2 - 1) * RK + i] = pair(kr[D - 1], 0);
        } else {
          for (int64_t d = 0; d < D2; ++d) dst[d * RK + i] = 0;
        }
      }
    }
    for (int64_t j2 = 0; j2 < ceil_div(nk, 2); ++j2) {
      const uint16_t* v0 = reinterpret_cast<const uint16_t*>(h.v + (kb0 + 2 * j2) * s.v_row);
      uint32_t* dst = vp + j2 * Dv;
      if (2 * j2 + 1 < nk) {
        const uint16_t* v1 = reinterpret_cast<const uint16_t*>(h.v + (kb0 + 2 * j2 + 1) * s.v_row);
        for (int64_t i = 0; i < Dv; ++i) dst[i] = pair(v0[i], v1[i]);
      } else {
        for (int64_t i = 0; i < Dv; ++i) dst[i] = pair(v0[i], 0);
      }
    }
    // The next block's rows: every cache line of each (a head's 80 bytes at D 40 straddle two).
    for (int64_t j = kb0 + nk; j < imin(kend, kb0 + nk + kKeyBlock); ++j) {
      for (int64_t d = 0; d < D; d += 32) __builtin_prefetch(h.k + j * s.k_row + d, 0, 2);
      __builtin_prefetch(h.k + j * s.k_row + D - 1, 0, 2);
      for (int64_t d = 0; d < Dv; d += 32) __builtin_prefetch(h.v + j * s.v_row + d, 0, 2);
      __builtin_prefetch(h.v + j * s.v_row + Dv - 1, 0, 2);
    }

    for (int64_t p = 0; p < P; ++p) {
      const int64_t qa = q0 + p * MQ, nv = imin(MQ, q1 - qa);
      int64_t nkp = nk;
      if (s.causal) {
        nkp = imin(nk, qa + nv - 1 + off + 1 - kb0);
        if (nkp <= 0) continue;
      }
      const uint32_t* qt = qt_all + p * D2 * MQ;
      float* ot = ot_all + p * Dv * MQ;
      float* mp = m_all + p * MQ;
      float* lp = l_all + p * MQ;

      const bool causal_edge = s.causal && kb0 + nkp - 1 > qa + off;
      const bool fuse_max = !h.mask && !causal_edge;
      __m512 mnew[2], mold[2], lsum[2], alpha[2];
      for (int v = 0; v < 2; ++v) mold[v] = mnew[v] = _mm512_loadu_ps(mp + v * 16);
      for (int64_t g = 0; g < ceil_div(nkp, RK); ++g)
        qk_tile(kp + g * D2 * RK, qt, D2, scale, sb + g * RK * MQ, fuse_max ? mnew : nullptr,
                static_cast<int>(imin(RK, nkp - g * RK)));

      if (h.mask) {
        for (int64_t c = 0; c < nv; ++c) {
          const float* mr = h.mask + (qa + c) * s.mask_q + kb0;
          for (int64_t j = 0; j < nkp; ++j) sb[j * MQ + c] += mask_log2(mr[j]);
        }
      }
      if (causal_edge) {
        for (int64_t c = 0; c < nv; ++c) {
          const int64_t first_masked = imax(qa + c + off + 1 - kb0, 0);
          for (int64_t j = first_masked; j < nkp; ++j) sb[j * MQ + c] = kNegInf;
        }
      }
      if (!fuse_max)
        for (int64_t j = 0; j < nkp; ++j)
          for (int v = 0; v < 2; ++v) mnew[v] = _mm512_max_ps(mnew[v], _mm512_loadu_ps(sb + j * MQ + v * 16));

      // P = exp2(S - m) in float32 for the running sum, rounded to bf16 pairs for PV.
      lsum[0] = lsum[1] = _mm512_setzero_ps();
      const int64_t nk2 = ceil_div(nkp, 2);
      for (int64_t j2 = 0; j2 < nk2; ++j2) {
        const bool has1 = 2 * j2 + 1 < nkp;
        for (int v = 0; v < 2; ++v) {
          const __m512 e0 = exp2v(_mm512_sub_ps(_mm512_loadu_ps(sb + 2 * j2 * MQ + v * 16), mnew[v]));
          const __m512 e1 = has1 ? exp2v(_mm512_sub_ps(_mm512_loadu_ps(sb + (2 * j2 + 1) * MQ + v * 16), mnew[v]))
                                 : _mm512_setzero_ps();
          lsum[v] = _mm512_add_ps(lsum[v], _mm512_add_ps(e0, e1));
          const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);
          _mm512_storeu_si512(pb + j2 * MQ + v * 16, _mm512_permutexvar_epi16(interleave, packed));
        }
      }
      for (int v = 0; v < 2; ++v) {
        alpha[v] = exp2v(_mm512_sub_ps(mold[v], mnew[v]));
        _mm512_storeu_ps(lp + v * 16, _mm512_fmadd_ps(_mm512_loadu_ps(lp + v * 16), alpha[v], lsum[v]));
        _mm512_storeu_ps(mp + v * 16, mnew[v]);
      }
      for (int64_t g = 0; g < ngroups; ++g) {
        PvFn fn = g == ngroups - 1 ? pv_last : pv_full;
        fn(vp + g * gsize, Dv, pb, nk2, ot + g * gsize * MQ, alpha);
      }
    }
  }

  // out = OT / l rounded to bf16; rows that saw no key (l == 0) get zeros.
  for (int64_t p = 0; p < P; ++p) {
    const int64_t qa = q0 + p * MQ, nv = imin(MQ, q1 - qa);
    const float* lp = l_all + p * MQ;
    const float* ot = ot_all + p * Dv * MQ;
    // Column c of OT (stride MQ) is query c's output row: 16 dims per gather, one rounding
    // (vcvtneps2bf16, nearest even) and a masked 16-value store.
    const __m512i col = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(MQ));
    for (int64_t c = 0; c < nv; ++c) {
      const __m512 inv = _mm512_set1_ps(lp[c] > 0.f ? 1.f / lp[c] : 0.f);
      bf16* orow = h.o + (qa + c) * s.o_row;
      for (int64_t i = 0; i < Dv; i += 16) {
        const int n = static_cast<int>(imin(16, Dv - i));
        const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
        const __m512 x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, col, ot + i * MQ + c, 4);
        const __m256i r = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(x, inv));
        _mm256_mask_storeu_epi16(orow + i, m, r);
      }
    }
  }
}

}  // namespace dk::cpu::attn
