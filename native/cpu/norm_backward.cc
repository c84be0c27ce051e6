// Group norm (+ fused SiLU) and layer norm backward.
//
// With xhat = (x - mean) * rstd over a normalisation set of M elements, y = xhat * gamma + beta
// (then SiLU when fused: dy is first multiplied by silu'(y) = s (1 + y (1 - s)), s = sigmoid(y)):
//   dbeta_c  = sum dy_c            dgamma_c = sum dy_c * xhat
//   dxhat    = dy * gamma          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// The statistics are recomputed here (two passes, double across chunks) rather than saved by
// the forward.
// The elementwise loops select with comparisons (exp_fast, masks, clamps); GCC only if-converts,
// and so vectorises, them when FP traps are not observable. No code here reads FP exceptions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "../core/thread_pool.h"
#include "backward.h"

namespace dk::cpu {
namespace {

inline float silu_grad(float z) {
  const float sg = 1.f / (1.f + exp_fast(-z));
  return sg * (1.f + z * (1.f - sg));
}

constexpr int64_t kRows = 64;  // rows per chunk: the unit of work and of partial sums

// One pixel's row of C channels: out = dy' (dy through the fused SiLU), f += dy', f2 += dy' xhat.
// A function of its own (no captured references) so the loops vectorise.
void dy_prime_row(const float* __restrict xr, const float* __restrict dr, const float* __restrict mc,
                  const float* __restrict rc, const float* __restrict gam, const float* __restrict bet, bool silu,
                  float* __restrict out, float* __restrict f, float* __restrict f2, int64_t C) {
  if (silu) {
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - mc[c]) * rc[c];
      const float d = dr[c] * silu_grad(xh * gam[c] + bet[c]);
      out[c] = d;
      f[c] += d;
      f2[c] += d * xh;
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - mc[c]) * rc[c];
      const float d = dr[c];
      out[c] = d;
      f[c] += d;
      f2[c] += d * xh;
    }
  }
}

}  // namespace

// Group norm backward in row-major passes (every inner loop runs over the C contiguous channels
// of one pixel, so it vectorises whatever the group size). Work is split into (sample, chunk of
// rows); per-channel partial sums are combined in a fixed order, so results do not depend on
// the thread count.
//   1. per-channel sums of x            -> mean per (n, group)
//   2. per-channel sums of (x - mean)^2 -> rstd per (n, group)
//   3. dy' = dy * silu'(y) (kept in dx), per-channel sums of dy' and dy' xhat
//   4. dx = rstd (dy' gamma - mean_g(dy' gamma) - xhat mean_g(dy' gamma xhat))
void group_norm_backward(const float* x, const float* dy, int64_t N, int64_t L, int64_t C, int64_t G,
                         const float* gamma, const float* beta, float eps, bool silu, float* dx, float* dgamma,
                         float* dbeta) {
  if (N <= 0 || C <= 0 || G <= 0) return;
  const int64_t Cg = C / G, M = L * Cg, chunks = std::max<int64_t>(1, (L + kRows - 1) / kRows);
  const int64_t tasks = N * chunks;
  std::vector<double> part(static_cast<size_t>(tasks * C));
  std::vector<double> part2(static_cast<size_t>(tasks * C));
  std::vector<float> meanc(static_cast<size_t>(N * C)), rstdc(static_cast<size_t>(N * C));
  std::vector<float> gam(static_cast<size_t>(C)), bet(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    gam[c] = gamma ? gamma[c] : 1.f;
    bet[c] = beta ? beta[c] : 0.f;
  }
  // per (n, group) value of per-channel sums reduced over chunks and the group's channels
  auto group_sums = [&](const std::vector<double>& pt, int64_t n, std::vector<double>& out, const float* w) {
    for (int64_t g = 0; g < G; ++g) {
      double s = 0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        double sc = 0;
        for (int64_t k = 0; k < chunks; ++k) sc += pt[static_cast<size_t>((n * chunks + k) * C + c)];
        s += w ? sc * w[c] : sc;
      }
      out[static_cast<size_t>(g)] = s;
    }
  };
  auto for_chunks = [&](const std::function<void(int64_t n, int64_t l0, int64_t l1, double* acc, double* acc2)>& fn) {
    parallel_for(tasks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        const int64_t n = t / chunks, k = t % chunks;
        double* acc = part.data() + t * C;
        double* acc2 = part2.data() + t * C;
        std::fill(acc, acc + C, 0.0);
        std::fill(acc2, acc2 + C, 0.0);
        fn(n, std::min(L, k * kRows), std::min(L, (k + 1) * kRows), acc, acc2);
      }
    });
  };
  std::vector<double> gs(static_cast<size_t>(G));

  // 1. mean
  for_chunks([&](int64_t n, int64_t l0, int64_t l1, double* acc, double*) {
    std::vector<float> f(static_cast<size_t>(C), 0.f);
    for (int64_t l = l0; l < l1; ++l) {
      const float* xr = x + (n * L + l) * C;
      for (int64_t c = 0; c < C; ++c) f[c] += xr[c];
    }
    for (int64_t c = 0; c < C; ++c) acc[c] = f[c];
  });
  for (int64_t n = 0; n < N; ++n) {
    group_sums(part, n, gs, nullptr);
    for (int64_t c = 0; c < C; ++c) meanc[n * C + c] = M ? static_cast<float>(gs[c / Cg] / M) : 0.f;
  }
  // 2. rstd
  for_chunks([&](int64_t n, int64_t l0, int64_t l1, double* acc, double*) {
    std::vector<float> f(static_cast<size_t>(C), 0.f);
    const float* mc = meanc.data() + n * C;
    for (int64_t l = l0; l < l1; ++l) {
      const float* xr = x + (n * L + l) * C;
      for (int64_t c = 0; c < C; ++c) {
        const float d = xr[c] - mc[c];
        f[c] += d * d;
      }
    }
    for (int64_t c = 0; c < C; ++c) acc[c] = f[c];
  });
  for (int64_t n = 0; n < N; ++n) {
    group_sums(part, n, gs, nullptr);
    for (int64_t c = 0; c < C; ++c)
      rstdc[n * C + c] = static_cast<float>(1.0 / std::sqrt((M ? gs[c / Cg] / M : 0.0) + static_cast<double>(eps)));
  }
  // 3. dy' and its per-channel sums (part: dy', part2: dy' xhat)
  for_chunks([&](int64_t n, int64_t l0, int64_t l1, double* acc, double* acc2) {
    std::vector<float> f(static_cast<size_t>(C), 0.f), f2(static_cast<size_t>(C), 0.f), row(static_cast<size_t>(C));
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t off = (n * L + l) * C;
      dy_prime_row(x + off, dy + off, meanc.data() + n * C, rstdc.data() + n * C, gam.data(), bet.data(), silu,
                   dx ? dx + off : row.data(), f.data(), f2.data(), C);
    }
    for (int64_t c = 0; c < C; ++c) {
      acc[c] = f[c];
      acc2[c] = f2[c];
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double sb = 0, sg = 0;
    for (int64_t t = 0; t < tasks; ++t) {
      sb += part[static_cast<size_t>(t * C + c)];
      sg += part2[static_cast<size_t>(t * C + c)];
    }
    if (dbeta) dbeta[c] = static_cast<float>(sb);
    if (dgamma) dgamma[c] = static_cast<float>(sg);
  }
  if (!dx) return;
  // 4. dx, with per-(n, group) means of dxhat = dy' gamma and of dxhat xhat
  std::vector<float> ma(static_cast<size_t>(N * C)), mb(static_cast<size_t>(N * C));
  std::vector<double> gs2(static_cast<size_t>(G));
  for (int64_t n = 0; n < N; ++n) {
    group_sums(part, n, gs, gam.data());
    group_sums(part2, n, gs2, gam.data());
    for (int64_t c = 0; c < C; ++c) {
      ma[n * C + c] = M ? static_cast<float>(gs[c / Cg] / M) : 0.f;
      mb[n * C + c] = M ? static_cast<float>(gs2[c / Cg] / M) : 0.f;
    }
  }
  parallel_for(tasks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t n = t / chunks, k = t % chunks;
      const float* mc = meanc.data() + n * C;
      const float* rc = rstdc.data() + n * C;
      const float* a = ma.data() + n * C;
      const float* b = mb.data() + n * C;
      for (int64_t l = std::min(L, k * kRows); l < std::min(L, (k + 1) * kRows); ++l) {
        const float* xr = x + (n * L + l) * C;
        float* o = dx + (n * L + l) * C;
        for (int64_t c = 0; c < C; ++c) {
          const float xh = (xr[c] - mc[c]) * rc[c];
          o[c] = rc[c] * (o[c] * gam[c] - a[c] - xh * b[c]);
        }
      }
    }
  });
}

void layer_norm_backward(const float* x, const float* dy, int64_t rows, int64_t C, const float* gamma, float eps,
                         float* dx, float* dgamma, float* dbeta) {
  if (C <= 0) return;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), rows / 16)));
  std::vector<double> pg(static_cast<size_t>(nt * C), 0.0), pb(static_cast<size_t>(nt * C), 0.0);
  parallel_tasks(nt, [&](int t, int ntasks) {
    const int64_t lo = rows * t / ntasks, hi = rows * (t + 1) / ntasks;
    double* sg = pg.data() + static_cast<int64_t>(t) * C;
    double* sb = pb.data() + static_cast<int64_t>(t) * C;
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = x + r * C;
      const float* dr = dy + r * C;
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += xr[c];
      const double mean = s / C;
      double v = 0;
      for (int64_t c = 0; c < C; ++c) {
        const double d = xr[c] - mean;
        v += d * d;
      }
      const float rstd = static_cast<float>(1.0 / std::sqrt(v / C + static_cast<double>(eps)));
      const float meanf = static_cast<float>(mean);
      double a = 0, b = 0;
      for (int64_t c = 0; c < C; ++c) {
        const float xh = (xr[c] - meanf) * rstd;
        const float d = dr[c];
        sg[c] += static_cast<double>(d) * xh;
        sb[c] += d;
        const float dxh = d * (gamma ? gamma[c] : 1.f);
        a += dxh;
        b += static_cast<double>(dxh) * xh;
      }
      if (!dx) continue;
      const float ma = static_cast<float>(a / C), mb = static_cast<float>(b / C);
      float* o = dx + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const float xh = (xr[c] - meanf) * rstd;
        o[c] = rstd * (dr[c] * (gamma ? gamma[c] : 1.f) - ma - xh * mb);
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double sg = 0, sb = 0;
    for (int t = 0; t < nt; ++t) {
      sg += pg[static_cast<size_t>(t * C + c)];
      sb += pb[static_cast<size_t>(t * C + c)];
    }
    if (dgamma) dgamma[c] = static_cast<float>(sg);
    if (dbeta) dbeta[c] = static_cast<float>(sb);
  }
}

}  // namespace dk::cpu
