// conv2d backward (NHWC activations, OHWI weights).
//
// Input gradient: dx[n,h,w,c] = sum over (p,q,r,s,k) with h = p*sh - ph + r*dh (w likewise) of
// dy[n,p,q,k] * w[k,r,s,c]. With r' = R-1-r this is a forward convolution of dy with the
// flipped, channel-swapped weight wt[c,r',s',k] = w[k,R-1-r',S-1-s',c] over a buffer where dy[p]
// sits at row (R-1)*dh - ph + p*sh: for stride 1 that buffer is dy zero-padded (the forward conv's
// own padding does it), otherwise dy is scattered into a zero buffer. Either way the heavy part is
// conv2d_nhwc's implicit GEMM.
//
// Weight gradient: dw[k, (r,s,c)] = sum over pixels m = (n,p,q) of dy[m,k] * patch[m, (r,s,c)],
// i.e. dy^T @ im2col(x). The patch rows are built in chunks of bounded size and each chunk is one
// sgemm accumulated into dw (beta = 1 after the first).
#include <algorithm>
#include <cstring>
#include <vector>

#include "../core/thread_pool.h"
#include "backward.h"

namespace dk::cpu {

void conv2d_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  const int64_t C = p.C, K = p.K, R = p.R, S = p.S;
  if (p.N <= 0 || p.H <= 0 || p.W <= 0 || C <= 0) return;
  if (K <= 0 || p.P <= 0 || p.Q <= 0) {
    std::memset(dx, 0, sizeof(float) * p.N * p.H * p.W * C);
    return;
  }
  // wt [C, R, S, K]
  std::vector<float> wt(static_cast<size_t>(C * R * S * K));
  parallel_for(C, 4, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) {
          float* dst = wt.data() + ((c * R + r) * S + s) * K;
          const float* src = w + ((R - 1 - r) * S + (S - 1 - s)) * C + c;
          for (int64_t k = 0; k < K; ++k) dst[k] = src[k * R * S * C];
        }
  });
  const int64_t off_h = (R - 1) * p.dil_h - p.pad_h, off_w = (S - 1) * p.dil_w - p.pad_w;
  Conv2dParams t{};
  t.N = p.N;
  t.C = K;
  t.K = C;
  t.R = R;
  t.S = S;
  t.stride_h = t.stride_w = 1;
  t.dil_h = p.dil_h;
  t.dil_w = p.dil_w;
  t.P = p.H;
  t.Q = p.W;
  if (p.stride_h == 1 && p.stride_w == 1 && off_h >= 0 && off_w >= 0 &&
      p.P + 2 * off_h - (R - 1) * p.dil_h == p.H && p.Q + 2 * off_w - (S - 1) * p.dil_w == p.W) {
    t.H = p.P;
    t.W = p.Q;
    t.pad_h = off_h;
    t.pad_w = off_w;
    conv2d_nhwc(t, dy, wt.data(), nullptr, nullptr, dx);
    return;
  }
  // General case: dy scattered into a zero buffer [N, Hb, Wb, K]; entries that would land outside
  // it only ever met the forward's padding and contribute nothing.
  const int64_t Hb = p.H + (R - 1) * p.dil_h, Wb = p.W + (S - 1) * p.dil_w;
  std::vector<float> buf(static_cast<size_t>(p.N * Hb * Wb * K), 0.f);
  parallel_for(p.N * p.P, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t np = lo; np < hi; ++np) {
      const int64_t n = np / p.P, pp = np % p.P;
      const int64_t hb = off_h + pp * p.stride_h;
      if (hb < 0 || hb >= Hb) continue;
      for (int64_t q = 0; q < p.Q; ++q) {
        const int64_t wb = off_w + q * p.stride_w;
        if (wb < 0 || wb >= Wb) continue;
        std::memcpy(buf.data() + ((n * Hb + hb) * Wb + wb) * K, dy + ((n * p.P + pp) * p.Q + q) * K,
                    sizeof(float) * K);
      }
    }
  });
  t.H = Hb;
  t.W = Wb;
  t.pad_h = t.pad_w = 0;
  conv2d_nhwc(t, buf.data(), wt.data(), nullptr, nullptr, dx);
}

void conv2d_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dw) {
  const int64_t M = p.N * p.P * p.Q, RSC = p.R * p.S * p.C;
  if (p.K <= 0 || RSC <= 0) return;
  if (M <= 0) {
    std::memset(dw, 0, sizeof(float) * p.K * RSC);
    return;
  }
  if (p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0 && p.P == p.H &&
      p.Q == p.W) {
    // dw [K, C] = dy^T [K, M] @ x [M, C]
    sgemm(1, true, false, p.K, p.C, M, 1.f, dy, p.K, 0, x, p.C, 0, 0.f, dw, p.C, 0);
    return;
  }
  // Chunks of about 4M floats (16 MB) of patches, at least 64 rows.
  const int64_t chunk = std::min<int64_t>(M, std::max<int64_t>(64, (int64_t(1) << 22) / RSC));
  std::vector<float> patches(static_cast<size_t>(chunk * RSC));
  const int64_t PQ = p.P * p.Q;
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t rows = std::min(chunk, M - m0);
    parallel_for(rows, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t m = m0 + i, n = m / PQ, pq = m % PQ;
        const int64_t h0 = (pq / p.Q) * p.stride_h - p.pad_h, w0 = (pq % p.Q) * p.stride_w - p.pad_w;
        float* row = patches.data() + i * RSC;
        for (int64_t r = 0; r < p.R; ++r) {
          const int64_t h = h0 + r * p.dil_h;
          for (int64_t s = 0; s < p.S; ++s) {
            const int64_t ww = w0 + s * p.dil_w;
            float* dst = row + (r * p.S + s) * p.C;
            if (h < 0 || h >= p.H || ww < 0 || ww >= p.W)
              std::memset(dst, 0, sizeof(float) * p.C);
            else
              std::memcpy(dst, x + ((n * p.H + h) * p.W + ww) * p.C, sizeof(float) * p.C);
          }
        }
      }
    });
    // dw [K, RSC] (+)= dy[m0:m0+rows]^T [K, rows] @ patches [rows, RSC]
    sgemm(1, true, false, p.K, RSC, rows, 1.f, dy + m0 * p.K, p.K, 0, patches.data(), RSC, 0, m0 == 0 ? 0.f : 1.f,
          dw, RSC, 0);
  }
}

void column_sum(const float* x, int64_t rows, int64_t C, float* out) {
  if (C <= 0) return;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), rows / 64)));
  std::vector<double> part(static_cast<size_t>(nt * C), 0.0);
  parallel_tasks(nt, [&](int t, int ntasks) {
    const int64_t lo = rows * t / ntasks, hi = rows * (t + 1) / ntasks;
    double* acc = part.data() + static_cast<int64_t>(t) * C;
    for (int64_t i = lo; i < hi; ++i) {
      const float* row = x + i * C;
      for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int t = 0; t < nt; ++t) s += part[static_cast<size_t>(t * C + c)];
    out[c] = static_cast<float>(s);
  }
}

}  // namespace dk::cpu
