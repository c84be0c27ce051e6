// Shared between norm.cc (passes, threading, dispatch, generic path) and the ISA files
// norm_avx512.cc / norm_avx2.cc, which instantiate NormRows<> with their vector type. As in
// attention_internal.h, the templates live in an unnamed namespace so code compiled with AVX
// flags never leaks into a baseline translation unit.
//
// All these ops are memory-bound: each kernel reads its rows once from memory and keeps
// re-reads inside L1/L2 (a row for layer norm / softmax, a chunk of rows for group norm).
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels.h"

namespace dk::cpu::norm {

struct Kernels {
  // s[c] = sum_r x[r*C + c]
  void (*colsum)(const float* x, int64_t rows, int64_t C, float* s) = nullptr;
  // With d = x[r*C + c] - mc[c]: e[c] = sum_r d, q[c] = sum_r d^2 (shifted data: the shift need
  // not be the exact mean, the caller corrects with e).
  void (*colsqdev)(const float* x, int64_t rows, int64_t C, const float* mc, float* q, float* e) = nullptr;
  // y[r*C + c] = f(((x[r*C + c] - mh[c]) - ml[c]) * a[c] + b[c]), f = SiLU when silu, else
  // identity. mh + ml is the mean split in two floats: the subtraction stays exact to float
  // precision even when the mean is large against the spread (x * a + b would not).
  void (*affine)(const float* x, float* y, int64_t rows, int64_t C, const float* mh, const float* ml,
                 const float* a, const float* b, bool silu) = nullptr;
  // The same three on bf16 rows, widened and rounded in registers; null where the ISA file has
  // no bf16 loads (group_norm then widens chunks into float scratch).
  void (*colsum_bf16)(const bf16* x, int64_t rows, int64_t C, float* s) = nullptr;
  void (*colsqdev_bf16)(const bf16* x, int64_t rows, int64_t C, const float* mc, float* q, float* e) = nullptr;
  void (*affine_bf16)(const bf16* x, bf16* y, int64_t rows, int64_t C, const float* mh, const float* ml,
                      const float* a, const float* b, bool silu) = nullptr;
  void (*layer_norm_rows)(const float* x, float* y, int64_t rows, int64_t C, const float* gamma,
                          const float* beta, float eps) = nullptr;
  void (*softmax_rows)(const float* x, float* y, int64_t rows, int64_t C) = nullptr;
  const char* name = "";
};

Kernels kernels_generic();
#if defined(DK_X86)
Kernels kernels_avx2();
Kernels kernels_avx512();
#endif
const Kernels& select_kernels();

// The ops with a given kernel set (the lab compares them).
void group_norm_with(const Kernels& k, const float* x, float* y, int64_t N, int64_t L, int64_t C, int64_t G,
                     const float* gamma, const float* beta, float eps, bool silu);
void layer_norm_with(const Kernels& k, const float* x, float* y, int64_t rows, int64_t C, const float* gamma,
                     const float* beta, float eps);
void softmax_with(const Kernels& k, const float* x, float* y, int64_t rows, int64_t C);

namespace {

constexpr float kNormLog2e = 1.4426950408889634f;
// 2^f on [-0.5, 0.5], near-minimax degree 6 (same as attention's).
constexpr float kN2C0 = 1.0f, kN2C1 = 0.693147182f, kN2C2 = 0.240226462f, kN2C3 = 0.0555032864f,
                kN2C4 = 0.00961848907f, kN2C5 = 0.00133999297f, kN2C6 = 0.000153457921f;

// VT: V, W, zero, set1, load, store, loadn (zero-filled), storen (n < W lanes), add, sub, mul,
// div, fma, max, exp (e^x; 0 below about -87, +inf above about 88), hsum, hmax, zero_past
// (lanes >= n set to 0). VT::kBf16: load / loadn / store / storen also take bf16 pointers
// (widening, rounding to nearest even), and the group-norm kernels get bf16 instances.
template <class VT>
struct NormRows {
  using V = typename VT::V;
  static constexpr int W = VT::W;

  template <class T>
  static void colsum(const T* x, int64_t rows, int64_t C, float* s) {
    int64_t c = 0;
    for (; c + 4 * W <= C; c += 4 * W) {  // four vectors of columns in registers down the rows
      V a0 = VT::zero(), a1 = VT::zero(), a2 = VT::zero(), a3 = VT::zero();
      for (int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * C + c;
        a0 = VT::add(a0, VT::load(xr));
        a1 = VT::add(a1, VT::load(xr + W));
        a2 = VT::add(a2, VT::load(xr + 2 * W));
        a3 = VT::add(a3, VT::load(xr + 3 * W));
      }
      VT::store(s + c, a0);
      VT::store(s + c + W, a1);
      VT::store(s + c + 2 * W, a2);
      VT::store(s + c + 3 * W, a3);
    }
    for (; c < C; c += W) {
      const int n = static_cast<int>(C - c < W ? C - c : W);
      V a = VT::zero();
      for (int64_t r = 0; r < rows; ++r) a = VT::add(a, VT::loadn(x + r * C + c, n));
      VT::storen(s + c, a, n);
    }
  }

  template <class T>
  static void colsqdev(const T* x, int64_t rows, int64_t C, const float* mc, float* q, float* e) {
    int64_t c = 0;
    for (; c + 2 * W <= C; c += 2 * W) {
      const V m0 = VT::load(mc + c), m1 = VT::load(mc + c + W);
      V q0 = VT::zero(), q1 = VT::zero(), e0 = VT::zero(), e1 = VT::zero();
      for (int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * C + c;
        const V d0 = VT::sub(VT::load(xr), m0), d1 = VT::sub(VT::load(xr + W), m1);
        q0 = VT::fma(d0, d0, q0);
        q1 = VT::fma(d1, d1, q1);
        e0 = VT::add(e0, d0);
        e1 = VT::add(e1, d1);
      }
      VT::store(q + c, q0);
      VT::store(q + c + W, q1);
      VT::store(e + c, e0);
      VT::store(e + c + W, e1);
    }
    for (; c < C; c += W) {
      const int n = static_cast<int>(C - c < W ? C - c : W);
      const V m = VT::loadn(mc + c, n);
      V qa = VT::zero(), ea = VT::zero();
      for (int64_t r = 0; r < rows; ++r) {
        const V d = VT::sub(VT::loadn(x + r * C + c, n), m);
        qa = VT::fma(d, d, qa);
        ea = VT::add(ea, d);
      }
      VT::storen(q + c, qa, n);
      VT::storen(e + c, ea, n);
    }
  }

  // SiLU(y) = y * sigmoid(y) = y / (1 + e^-y); e^-y = inf gives -0, the limit.
  static V silu(V y) { return VT::div(y, VT::add(VT::set1(1.f), VT::exp(VT::sub(VT::zero(), y)))); }

  template <class T>
  static V norm1(const T* x, const float* mh, const float* ml, const float* a, const float* b) {
    return VT::fma(VT::sub(VT::sub(VT::load(x), VT::load(mh)), VT::load(ml)), VT::load(a), VT::load(b));
  }

  template <class T>
  static void affine(const T* x, T* y, int64_t rows, int64_t C, const float* mh, const float* ml,
                     const float* a, const float* b, bool act) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      int64_t c = 0;
      if (act) {
        for (; c + W <= C; c += W) VT::store(yr + c, silu(norm1(xr + c, mh + c, ml + c, a + c, b + c)));
      } else {
        for (; c + W <= C; c += W) VT::store(yr + c, norm1(xr + c, mh + c, ml + c, a + c, b + c));
      }
      if (c < C) {
        const int n = static_cast<int>(C - c);
        const V d = VT::sub(VT::sub(VT::loadn(xr + c, n), VT::loadn(mh + c, n)), VT::loadn(ml + c, n));
        const V v = VT::fma(d, VT::loadn(a + c, n), VT::loadn(b + c, n));
        VT::storen(yr + c, act ? silu(v) : v, n);
      }
    }
  }

  // Sum of a row in four vector accumulators (each lane sums C / 4W values).
  static float row_sum(const float* x, int64_t C) {
    V a0 = VT::zero(), a1 = VT::zero(), a2 = VT::zero(), a3 = VT::zero();
    int64_t c = 0;
    for (; c + 4 * W <= C; c += 4 * W) {
      a0 = VT::add(a0, VT::load(x + c));
      a1 = VT::add(a1, VT::load(x + c + W));
      a2 = VT::add(a2, VT::load(x + c + 2 * W));
      a3 = VT::add(a3, VT::load(x + c + 3 * W));
    }
    for (; c < C; c += W) a0 = VT::add(a0, VT::loadn(x + c, static_cast<int>(C - c < W ? C - c : W)));
    return VT::hsum(VT::add(VT::add(a0, a1), VT::add(a2, a3)));
  }

  // With d = x - shift over the row: sd = sum d, sq = sum d^2.
  static void row_dev(const float* x, int64_t C, float shift, float* sd, float* sq) {
    const V m = VT::set1(shift);
    V q0 = VT::zero(), q1 = VT::zero(), e0 = VT::zero(), e1 = VT::zero();
    int64_t c = 0;
    for (; c + 2 * W <= C; c += 2 * W) {
      const V d0 = VT::sub(VT::load(x + c), m), d1 = VT::sub(VT::load(x + c + W), m);
      q0 = VT::fma(d0, d0, q0);
      q1 = VT::fma(d1, d1, q1);
      e0 = VT::add(e0, d0);
      e1 = VT::add(e1, d1);
    }
    for (; c < C; c += W) {
      const int n = static_cast<int>(C - c < W ? C - c : W);
      const V d = VT::zero_past(VT::sub(VT::loadn(x + c, n), m), n);  // lanes past n: 0, not -shift
      q0 = VT::fma(d, d, q0);
      e0 = VT::add(e0, d);
    }
    *sd = VT::hsum(VT::add(e0, e1));
    *sq = VT::hsum(VT::add(q0, q1));
  }

  // Two passes over the row (L1-resident): a rough mean m0, then the exact mean and variance
  // from the data shifted by m0; y = ((x - m0) - delta) * rstd * gamma + beta.
  static void layer_norm_rows(const float* x, float* y, int64_t rows, int64_t C, const float* gamma,
                              const float* beta, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      const float m0 = row_sum(xr, C) / static_cast<float>(C);
      float sd, sq;
      row_dev(xr, C, m0, &sd, &sq);
      const double delta = static_cast<double>(sd) / static_cast<double>(C);
      double var = static_cast<double>(sq) / static_cast<double>(C) - delta * delta;
      var = var > 0 ? var : 0;
      const V vr = VT::set1(static_cast<float>(1.0 / __builtin_sqrt(var + static_cast<double>(eps))));
      const V vm = VT::set1(m0), vd = VT::set1(static_cast<float>(delta));
      int64_t c = 0;
      for (; c + W <= C; c += W) {
        V v = VT::mul(VT::sub(VT::sub(VT::load(xr + c), vm), vd), vr);
        if (gamma) v = VT::mul(v, VT::load(gamma + c));
        if (beta) v = VT::add(v, VT::load(beta + c));
        VT::store(yr + c, v);
      }
      if (c < C) {
        const int n = static_cast<int>(C - c);
        V v = VT::mul(VT::sub(VT::sub(VT::loadn(xr + c, n), vm), vd), vr);
        if (gamma) v = VT::mul(v, VT::loadn(gamma + c, n));
        if (beta) v = VT::add(v, VT::loadn(beta + c, n));
        VT::storen(yr + c, v, n);
      }
    }
  }

  static void softmax_rows(const float* x, float* y, int64_t rows, int64_t C) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      V mx = VT::set1(-__builtin_huge_valf());
      int64_t c = 0;
      for (; c + W <= C; c += W) mx = VT::max(mx, VT::load(xr + c));
      float m = VT::hmax(mx);
      for (; c < C; ++c) m = xr[c] > m ? xr[c] : m;
      // A row of -inf has no softmax: subtracting 0 (not -inf) gives 0/0 = NaN, as PyTorch does.
      const V vm = VT::set1(m == -__builtin_huge_valf() ? 0.f : m);
      V s0 = VT::zero(), s1 = VT::zero();
      c = 0;
      for (; c + 2 * W <= C; c += 2 * W) {
        const V e0 = VT::exp(VT::sub(VT::load(xr + c), vm)), e1 = VT::exp(VT::sub(VT::load(xr + c + W), vm));
        VT::store(yr + c, e0);
        VT::store(yr + c + W, e1);
        s0 = VT::add(s0, e0);
        s1 = VT::add(s1, e1);
      }
      for (; c < C; c += W) {
        const int n = static_cast<int>(C - c < W ? C - c : W);
        const V e = VT::exp(VT::sub(VT::loadn(xr + c, n), vm));
        VT::storen(yr + c, e, n);
        s0 = VT::add(s0, VT::zero_past(e, n));
      }
      const V inv = VT::set1(1.f / VT::hsum(VT::add(s0, s1)));
      c = 0;
      for (; c + W <= C; c += W) VT::store(yr + c, VT::mul(VT::load(yr + c), inv));
      if (c < C) {
        const int n = static_cast<int>(C - c);
        VT::storen(yr + c, VT::mul(VT::loadn(yr + c, n), inv), n);
      }
    }
  }

  static Kernels kernels(const char* name) {
    Kernels k;
    k.colsum = &colsum<float>;
    k.colsqdev = &colsqdev<float>;
    k.affine = &affine<float>;
    if constexpr (VT::kBf16) {
      k.colsum_bf16 = &colsum<bf16>;
      k.colsqdev_bf16 = &colsqdev<bf16>;
      k.affine_bf16 = &affine<bf16>;
    }
    k.layer_norm_rows = &layer_norm_rows;
    k.softmax_rows = &softmax_rows;
    k.name = name;
    return k;
  }
};

}  // namespace
}  // namespace dk::cpu::norm
