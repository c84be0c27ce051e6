// Group norm (channels-last, optional fused SiLU), layer norm and last-dim softmax. The row
// kernels are in norm_internal.h (one instantiation per ISA); this file holds the passes, the
// threading, the dispatch and the portable instantiation.
//
// Group norm statistics: x is read in chunks of rows that stay in L2. Per chunk and group the
// data are shifted by the chunk's (float) mean, their sum and sum of squares give the chunk's
// exact mean and M2, and chunks are merged in double with Chan's formula, in a fixed order so
// the result does not depend on the thread count. Biased variance, eps inside the sqrt.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../core/thread_pool.h"
#include "cpu_features.h"
#include "kernels.h"
#include "norm_internal.h"

namespace dk::cpu {
namespace norm {
namespace {

struct NGeneric {
  struct V {
    float x[4];
  };
  static constexpr int W = 4;
  static constexpr bool kBf16 = false;
  static V zero() { return V{{0.f, 0.f, 0.f, 0.f}}; }
  static V set1(float a) { return V{{a, a, a, a}}; }
  static V load(const float* p) { return V{{p[0], p[1], p[2], p[3]}}; }
  static void store(float* p, V v) {
    for (int i = 0; i < W; ++i) p[i] = v.x[i];
  }
  static V loadn(const float* p, int n) {
    V r = zero();
    for (int i = 0; i < n; ++i) r.x[i] = p[i];
    return r;
  }
  static void storen(float* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.x[i];
  }
  static V zero_past(V v, int n) {
    for (int i = n; i < W; ++i) v.x[i] = 0.f;
    return v;
  }
#define DK_NORM_LANEWISE(name, expr) \
  static V name(V a, V b) {          \
    for (int i = 0; i < W; ++i) a.x[i] = (expr); \
    return a;                        \
  }
  DK_NORM_LANEWISE(add, a.x[i] + b.x[i])
  DK_NORM_LANEWISE(sub, a.x[i] - b.x[i])
  DK_NORM_LANEWISE(mul, a.x[i] * b.x[i])
  DK_NORM_LANEWISE(div, a.x[i] / b.x[i])
  DK_NORM_LANEWISE(max, a.x[i] > b.x[i] ? a.x[i] : b.x[i])
#undef DK_NORM_LANEWISE
  static V fma(V a, V b, V c) {
    for (int i = 0; i < W; ++i) c.x[i] += a.x[i] * b.x[i];
    return c;
  }
  // e^x = 2^n * 2^f by the same polynomial as the SIMD files (std::exp does not vectorise);
  // 0 below 2^-125, +inf from 2^128, NaN stays NaN.
  static float exp1(float x) {
    float t = x * kNormLog2e;
    if (!(t > -125.f)) return t != t ? t : 0.f;
    if (t >= 128.f) return __builtin_huge_valf();
    const float u = t + 0.5f;
    int n = static_cast<int>(u);
    if (static_cast<float>(n) > u) --n;  // floor(t + 1/2)
    const float f = t - static_cast<float>(n);
    float p = kN2C6;
    p = p * f + kN2C5;
    p = p * f + kN2C4;
    p = p * f + kN2C3;
    p = p * f + kN2C2;
    p = p * f + kN2C1;
    p = p * f + kN2C0;
    // 2^n as two factors so n = 128 (t just below 128 rounding up) does not overflow the field.
    const int n1 = n / 2, n2 = n - n1;
    uint32_t b1 = static_cast<uint32_t>(n1 + 127) << 23, b2 = static_cast<uint32_t>(n2 + 127) << 23;
    float s1, s2;
    std::memcpy(&s1, &b1, sizeof s1);
    std::memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
  }
  static V exp(V a) {
    for (int i = 0; i < W; ++i) a.x[i] = exp1(a.x[i]);
    return a;
  }
  static float hsum(V v) { return (v.x[0] + v.x[1]) + (v.x[2] + v.x[3]); }
  static float hmax(V v) {
    float m = v.x[0];
    for (int i = 1; i < W; ++i) m = v.x[i] > m ? v.x[i] : m;
    return m;
  }
};

}  // namespace

Kernels kernels_generic() { return NormRows<NGeneric>::kernels("generic"); }

const Kernels& select_kernels() {
  static const Kernels k = [] {
#if defined(DK_X86)
    switch (cpu_features().isa) {
      case Isa::AVX512: return kernels_avx512();
      case Isa::AVX2: return kernels_avx2();
      default: break;
    }
#endif
    return kernels_generic();
  }();
  return k;
}

namespace {

// T is float or bf16 (x and y). bf16 rows go to the kernels' bf16 variants (widened and rounded
// in registers) where the ISA has them, else are widened chunk by chunk into float scratch that
// stays in L2; either way the statistics are the float ones.
template <class T>
void group_norm_impl(const Kernels& k, const T* x, T* y, int64_t N, int64_t L, int64_t C, int64_t G,
                     const float* gamma, const float* beta, float eps, bool silu) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  const bool kWide = kF32 || k.colsum_bf16;  // no float scratch needed
  if (N <= 0 || L <= 0 || C <= 0 || G <= 0) return;
  const int64_t Cg = C / G;
  // Chunks of ~64 KB (at most 256 rows, so the float column sums stay short).
  const int64_t R = std::max<int64_t>(1, std::min<int64_t>({256, L, 16384 / C}));
  const int64_t chunks = (L + R - 1) / R;
  const int64_t items = N * chunks;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), items));

  // Per (item, group): shift m, sum of d, sum of d^2, count implied by the chunk's rows.
  std::vector<double> part(static_cast<size_t>(items * G * 3));
  const int64_t per_task = 4 * C + (kWide ? 0 : R * C);
  std::vector<float> scratch(static_cast<size_t>(nt * per_task));
  parallel_tasks(nt, [&](int task, int ntasks) {
    float* s = scratch.data() + static_cast<int64_t>(task) * per_task;
    float* mc = s + C;
    float* q = mc + C;
    float* e = q + C;
    const int64_t lo = items * task / ntasks, hi = items * (task + 1) / ntasks;
    for (int64_t it = lo; it < hi; ++it) {
      const int64_t n = it / chunks, r0 = (it % chunks) * R, rows = std::min(R, L - r0);
      const float* xc = nullptr;
      if constexpr (kF32) {
        xc = x + (n * L + r0) * C;
      } else if (!kWide) {
        widen_bf16(x + (n * L + r0) * C, e + C, rows * C);
        xc = e + C;
      }
      if (xc) k.colsum(xc, rows, C, s);
      else if constexpr (!kF32) k.colsum_bf16(x + (n * L + r0) * C, rows, C, s);
      double* pg = part.data() + it * G * 3;
      for (int64_t g = 0; g < G; ++g) {
        double sum = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) sum += s[c];
        const float m = static_cast<float>(sum / static_cast<double>(rows * Cg));
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) mc[c] = m;
        pg[g * 3] = m;
      }
      if (xc) k.colsqdev(xc, rows, C, mc, q, e);
      else if constexpr (!kF32) k.colsqdev_bf16(x + (n * L + r0) * C, rows, C, mc, q, e);
      for (int64_t g = 0; g < G; ++g) {
        double se = 0, sq = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          se += e[c];
          sq += q[c];
        }
        pg[g * 3 + 1] = se;
        pg[g * 3 + 2] = sq;
      }
    }
  });

  // Merge chunks per (n, g) in order; then per channel y = ((x - mh) - ml) * a + b.
  std::vector<float> coef(static_cast<size_t>(N * C * 4));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double cnt = 0, mean = 0, m2 = 0;
      for (int64_t ch = 0; ch < chunks; ++ch) {
        const double* pg = part.data() + ((n * chunks + ch) * G + g) * 3;
        const double nb = static_cast<double>(std::min(R, L - ch * R) * Cg);
        const double mb = pg[0] + pg[1] / nb;           // chunk mean
        const double m2b = pg[2] - pg[1] * pg[1] / nb;  // chunk M2 about its mean
        const double tot = cnt + nb, delta = mb - mean;
        mean += delta * nb / tot;
        m2 += std::max(m2b, 0.0) + delta * delta * cnt * nb / tot;
        cnt = tot;
      }
      const double rstd = 1.0 / std::sqrt(m2 / cnt + static_cast<double>(eps));
      const float mh = static_cast<float>(mean), ml = static_cast<float>(mean - mh);
      float* cf = coef.data() + n * C * 4;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        cf[c] = mh;
        cf[C + c] = ml;
        cf[2 * C + c] = static_cast<float>((gamma ? gamma[c] : 1.0) * rstd);
        cf[3 * C + c] = beta ? beta[c] : 0.f;
      }
    }

  parallel_for(N * L, std::max<int64_t>(1, 16384 / C), [&](int64_t lo, int64_t hi) {
    while (lo < hi) {
      const int64_t n = lo / L, end = std::min(hi, (n + 1) * L);
      const float* cf = coef.data() + n * C * 4;
      if constexpr (kF32) {
        k.affine(x + lo * C, y + lo * C, end - lo, C, cf, cf + C, cf + 2 * C, cf + 3 * C, silu);
      } else if (kWide) {
        k.affine_bf16(x + lo * C, y + lo * C, end - lo, C, cf, cf + C, cf + 2 * C, cf + 3 * C, silu);
      } else {
        std::vector<float> buf(static_cast<size_t>(std::min(R, end - lo) * C));
        for (int64_t r = lo; r < end; r += R) {
          const int64_t m = std::min(R, end - r);
          widen_bf16(x + r * C, buf.data(), m * C);
          k.affine(buf.data(), buf.data(), m, C, cf, cf + C, cf + 2 * C, cf + 3 * C, silu);
          narrow_bf16(buf.data(), y + r * C, m * C);
        }
      }
      lo = end;
    }
  });
}

// Row kernels on bf16: blocks of rows (about 8K values) widened into float scratch.
template <class Fn>
void bf16_rows(const bf16* x, bf16* y, int64_t rows, int64_t C, Fn fn) {
  if (rows <= 0 || C <= 0) return;
  const int64_t R = std::max<int64_t>(1, 8192 / C);
  parallel_for(rows, R, [&](int64_t lo, int64_t hi) {
    std::vector<float> buf(static_cast<size_t>(std::min(R, hi - lo) * C));
    for (int64_t r = lo; r < hi; r += R) {
      const int64_t m = std::min(R, hi - r);
      widen_bf16(x + r * C, buf.data(), m * C);
      fn(buf.data(), m);
      narrow_bf16(buf.data(), y + r * C, m * C);
    }
  });
}

std::vector<float> widen_param(const bf16* p, int64_t C) {
  std::vector<float> v;
  if (p) {
    v.resize(static_cast<size_t>(C));
    widen_bf16(p, v.data(), C);
  }
  return v;
}

}  // namespace

void group_norm_with(const Kernels& k, const float* x, float* y, int64_t N, int64_t L, int64_t C, int64_t G,
                     const float* gamma, const float* beta, float eps, bool silu) {
  group_norm_impl(k, x, y, N, L, C, G, gamma, beta, eps, silu);
}

void layer_norm_with(const Kernels& k, const float* x, float* y, int64_t rows, int64_t C, const float* gamma,
                     const float* beta, float eps) {
  if (rows <= 0 || C <= 0) return;
  parallel_for(rows, std::max<int64_t>(1, 8192 / C), [&](int64_t lo, int64_t hi) {
    k.layer_norm_rows(x + lo * C, y + lo * C, hi - lo, C, gamma, beta, eps);
  });
}

void softmax_with(const Kernels& k, const float* x, float* y, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  parallel_for(rows, std::max<int64_t>(1, 8192 / C), [&](int64_t lo, int64_t hi) {
    k.softmax_rows(x + lo * C, y + lo * C, hi - lo, C);
  });
}

}  // namespace norm

void group_norm(const float* x, float* y, int64_t N, int64_t L, int64_t C, int64_t G, const float* gamma,
                const float* beta, float eps, bool silu) {
  norm::group_norm_with(norm::select_kernels(), x, y, N, L, C, G, gamma, beta, eps, silu);
}

void layer_norm(const float* x, float* y, int64_t rows, int64_t C, const float* gamma, const float* beta,
                float eps) {
  norm::layer_norm_with(norm::select_kernels(), x, y, rows, C, gamma, beta, eps);
}

void softmax_lastdim(const float* x, float* y, int64_t rows, int64_t C) {
  norm::softmax_with(norm::select_kernels(), x, y, rows, C);
}

void group_norm(const bf16* x, bf16* y, int64_t N, int64_t L, int64_t C, int64_t G, const bf16* gamma,
                const bf16* beta, float eps, bool silu) {
  const std::vector<float> g = norm::widen_param(gamma, C), b = norm::widen_param(beta, C);
  norm::group_norm_impl(norm::select_kernels(), x, y, N, L, C, G, gamma ? g.data() : nullptr,
                        beta ? b.data() : nullptr, eps, silu);
}

void layer_norm(const bf16* x, bf16* y, int64_t rows, int64_t C, const bf16* gamma, const bf16* beta, float eps) {
  const std::vector<float> g = norm::widen_param(gamma, C), b = norm::widen_param(beta, C);
  const norm::Kernels& k = norm::select_kernels();
  norm::bf16_rows(x, y, rows, C, [&](float* buf, int64_t m) {
    k.layer_norm_rows(buf, buf, m, C, gamma ? g.data() : nullptr, beta ? b.data() : nullptr, eps);
  });
}

void softmax_lastdim(const bf16* x, bf16* y, int64_t rows, int64_t C) {
  const norm::Kernels& k = norm::select_kernels();
  norm::bf16_rows(x, y, rows, C, [&](float* buf, int64_t m) { k.softmax_rows(buf, buf, m, C); });
}

}  // namespace dk::cpu
