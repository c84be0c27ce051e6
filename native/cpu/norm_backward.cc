// Group norm (+ fused SiLU) and layer norm backward.
//
// With xhat = (x - mean) * rstd over a normalisation set of M elements, y = xhat * gamma + beta
// (then SiLU when fused: dy is first multiplied by silu'(y) = s (1 + y (1 - s)), s = sigmoid(y)):
//   dbeta_c  = sum dy_c            dgamma_c = sum dy_c * xhat
//   dxhat    = dy * gamma          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// The statistics are recomputed here (two-pass, double) rather than saved by the forward.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/thread_pool.h"
#include "backward.h"

namespace dk::cpu {
namespace {

inline float silu_grad(float z) {
  const float s = 1.f / (1.f + std::exp(-z));
  return s * (1.f + z * (1.f - s));
}

}  // namespace

void group_norm_backward(const float* x, const float* dy, int64_t N, int64_t L, int64_t C, int64_t G,
                         const float* gamma, const float* beta, float eps, bool silu, float* dx, float* dgamma,
                         float* dbeta) {
  if (N <= 0 || C <= 0 || G <= 0) return;
  const int64_t Cg = C / G, M = L * Cg;
  // per (n, c) partial sums of dy*xhat and dy, reduced over n at the end (fixed order)
  std::vector<double> pg(static_cast<size_t>(N * C), 0.0), pb(static_cast<size_t>(N * C), 0.0);
  parallel_for(N * G, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> gam(Cg), bet(Cg);
    for (int64_t ng = lo; ng < hi; ++ng) {
      const int64_t n = ng / G, g = ng % G, c0 = g * Cg;
      const float* xb = x + n * L * C + c0;
      const float* db = dy + n * L * C + c0;
      for (int64_t c = 0; c < Cg; ++c) {
        gam[c] = gamma ? gamma[c0 + c] : 1.f;
        bet[c] = beta ? beta[c0 + c] : 0.f;
      }
      double s = 0;
      for (int64_t l = 0; l < L; ++l)
        for (int64_t c = 0; c < Cg; ++c) s += xb[l * C + c];
      const double mean = M ? s / M : 0.0;
      double v = 0;
      for (int64_t l = 0; l < L; ++l)
        for (int64_t c = 0; c < Cg; ++c) {
          const double d = xb[l * C + c] - mean;
          v += d * d;
        }
      const double var = M ? v / M : 0.0;
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
      const float meanf = static_cast<float>(mean);
      double* sg = pg.data() + n * C + c0;
      double* sb = pb.data() + n * C + c0;
      double a = 0, b = 0;  // sum dxhat, sum dxhat * xhat
      for (int64_t l = 0; l < L; ++l) {
        const float* xr = xb + l * C;
        const float* dr = db + l * C;
        for (int64_t c = 0; c < Cg; ++c) {
          const float xh = (xr[c] - meanf) * rstd;
          float d = dr[c];
          if (silu) d *= silu_grad(xh * gam[c] + bet[c]);
          sg[c] += static_cast<double>(d) * xh;
          sb[c] += d;
          const float dxh = d * gam[c];
          a += dxh;
          b += static_cast<double>(dxh) * xh;
        }
      }
      if (!dx) continue;
      const float ma = M ? static_cast<float>(a / M) : 0.f, mb = M ? static_cast<float>(b / M) : 0.f;
      float* out = dx + n * L * C + c0;
      for (int64_t l = 0; l < L; ++l) {
        const float* xr = xb + l * C;
        const float* dr = db + l * C;
        float* o = out + l * C;
        for (int64_t c = 0; c < Cg; ++c) {
          const float xh = (xr[c] - meanf) * rstd;
          float d = dr[c];
          if (silu) d *= silu_grad(xh * gam[c] + bet[c]);
          o[c] = rstd * (d * gam[c] - ma - xh * mb);
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double sg = 0, sb = 0;
    for (int64_t n = 0; n < N; ++n) {
      sg += pg[static_cast<size_t>(n * C + c)];
      sb += pb[static_cast<size_t>(n * C + c)];
    }
    if (dgamma) dgamma[c] = static_cast<float>(sg);
    if (dbeta) dbeta[c] = static_cast<float>(sb);
  }
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
