// Elementwise kernels: broadcast binary ops, unary activations, clamp, axpby, GEGLU.
#include <algorithm>
#include <cmath>

#include "../core/thread_pool.h"
#include "cpu_features.h"
#include "elementwise_math.h"
#include "kernels.h"

namespace dk::cpu {

#if defined(DK_X86)
void geglu_rows_avx512(const float* x, float* out, int64_t r0, int64_t r1, int64_t C);
#endif

namespace {

constexpr int64_t kGrain = 1 << 14;

template <BinaryOp OP>
void binary_flat(const float* a, const float* b, float* out, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; i++) out[i] = apply_binary(OP, a[i], b[i]);
}

}  // namespace

void binary(BinaryOp op, int ndim, const int64_t* shape, const float* a, const int64_t* sa, const float* b,
            const int64_t* sb, float* out) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  if (n == 0) return;
  // Contiguous operands of the same shape: one flat loop the compiler vectorises.
  const bool flat = dense_operands(ndim, shape, sa, sb);
  if (flat) {
    parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
      switch (op) {
        case BinaryOp::Add: binary_flat<BinaryOp::Add>(a, b, out, lo, hi); break;
        case BinaryOp::Sub: binary_flat<BinaryOp::Sub>(a, b, out, lo, hi); break;
        case BinaryOp::Mul: binary_flat<BinaryOp::Mul>(a, b, out, lo, hi); break;
        case BinaryOp::Div: binary_flat<BinaryOp::Div>(a, b, out, lo, hi); break;
        default: for (int64_t i = lo; i < hi; i++) out[i] = apply_binary(op, a[i], b[i]);
      }
    });
    return;
  }
  // General case: rows along the last dim, outer index decomposed per row.
  const int64_t inner = ndim > 0 ? shape[ndim - 1] : 1;
  const int64_t rows = n / inner;
  const int64_t ia = ndim > 0 ? sa[ndim - 1] : 0, ib = ndim > 0 ? sb[ndim - 1] : 0;
  parallel_for(rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      int64_t rem = r, oa = 0, ob = 0;
      for (int d = ndim - 2; d >= 0; d--) {
        int64_t idx = rem % shape[d];
        rem /= shape[d];
        oa += idx * sa[d];
        ob += idx * sb[d];
      }
      const float* pa = a + oa;
      const float* pb = b + ob;
      float* po = out + r * inner;
      if (ia == 1 && ib == 1) {
        for (int64_t i = 0; i < inner; i++) po[i] = apply_binary(op, pa[i], pb[i]);
      } else if (ia == 1 && ib == 0) {
        const float bv = pb[0];
        for (int64_t i = 0; i < inner; i++) po[i] = apply_binary(op, pa[i], bv);
      } else {
        for (int64_t i = 0; i < inner; i++) po[i] = apply_binary(op, pa[i * ia], pb[i * ib]);
      }
    }
  });
}

void binary_scalar(BinaryOp op, const float* a, float s, bool scalar_first, float* out, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    if (scalar_first)
      for (int64_t i = lo; i < hi; i++) out[i] = apply_binary(op, s, a[i]);
    else if (op == BinaryOp::Mul)
      for (int64_t i = lo; i < hi; i++) out[i] = a[i] * s;
    else if (op == BinaryOp::Add)
      for (int64_t i = lo; i < hi; i++) out[i] = a[i] + s;
    else
      for (int64_t i = lo; i < hi; i++) out[i] = apply_binary(op, a[i], s);
  });
}

void unary(UnaryOp op, const float* a, float* out, int64_t n) {
  parallel_for(n, kGrain / 4, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) out[i] = apply_unary(op, a[i]);
  });
}

void clamp(const float* a, float lo_v, float hi_v, float* out, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      float v = a[i];
      out[i] = std::isnan(v) ? v : std::min(std::max(v, lo_v), hi_v);
    }
  });
}

void axpby(int64_t n, float a, const float* x, float b, const float* y, float c, const float* z, float* out) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    if (y && z)
      for (int64_t i = lo; i < hi; i++) out[i] = a * x[i] + b * y[i] + c * z[i];
    else if (y)
      for (int64_t i = lo; i < hi; i++) out[i] = a * x[i] + b * y[i];
    else
      for (int64_t i = lo; i < hi; i++) out[i] = a * x[i];
  });
}

void geglu(const float* x, float* out, int64_t rows, int64_t C) {
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t lo, int64_t hi) {
#if defined(DK_X86)
    if (cpu_features().isa == Isa::AVX512) return geglu_rows_avx512(x, out, lo, hi, C);
#endif
    for (int64_t r = lo; r < hi; r++) {
      const float* h = x + r * 2 * C;
      const float* g = h + C;
      float* o = out + r * C;
      for (int64_t i = 0; i < C; i++) o[i] = h[i] * gelu_erf(g[i]);
    }
  });
}

}  // namespace dk::cpu
