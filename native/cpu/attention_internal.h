// Shared between attention.cc (threading, dispatch, generic path) and the ISA files
// attention_avx512.cc / attention_avx2.cc. Each of them instantiates FlashRows<> below with its
// own vector type; everything templated lives in an unnamed namespace so that no inline code
// compiled with AVX-512 flags can be picked by the linker for a baseline translation unit.
//
// Layout (queries in the vector lanes, "transposed" flash attention):
//   a panel is MQ = W*NV consecutive queries; per panel we keep
//     QT [D][MQ]   the queries, pre-scaled by scale*log2(e), zero past the last query,
//     OT [Dv][MQ]  the unnormalised output, m [MQ] running max (log2 domain), l [MQ] running sum.
//   a key block of up to kKeyBlock keys is packed once per task and reused by every panel:
//     Kp [groups][D][RK]  (RK keys side by side, zero past the last key), Vp [keys][Dv].
//   S [keys][MQ] = Kp x QT is a register-tiled product (RK keys x NV vectors of queries per tile,
//   K values broadcast from memory), softmax statistics are lane-wise (no horizontal
//   reductions), and OT += Vp^T x P is the same kind of tile (RV output dims x NV vectors).
// Scores live in the log2 domain (q pre-scaled by log2 e) so P = exp2(S - m).
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace dk::cpu::attn {

// One (batch, head): pointers at token 0 of that head. mask is null or points at (b, h, 0, 0).
struct Head {
  const float* q;
  const float* k;
  const float* v;
  float* o;
  const float* mask;
};

struct Shape {
  int64_t Nq, Nk, D, Dv;
  int64_t q_row, k_row, v_row, o_row, mask_q;
  float scale_log2;  // scale * log2(e)
  bool causal;
};

constexpr int64_t kKeyBlock = 128;

// Queries [q0, q1) of one head, written to h.o. scratch holds scratch_floats(s, q1 - q0)
// floats, 64-byte aligned.
using RowsFn = void (*)(const Shape& s, const Head& h, int64_t q0, int64_t q1, float* scratch);
using ScratchFn = int64_t (*)(const Shape& s, int64_t rows);

struct Kernel {
  int mq = 0;  // queries per panel; tasks are multiples of it
  RowsFn rows = nullptr;
  ScratchFn scratch_floats = nullptr;
  const char* name = "";
};

Kernel kernel_generic();
#if defined(DK_X86)
Kernel kernel_avx2();
Kernel kernel_avx512();
#endif
// The kernel for cpu_features().isa (DIFFUSEKIT_ISA caps it).
const Kernel& select_kernel();
// dk::cpu::attention with a given kernel (the lab compares them).
void attention_with(const Kernel& kr, const AttentionParams& p, const float* q, const float* k, const float* v,
                    float* out);

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kMinusFltMax = -3.40282347e+38f;

// 2^f on [-0.5, 0.5]: near-minimax degree 6 (relative error ~2e-9 before rounding).
constexpr float kExp2C0 = 1.0f, kExp2C1 = 0.693147182f, kExp2C2 = 0.240226462f, kExp2C3 = 0.0555032864f,
                kExp2C4 = 0.00961848907f, kExp2C5 = 0.00133999297f, kExp2C6 = 0.000153457921f;

// A mask value in the log2 domain, kept >= -FLT_MAX: a row masked everywhere by the common
// finfo.min convention then averages V as PyTorch does, instead of overflowing to -inf.
inline float mask_log2(float m) {
  float x = m * kLog2e;
  return x < kMinusFltMax ? kMinusFltMax : x;
}

// Brings [p, p + n) toward L2, one touch per cache line.
inline void prefetch_span(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 2);
  if (n > 0) __builtin_prefetch(p + n - 1, 0, 2);
}

inline void prefetch_span_w(float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 1, 3);
  if (n > 0) __builtin_prefetch(p + n - 1, 1, 3);
}
constexpr int64_t kAhead = 12;  // rows of prefetch distance for the query / output streams

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t align16(int64_t n) { return (n + 15) & ~int64_t(15); }

// VT: vector traits with V, W, zero, load, store, set1, bcast, fma, add, sub, mul, max, exp2
// (exp2 exact 0 below -125, input <= 0 expected), and transpose8(src, lds, dst, ldd, sc,
// per_row): dst[i][j] = src[j][i] * (per_row ? sc[i] : sc[0]) for an 8 x 8 block. NV: vectors per panel; RK: keys per S tile;
// RV: output dims per OT tile.
template <class VT, int NV, int RK, int RV>
struct FlashRows {
  using V = typename VT::V;
  static constexpr int W = VT::W;
  static constexpr int MQ = W * NV;

  static int64_t scratch_floats(const Shape& s, int64_t rows) {
    int64_t P = ceil_div(rows, MQ);
    int64_t nkb = ceil_div(imin(kKeyBlock, s.Nk), RK) * RK;
    return align16(P * s.D * MQ) + align16(P * s.Dv * MQ) + 2 * align16(P * MQ) + align16(nkb * s.D) +
           align16(nkb * s.Dv) + align16(nkb * MQ) + 16;
  }

  // S[i][:] = sum_d Kp[d][i] * QT[d][:] for the RK keys of one packed group; when mx is given,
  // mx = max(mx, S[i][:]) over the first `valid` keys (saves a pass when nothing edits S after).
  static void qk_tile(const float* __restrict kp, const float* __restrict qt, int64_t D, float* __restrict s,
                      V* mx, int valid) {
    V acc[RK][NV];
#pragma GCC unroll 16
    for (int i = 0; i < RK; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = VT::zero();
    for (int64_t d = 0; d < D; ++d) {
      V qv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) qv[v] = VT::load(qt + d * MQ + v * W);
#pragma GCC unroll 16
      for (int i = 0; i < RK; ++i) {
        V kb = VT::bcast(kp + d * RK + i);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = VT::fma(kb, qv[v], acc[i][v]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < RK; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) VT::store(s + i * MQ + v * W, acc[i][v]);
    if (mx) {
#pragma GCC unroll 16
      for (int i = 0; i < RK; ++i)
        if (i < valid)
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) mx[v] = VT::max(mx[v], acc[i][v]);
    }
  }

  // OT[i][:] = alpha * OT[i][:] + sum_j Vp[j][i] * P[j][:] for R output dims (vp points at dim 0
  // of the group, ldv = Dv).
  template <int R>
  static void pv_tile(const float* __restrict vp, int64_t ldv, const float* __restrict p, int64_t nk,
                      float* __restrict ot, const V* alpha) {
    V acc[R][NV];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = VT::mul(alpha[v], VT::load(ot + i * MQ + v * W));
    for (int64_t j = 0; j < nk; ++j) {
      V pv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) pv[v] = VT::load(p + j * MQ + v * W);
      const float* vr = vp + j * ldv;
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        V vb = VT::bcast(vr + i);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = VT::fma(vb, pv[v], acc[i][v]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) VT::store(ot + i * MQ + v * W, acc[i][v]);
  }

  using PvFn = void (*)(const float*, int64_t, const float*, int64_t, float*, const V*);
  template <int R>
  static PvFn pv_for(int r) {
    if constexpr (R == 0) {
      return nullptr;
    } else {
      return r == R ? &pv_tile<R> : pv_for<R - 1>(r);
    }
  }

  static void rows(const Shape& s, const Head& h, int64_t q0, int64_t q1, float* scratch) {
    const int64_t D = s.D, Dv = s.Dv, nrows = q1 - q0;
    const int64_t P = ceil_div(nrows, MQ);
    const int64_t nkb = ceil_div(imin(kKeyBlock, s.Nk), RK) * RK;
    float* qt_all = scratch;
    float* ot_all = qt_all + align16(P * D * MQ);
    float* m_all = ot_all + align16(P * Dv * MQ);
    float* l_all = m_all + align16(P * MQ);
    float* kp = l_all + align16(P * MQ);
    float* vp = kp + align16(nkb * D);
    float* sb = vp + align16(nkb * Dv);

    // Pack the queries (pre-scaled) and reset the running state.
    float qscale[8];
    for (float& x : qscale) x = s.scale_log2;
    for (int64_t p = 0; p < P; ++p) {
      float* qt = qt_all + p * D * MQ;
      const int64_t qa = q0 + p * MQ, nv = imin(MQ, q1 - qa);
      // Rows are strided, and with few keys (cross-attention) their misses would dominate.
      for (int64_t c = 0; c < nv; ++c)
        if (qa + c + kAhead < q1) prefetch_span(h.q + (qa + c + kAhead) * s.q_row, D);
      transpose(h.q + qa * s.q_row, s.q_row, qt, MQ, D, nv, qscale, false);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t c = nv; c < MQ; ++c) qt[d * MQ + c] = 0.f;
      for (int64_t i = 0; i < Dv * MQ; ++i) ot_all[p * Dv * MQ + i] = 0.f;
      for (int64_t c = 0; c < MQ; ++c) {
        m_all[p * MQ + c] = kMinusFltMax;
        l_all[p * MQ + c] = 0.f;
      }
    }

    // Query i sees key j when j <= i + off (causal); keys past kend are unseen by every row here.
    const int64_t off = s.Nk - s.Nq;
    const int64_t kend = s.causal ? imin(s.Nk, q1 - 1 + off + 1) : s.Nk;

    // Output-dim groups for the PV tiles: as even as possible, at most RV each.
    const int64_t ngroups = ceil_div(Dv, RV);
    const int64_t gsize = ngroups ? ceil_div(Dv, ngroups) : 0;
    const int64_t glast = Dv - (ngroups - 1) * gsize;
    PvFn pv_full = ngroups ? pv_for<RV>(static_cast<int>(gsize)) : nullptr;
    PvFn pv_last = ngroups ? pv_for<RV>(static_cast<int>(glast)) : nullptr;

    for (int64_t kb0 = 0; kb0 < kend; kb0 += kKeyBlock) {
      const int64_t nk = imin(kKeyBlock, kend - kb0);
      const int64_t ngk = ceil_div(nk, RK);
      // Kp[g][d][i] = k[kb0 + g*RK + i][d]; Vp[j][:] = v[kb0 + j][:].
      for (int64_t g = 0; g < ngk; ++g) {
        float* dst = kp + g * D * RK;
        for (int i = 0; i < RK; ++i) {
          const int64_t j = g * RK + i;
          if (j < nk) {
            const float* kr = h.k + (kb0 + j) * s.k_row;
            for (int64_t d = 0; d < D; ++d) dst[d * RK + i] = kr[d];
          } else {
            for (int64_t d = 0; d < D; ++d) dst[d * RK + i] = 0.f;
          }
        }
      }
      for (int64_t j = 0; j < nk; ++j) std::memcpy(vp + j * Dv, h.v + (kb0 + j) * s.v_row, Dv * sizeof(float));
      // The rows of the next block are scattered (one head's slice of each token row): fetch
      // them into L2 while this block's panels run, or their misses dominate the packing.
      for (int64_t j = kb0 + nk; j < imin(kend, kb0 + nk + kKeyBlock); ++j) {
        prefetch_span(h.k + j * s.k_row, D);
        prefetch_span(h.v + j * s.v_row, Dv);
      }

      for (int64_t p = 0; p < P; ++p) {
        const int64_t qa = q0 + p * MQ, nv = imin(MQ, q1 - qa);
        int64_t nkp = nk;
        if (s.causal) {
          // Keys past the panel's last query are masked for all of its rows.
          nkp = imin(nk, qa + nv - 1 + off + 1 - kb0);
          if (nkp <= 0) continue;
        }
        const float* qt = qt_all + p * D * MQ;
        float* ot = ot_all + p * Dv * MQ;
        float* mp = m_all + p * MQ;
        float* lp = l_all + p * MQ;

        // Running max: fused into the S tiles unless a mask or the causal edge edits S after.
        const bool causal_edge = s.causal && kb0 + nkp - 1 > qa + off;
        const bool fuse_max = !h.mask && !causal_edge;
        V mnew[NV], mold[NV], lsum[NV], alpha[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) mold[v] = mnew[v] = VT::load(mp + v * W);
        for (int64_t g = 0; g < ceil_div(nkp, RK); ++g)
          qk_tile(kp + g * D * RK, qt, D, sb + g * RK * MQ, fuse_max ? mnew : nullptr,
                  static_cast<int>(imin(RK, nkp - g * RK)));

        if (h.mask) {
          if (s.mask_q == 0) {
            for (int64_t j = 0; j < nkp; ++j) {
              V mv = VT::set1(mask_log2(h.mask[kb0 + j]));
#pragma GCC unroll 4
              for (int v = 0; v < NV; ++v) VT::store(sb + j * MQ + v * W, VT::add(VT::load(sb + j * MQ + v * W), mv));
            }
          } else {
            for (int64_t c = 0; c < nv; ++c) {
              const float* mr = h.mask + (qa + c) * s.mask_q + kb0;
              for (int64_t j = 0; j < nkp; ++j) sb[j * MQ + c] += mask_log2(mr[j]);
            }
          }
        }
        if (causal_edge) {
          for (int64_t c = 0; c < nv; ++c) {
            // Row qa+c sees keys j <= qa + c + off.
            const int64_t first_masked = imax(qa + c + off + 1 - kb0, 0);
            for (int64_t j = first_masked; j < nkp; ++j) sb[j * MQ + c] = kNegInf;
          }
        }

        // Online softmax, lane-wise.
        if (!fuse_max) {
          for (int64_t j = 0; j < nkp; ++j) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) mnew[v] = VT::max(mnew[v], VT::load(sb + j * MQ + v * W));
          }
        }
        // m starts at -FLT_MAX, so a row that has seen only -inf keeps a finite reference and
        // exp2(-inf - m) is 0 instead of NaN.
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) lsum[v] = VT::zero();
        for (int64_t j = 0; j < nkp; ++j) {
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) {
            V e = VT::exp2(VT::sub(VT::load(sb + j * MQ + v * W), mnew[v]));
            VT::store(sb + j * MQ + v * W, e);
            lsum[v] = VT::add(lsum[v], e);
          }
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          alpha[v] = VT::exp2(VT::sub(mold[v], mnew[v]));
          VT::store(lp + v * W, VT::fma(VT::load(lp + v * W), alpha[v], lsum[v]));
          VT::store(mp + v * W, mnew[v]);
        }

        for (int64_t g = 0; g < ngroups; ++g) {
          PvFn fn = g == ngroups - 1 ? pv_last : pv_full;
          fn(vp + g * gsize, Dv, sb, nkp, ot + g * gsize * MQ, alpha);
        }
      }
    }

    // out = OT / l; rows that saw no key at all (l == 0) get zeros.
    for (int64_t p = 0; p < P; ++p) {
      const int64_t qa = q0 + p * MQ, nv = imin(MQ, q1 - qa);
      const float* lp = l_all + p * MQ;
      float inv[MQ];
      for (int64_t c = 0; c < MQ; ++c) inv[c] = lp[c] > 0.f ? 1.f / lp[c] : 0.f;
      for (int64_t c = 0; c < nv; ++c)
        if (qa + c + kAhead < q1) prefetch_span_w(h.o + (qa + c + kAhead) * s.o_row, Dv);
      transpose(ot_all + p * Dv * MQ, MQ, h.o + qa * s.o_row, s.o_row, nv, Dv, inv, true);
    }
  }

  // dst[i * ldd + j] = src[j * lds + i] * scale for i < ni, j < nj, where scale is sc[i] when
  // per_row, else sc[0]. 8 x 8 blocks go through VT::transpose8.
  static void transpose(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t ni, int64_t nj,
                        const float* sc, bool per_row) {
    const int64_t ni8 = ni & ~int64_t(7), nj8 = nj & ~int64_t(7);
    for (int64_t i = 0; i < ni8; i += 8)
      for (int64_t j = 0; j < nj8; j += 8)
        VT::transpose8(src + j * lds + i, lds, dst + i * ldd + j, ldd, per_row ? sc + i : sc, per_row);
    for (int64_t i = 0; i < ni; ++i) {
      const float f = per_row ? sc[i] : sc[0];
      for (int64_t j = i < ni8 ? nj8 : 0; j < nj; ++j) dst[i * ldd + j] = src[j * lds + i] * f;
    }
  }
};

}  // namespace
}  // namespace dk::cpu::attn
