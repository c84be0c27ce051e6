// Backward of the elementwise family and the small data-movement ops: activation derivatives,
// broadcast binary / scalar ops, clamp, GEGLU, softmax, max, nearest upsampling, embedding
// (scatter-add) and slicing. Derivatives are evaluated in double and rounded once (GEGLU on
// AVX-512: float32 with the forward's fitted erf, elementwise_avx512.cc).
// The elementwise loops select with comparisons (exp_fast, masks, clamps); GCC only if-converts,
// and so vectorises, them when FP traps are not observable. No code here reads FP exceptions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../core/thread_pool.h"
#include "backward.h"
#include "cpu_features.h"

namespace dk::cpu {

#if defined(DK_X86)
void geglu_backward_rows_avx512(const float* x, const float* dy, float* dx, int64_t r0, int64_t r1, int64_t C);
#endif
namespace {

constexpr int64_t kGrain = 1 << 14;
using deriv::binary_grad;
using deriv::gelu_erf;
using deriv::unary_grad;


}  // namespace

void unary_backward(UnaryOp op, const float* x, const float* dy, float* dx, int64_t n) {
  parallel_for(n, kGrain / 4, [&](int64_t lo, int64_t hi) {
    if (op == UnaryOp::Neg) {
      for (int64_t i = lo; i < hi; ++i) dx[i] = -dy[i];
      return;
    }
    for (int64_t i = lo; i < hi; ++i) dx[i] = static_cast<float>(dy[i] * unary_grad(op, x[i]));
  });
}

void binary_backward(BinaryOp op, int which, int ndim, const int64_t* shape, const float* a, const int64_t* sa,
                     const float* b, const int64_t* sb, const float* dy, float* dfull) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  if (n == 0) return;
  const int64_t inner = ndim > 0 ? shape[ndim - 1] : 1;
  const int64_t rows = n / inner;
  const int64_t ia = ndim > 0 ? sa[ndim - 1] : 0, ib = ndim > 0 ? sb[ndim - 1] : 0;
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      int64_t rem = r, oa = 0, ob = 0;
      for (int d = ndim - 2; d >= 0; d--) {
        const int64_t idx = rem % shape[d];
        rem /= shape[d];
        oa += idx * sa[d];
        ob += idx * sb[d];
      }
      const float* pa = a + oa;
      const float* pb = b + ob;
      const float* g = dy + r * inner;
      float* o = dfull + r * inner;
      for (int64_t i = 0; i < inner; i++)
        o[i] = static_cast<float>(g[i] * binary_grad(op, which, pa[i * ia], pb[i * ib]));
    }
  });
}

void binary_scalar_backward(BinaryOp op, const float* a, float s, bool scalar_first, const float* dy, float* dx,
                            int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    if (op == BinaryOp::Mul) {
      for (int64_t i = lo; i < hi; ++i) dx[i] = dy[i] * s;
      return;
    }
    // the tensor is operand `which` of (a op s) or (s op a)
    const int which = scalar_first ? 1 : 0;
    for (int64_t i = lo; i < hi; ++i) {
      const double x = a[i];
      const double gr = scalar_first ? binary_grad(op, which, s, x) : binary_grad(op, which, x, s);
      dx[i] = static_cast<float>(dy[i] * gr);
    }
  });
}

void clamp_backward(const float* x, float lo_v, float hi_v, const float* dy, float* dx, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) dx[i] = (x[i] >= lo_v && x[i] <= hi_v) ? dy[i] : 0.f;
  });
}

void geglu_backward(const float* x, const float* dy, float* dx, int64_t rows, int64_t C) {
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t lo, int64_t hi) {
#if defined(DK_X86)
    // float32 with a fitted erf (a few ulps): the double loop below was 5% of a U-Net training step
    if (cpu_features().isa == Isa::AVX512) return geglu_backward_rows_avx512(x, dy, dx, lo, hi, C);
#endif
    for (int64_t r = lo; r < hi; ++r) {
      const float* h = x + r * 2 * C;
      const float* g = h + C;
      const float* d = dy + r * C;
      float* dh = dx + r * 2 * C;
      float* dg = dh + C;
      for (int64_t i = 0; i < C; ++i) {
        dh[i] = static_cast<float>(d[i] * gelu_erf(g[i]));
        dg[i] = static_cast<float>(static_cast<double>(d[i]) * h[i] * unary_grad(UnaryOp::Gelu, g[i]));
      }
    }
  });
}

void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t C) {
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* yr = y + r * C;
      const float* dr = dy + r * C;
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += static_cast<double>(yr[c]) * dr[c];
      const float sf = static_cast<float>(s);
      float* o = dx + r * C;
      for (int64_t c = 0; c < C; ++c) o[c] = yr[c] * (dr[c] - sf);
    }
  });
}

void max_backward(const float* x, const float* y, const float* dy, float* dx, int64_t outer, int64_t n,
                  int64_t inner) {
  parallel_for(outer * inner, std::max<int64_t>(1, kGrain / std::max<int64_t>(n, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t oi = lo; oi < hi; ++oi) {
      const int64_t o = oi / inner, i = oi % inner;
      const float* xs = x + o * n * inner + i;
      float* ds = dx + o * n * inner + i;
      const float m = y[oi];
      int64_t ties = 0;
      for (int64_t k = 0; k < n; ++k) ties += xs[k * inner] == m;
      const float share = ties ? dy[oi] / static_cast<float>(ties) : 0.f;
      for (int64_t k = 0; k < n; ++k) ds[k * inner] = xs[k * inner] == m ? share : 0.f;
    }
  });
}

void upsample_nearest2x_backward(const float* dy, float* dx, int64_t N, int64_t H, int64_t W, int64_t C) {
  parallel_for(N * H, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t nh = lo; nh < hi; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const float* r0 = dy + ((n * 2 * H + 2 * h) * 2 * W) * C;
      const float* r1 = r0 + 2 * W * C;
      float* o = dx + (n * H + h) * W * C;
      for (int64_t w = 0; w < W; ++w) {
        const float* a = r0 + 2 * w * C;
        const float* b = r1 + 2 * w * C;
        for (int64_t c = 0; c < C; ++c) o[w * C + c] = (a[c] + a[C + c]) + (b[c] + b[C + c]);
      }
    }
  });
}

void embedding_backward(const void* ids, bool ids_is_64, int64_t n, const float* dy, int64_t D, int64_t V,
                        float* dtable) {
  std::memset(dtable, 0, sizeof(float) * V * D);
  // Columns are split over threads so repeated ids never race; rows are summed in id order.
  parallel_for(D, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = ids_is_64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
      const float* src = dy + i * D;
      float* dst = dtable + id * D;
      for (int64_t d = lo; d < hi; ++d) dst[d] += src[d];
    }
  });
}

void slice_backward(const float* dy, float* dx, int64_t outer, int64_t size, int64_t count, int64_t inner,
                    int64_t start, int64_t step) {
  parallel_for(outer, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t o = lo; o < hi; ++o) {
      float* base = dx + o * size * inner;
      std::memset(base, 0, sizeof(float) * size * inner);
      for (int64_t i = 0; i < count; ++i)
        std::memcpy(base + (start + i * step) * inner, dy + (o * count + i) * inner, sizeof(float) * inner);
    }
  });
}

}  // namespace dk::cpu
