// grad_emu_check: host-only check (no GPU needed) of the CUDA training kernels of
// conv2d_backward.cuh and attention_backward.cuh. The kernels' exact source is compiled for the
// host under a tiny CUDA emulator: each thread block runs its threads as coroutines (ucontext),
// __syncthreads is a barrier that switches between them (and fails loudly when only part of the
// block reaches it), __shared__ arrays are shared per block, warp shuffles exchange values
// through a block-wide barrier. The host-side planning (tiles, chunks, splits) is the same code
// the .cu files call. Results are compared with naive double-precision references written from
// the CPU kernels' contracts (native/cpu/backward.h), edge cases included.
//
// What it proves: index math, bounds, tiling, chunking, barriers, edge semantics. What it does
// not: anything about real GPU timing, memory-model races the emulator serialises, or launch
// configuration limits. Build and run from the repository root:
//   g++ -std=c++17 -O1 -Wno-unknown-pragmas -I native -o /tmp/grad_emu_check native/cuda/lab/grad_emu_check.cc && /tmp/grad_emu_check
#include <ucontext.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

// ---------------------------------------------------------------- the emulator
namespace emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct Thread {
  ucontext_t ctx;
  Dim3 tid;
  int linear = 0;
  bool done = false, waiting = false;
  std::vector<char> stack;
};

inline Dim3 g_block, g_grid, g_bdim;
inline Thread* g_cur = nullptr;
inline ucontext_t g_sched;
inline std::function<void()> g_body;
inline float g_xchg[1024];

inline void syncthreads() {
  g_cur->waiting = true;
  swapcontext(&g_cur->ctx, &g_sched);
}

inline float shfl_xor(float v, int o) {
  const int t = g_cur->linear;
  syncthreads();  // everyone has read the previous exchange
  g_xchg[t] = v;
  syncthreads();
  return g_xchg[t ^ o];
}

inline void trampoline() {
  g_body();
  g_cur->done = true;
  swapcontext(&g_cur->ctx, &g_sched);
}

// Runs body once per thread of every block of `grid`, blocks one after the other.
inline void launch(Dim3 grid, Dim3 block, std::function<void()> body) {
  g_grid = grid;
  g_bdim = block;
  g_body = std::move(body);
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  std::vector<Thread> th(nthreads);
  for (auto& t : th) t.stack.resize(256 * 1024);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        g_block = {bx, by, bz};
        for (int i = 0; i < nthreads; ++i) {
          Thread& t = th[i];
          t.linear = i;
          t.tid = {static_cast<unsigned>(i % block.x), static_cast<unsigned>((i / block.x) % block.y),
                   static_cast<unsigned>(i / (block.x * block.y))};
          t.done = t.waiting = false;
          getcontext(&t.ctx);
          t.ctx.uc_stack.ss_sp = t.stack.data();
          t.ctx.uc_stack.ss_size = t.stack.size();
          t.ctx.uc_link = nullptr;
          makecontext(&t.ctx, trampoline, 0);
        }
        for (;;) {
          for (auto& t : th) {
            if (t.done || t.waiting) continue;
            g_cur = &t;
            swapcontext(&g_sched, &t.ctx);
          }
          int done = 0, waiting = 0;
          for (auto& t : th) {
            done += t.done;
            waiting += t.waiting;
          }
          if (done == nthreads) break;
          if (done + waiting == nthreads && done > 0) {
            std::fprintf(stderr, "emu: barrier reached by %d of %d threads (block %u,%u,%u)\n", waiting, nthreads, bx,
                         by, bz);
            std::exit(2);
          }
          for (auto& t : th) t.waiting = false;
        }
      }
  g_cur = nullptr;
}

}  // namespace emu

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() emu::syncthreads()
#define __shfl_xor_sync(mask, v, o) emu::shfl_xor(v, o)
#define threadIdx (emu::g_cur->tid)
#define blockIdx (emu::g_block)
#define blockDim (emu::g_bdim)
#define gridDim (emu::g_grid)

#include "cuda/attention_backward.cuh"
#include "cuda/conv2d_backward.cuh"

// ---------------------------------------------------------------- checking
namespace {

int g_fail = 0, g_checks = 0;

void compare(const char* what, const std::string& tag, const std::vector<float>& got, const std::vector<double>& want,
             double rtol = 1e-4, double atol = 1e-5) {
  ++g_checks;
  if (got.size() != want.size()) {
    std::printf("FAIL %s %s: size %zu vs %zu\n", tag.c_str(), what, got.size(), want.size());
    ++g_fail;
    return;
  }
  double worst = 0;
  size_t wi = 0, bad = 0;
  double scale = 0;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    if (std::isinf(w) || std::isnan(w)) ok = (std::isnan(w) && std::isnan(g)) || g == w;
    else ok = std::fabs(g - w) <= atol + rtol * (std::fabs(w) + 1e-3 * scale);
    if (!ok) {
      ++bad;
      const double e = std::isfinite(g) ? std::fabs(g - w) : INFINITY;
      if (e >= worst) {
        worst = e;
        wi = i;
      }
    }
  }
  if (bad) {
    std::printf("FAIL %s %s: %zu of %zu wrong, worst at %zu: got %.8g want %.8g\n", tag.c_str(), what, bad, got.size(),
                wi, got[wi], want[wi]);
    ++g_fail;
  }
}

std::vector<float> rand_vec(size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// ------------------------------------------------ conv2d
struct ConvCase {
  int N, H, W, C, K, R, S, sh, sw, ph, pw, dh, dw;
};

void check_conv(const ConvCase& cc, std::mt19937& rng) {
  using dk::cpu::Conv2dParams;
  Conv2dParams p{};
  p.N = cc.N; p.H = cc.H; p.W = cc.W; p.C = cc.C; p.K = cc.K; p.R = cc.R; p.S = cc.S;
  p.stride_h = cc.sh; p.stride_w = cc.sw; p.pad_h = cc.ph; p.pad_w = cc.pw; p.dil_h = cc.dh; p.dil_w = cc.dw;
  p.P = (p.H + 2 * p.pad_h - (p.dil_h * (p.R - 1) + 1)) / p.stride_h + 1;
  p.Q = (p.W + 2 * p.pad_w - (p.dil_w * (p.S - 1) + 1)) / p.stride_w + 1;
  char tagbuf[200];
  std::snprintf(tagbuf, sizeof tagbuf, "conv N%d H%d W%d C%d K%d %dx%d s%d,%d p%d,%d d%d,%d", cc.N, cc.H, cc.W, cc.C,
                cc.K, cc.R, cc.S, cc.sh, cc.sw, cc.ph, cc.pw, cc.dh, cc.dw);
  const std::string tag = tagbuf;
  const int64_t nx = p.N * p.H * p.W * p.C, nw = p.K * p.R * p.S * p.C, ny = p.N * p.P * p.Q * p.K;
  auto x = rand_vec(nx, rng), w = rand_vec(nw, rng), dy = rand_vec(ny, rng);
  // references
  std::vector<double> rdx(nx, 0.0), rdw(nw, 0.0), rdb(p.K, 0.0);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t pp = 0; pp < p.P; ++pp)
      for (int64_t q = 0; q < p.Q; ++q)
        for (int64_t r = 0; r < p.R; ++r)
          for (int64_t s = 0; s < p.S; ++s) {
            const int64_t h = pp * p.stride_h - p.pad_h + r * p.dil_h, ww = q * p.stride_w - p.pad_w + s * p.dil_w;
            if (h < 0 || h >= p.H || ww < 0 || ww >= p.W) continue;
            for (int64_t k = 0; k < p.K; ++k) {
              const double g = dy[((n * p.P + pp) * p.Q + q) * p.K + k];
              for (int64_t c = 0; c < p.C; ++c) {
                rdx[((n * p.H + h) * p.W + ww) * p.C + c] += g * w[((k * p.R + r) * p.S + s) * p.C + c];
                rdw[((k * p.R + r) * p.S + s) * p.C + c] += g * x[((n * p.H + h) * p.W + ww) * p.C + c];
              }
            }
          }
  for (int64_t m = 0; m < p.N * p.P * p.Q; ++m)
    for (int64_t k = 0; k < p.K; ++k) rdb[k] += dy[m * p.K + k];

  namespace cbw = dk::cuda::cbw;
  const cbw::Geom g = cbw::geom_of(p, "check");
  // dx
  std::vector<float> dx(nx, NAN);
  {
    const int64_t M = p.N * p.H * p.W;
    const emu::Dim3 grid{static_cast<unsigned>((M + 63) / 64), static_cast<unsigned>((p.C + 63) / 64), 1};
    emu::launch(grid, {256, 1, 1}, [&] { cbw::dx_kernel(g, dy.data(), w.data(), dx.data()); });
  }
  compare("dx", tag, dx, rdx);
  // dw at the planned split count (for an 8-SM and a 132-SM card) and with forced splits
  const int64_t M = p.N * p.P * p.Q, RSC = p.R * p.S * p.C;
  for (int sms : {1, 8, 132}) {
    int64_t per = 0;
    const int64_t splits = cbw::plan_dw_splits(M, p.K, RSC, sms, &per);
    std::vector<float> part(static_cast<size_t>(splits * p.K * RSC), NAN), dw(nw, NAN);
    const emu::Dim3 grid{static_cast<unsigned>((RSC + 63) / 64), static_cast<unsigned>((p.K + 63) / 64),
                         static_cast<unsigned>(splits)};
    if (splits == 1) {
      emu::launch(grid, {256, 1, 1}, [&] { cbw::dw_kernel(g, dy.data(), x.data(), dw.data(), per, 0); });
    } else {
      const int64_t n = p.K * RSC;
      emu::launch(grid, {256, 1, 1}, [&] { cbw::dw_kernel(g, dy.data(), x.data(), part.data(), per, n); });
      emu::launch({3, 1, 1}, {256, 1, 1}, [&] { cbw::sum_splits_kernel(part.data(), static_cast<int>(splits), n, dw.data()); });
    }
    compare(("dw splits=" + std::to_string(splits)).c_str(), tag, dw, rdw);
  }
  // column sum of dy [M, K]
  for (int sms : {1, 132}) {
    int64_t per = 0;
    const int64_t chunks = cbw::plan_colsum_chunks(M, p.K, sms, &per);
    std::vector<double> part(static_cast<size_t>(chunks * p.K), NAN);
    std::vector<float> db(p.K, NAN);
    emu::launch({static_cast<unsigned>((p.K + 31) / 32), static_cast<unsigned>(chunks), 1}, {32, 8, 1},
                [&] { cbw::colsum_partial_kernel(dy.data(), M, p.K, per, part.data()); });
    emu::launch({2, 1, 1}, {256, 1, 1}, [&] { cbw::colsum_final_kernel(part.data(), static_cast<int>(chunks), p.K, db.data()); });
    compare(("db chunks=" + std::to_string(chunks)).c_str(), tag, db, rdb);
  }
}

// dw with an explicit split of a long pixel range (several splits, a ragged last one).
void check_dw_forced_splits(std::mt19937& rng) {
  ConvCase cc{2, 23, 21, 5, 7, 3, 3, 1, 1, 1, 1, 1, 1};
  dk::cpu::Conv2dParams p{};
  p.N = cc.N; p.H = cc.H; p.W = cc.W; p.C = cc.C; p.K = cc.K; p.R = 3; p.S = 3;
  p.stride_h = p.stride_w = 1; p.pad_h = p.pad_w = 1; p.dil_h = p.dil_w = 1; p.P = p.H; p.Q = p.W;
  const int64_t nx = p.N * p.H * p.W * p.C, nw = p.K * 9 * p.C, M = p.N * p.P * p.Q, RSC = 9 * p.C;
  auto x = rand_vec(nx, rng), dy = rand_vec(M * p.K, rng);
  std::vector<double> rdw(nw, 0.0);
  for (int64_t m = 0; m < M; ++m) {
    const int64_t n = m / (p.P * p.Q), pp = (m / p.Q) % p.P, q = m % p.Q;
    for (int r = 0; r < 3; ++r)
      for (int s = 0; s < 3; ++s) {
        const int64_t h = pp - 1 + r, ww = q - 1 + s;
        if (h < 0 || h >= p.H || ww < 0 || ww >= p.W) continue;
        for (int64_t k = 0; k < p.K; ++k)
          for (int64_t c = 0; c < p.C; ++c)
            rdw[((k * 3 + r) * 3 + s) * p.C + c] += double(dy[m * p.K + k]) * x[((n * p.H + h) * p.W + ww) * p.C + c];
      }
  }
  namespace cbw = dk::cuda::cbw;
  const cbw::Geom g = cbw::geom_of(p, "check");
  const int64_t per = 160, splits = (M + per - 1) / per, n = p.K * RSC;
  std::vector<float> part(static_cast<size_t>(splits * n), NAN), dw(nw, NAN);
  emu::launch({static_cast<unsigned>((RSC + 63) / 64), 1, static_cast<unsigned>(splits)}, {256, 1, 1},
              [&] { cbw::dw_kernel(g, dy.data(), x.data(), part.data(), per, n); });
  emu::launch({2, 1, 1}, {256, 1, 1}, [&] { cbw::sum_splits_kernel(part.data(), static_cast<int>(splits), n, dw.data()); });
  compare("dw forced splits", "conv 23x21 C5 K7 per=160", dw, rdw);
}

// ------------------------------------------------ attention
struct AttnCase {
  const char* name;
  int B, Nq, Nk, H, D, Dv;
  bool causal;
  int mask;          // 0 none, 1 [B,1,Nq,Nk] with -inf entries and a fully masked row, 2 [Nk] (one row for all),
                     // 3 [B,H,Nq,Nk] with -inf entries
  int q_extra = 0;   // extra elements per q row (a view into a wider tensor)
};

void check_attention(const AttnCase& tc, std::mt19937& rng) {
  using dk::cpu::AttentionParams;
  const int B = tc.B, Nq = tc.Nq, Nk = tc.Nk, H = tc.H, D = tc.D, Dv = tc.Dv;
  AttentionParams p{};
  p.B = B; p.Nq = Nq; p.Nk = Nk; p.heads = H; p.D = D; p.Dv = Dv;
  p.scale = 1.f / std::sqrt(static_cast<float>(D));
  p.causal = tc.causal;
  p.q_row = int64_t(H) * D + tc.q_extra; p.q_batch = p.q_row * Nq;
  p.k_row = int64_t(H) * D; p.k_batch = p.k_row * Nk;
  p.v_row = int64_t(H) * Dv; p.v_batch = p.v_row * Nk;
  p.o_row = int64_t(H) * Dv; p.o_batch = p.o_row * Nq;
  auto q = rand_vec(p.q_batch * B, rng, -2.f, 2.f), k = rand_vec(p.k_batch * B, rng, -2.f, 2.f),
       v = rand_vec(p.v_batch * B, rng), dout = rand_vec(p.o_batch * B, rng);
  std::vector<float> mask;
  if (tc.mask == 1) {
    mask = rand_vec(int64_t(B) * Nq * Nk, rng, -3.f, 1.f);
    std::uniform_int_distribution<int> coin(0, 4);
    for (auto& m : mask)
      if (coin(rng) == 0) m = -INFINITY;
    if (Nq > 2)
      for (int j = 0; j < Nk; ++j) mask[(int64_t(B - 1) * Nq + 2) * Nk + j] = -INFINITY;  // fully masked row
    p.mask = mask.data(); p.mask_b = int64_t(Nq) * Nk; p.mask_h = 0; p.mask_q = Nk;
  } else if (tc.mask == 3) {
    mask = rand_vec(int64_t(B) * H * Nq * Nk, rng, -2.f, 2.f);
    std::uniform_int_distribution<int> coin(0, 3);
    for (auto& m : mask)
      if (coin(rng) == 0) m = -INFINITY;
    p.mask = mask.data(); p.mask_b = int64_t(H) * Nq * Nk; p.mask_h = int64_t(Nq) * Nk; p.mask_q = Nk;
  } else if (tc.mask == 2) {
    mask = rand_vec(Nk, rng, -2.f, 0.f);
    mask[0] = -INFINITY;
    p.mask = mask.data(); p.mask_b = p.mask_h = p.mask_q = 0;
  }
  const int off = Nk - Nq;
  // reference: scores in float as the kernels form them, everything after in double
  auto score = [&](int b, int h, int i, int j, bool& seen) -> float {
    seen = !tc.causal || j <= i + off;
    if (!seen) return -INFINITY;
    float dot = 0;
    double dd = 0;
    for (int d = 0; d < D; ++d) dd += double(q[b * p.q_batch + i * p.q_row + h * D + d]) * k[b * p.k_batch + j * p.k_row + h * D + d];
    dot = static_cast<float>(dd);
    float s = dot * p.scale;
    if (p.mask) {
      const float m = p.mask[b * p.mask_b + h * p.mask_h + int64_t(i) * p.mask_q + j];
      s += m < -FLT_MAX ? -FLT_MAX : m;
    }
    return s;
  };
  std::vector<double> rout(p.o_batch * B, 0.0), rlse(int64_t(B) * H * Nq), rdq(int64_t(B) * Nq * H * D, 0.0),
      rdk(int64_t(B) * Nk * H * D, 0.0), rdv(int64_t(B) * Nk * H * Dv, 0.0);
  std::vector<float> lse_f(rlse.size());
  std::vector<double> rmax(rlse.size()), rsum(rlse.size());  // exact P = exp(s - max) / sum
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::vector<float> s(Nk);
      std::vector<double> P(static_cast<size_t>(Nq) * Nk, 0.0), dS(static_cast<size_t>(Nq) * Nk, 0.0);
      for (int i = 0; i < Nq; ++i) {
        float m = -INFINITY;
        for (int j = 0; j < Nk; ++j) {
          bool seen;
          s[j] = score(b, h, i, j, seen);
          m = std::max(m, s[j]);
        }
        const int64_t li = (int64_t(b) * H + h) * Nq + i;
        double* o = &rout[b * p.o_batch + i * p.o_row + h * Dv];
        if (m == -INFINITY) {
          rlse[li] = INFINITY;
          lse_f[li] = INFINITY;
          continue;
        }
        double sum = 0;
        for (int j = 0; j < Nk; ++j) sum += std::exp(double(s[j]) - double(m));  // s - m rounded as in float? (0 for equal)
        // the kernels' lse is a float: m + log(sum) rounded (a row masked everywhere keeps -FLT_MAX)
        lse_f[li] = m + static_cast<float>(std::log(sum));
        rlse[li] = double(m) + std::log(sum);
        rmax[li] = m;
        rsum[li] = sum;
        for (int j = 0; j < Nk; ++j) {
          const double pj = std::exp(double(s[j]) - double(m)) / sum;
          for (int d = 0; d < Dv; ++d) o[d] += pj * v[b * p.v_batch + j * p.v_row + h * Dv + d];
        }
      }
      // backward with the exact probabilities exp(s - max) / sum (a row masked everywhere: 1/n,
      // which the kernels recover although their lse, even in double, rounds to -FLT_MAX)
      for (int i = 0; i < Nq; ++i) {
        const int64_t li = (int64_t(b) * H + h) * Nq + i;
        const float* dO = &dout[b * p.o_batch + i * p.o_row + h * Dv];
        const double* o = &rout[b * p.o_batch + i * p.o_row + h * Dv];
        double delta = 0;
        for (int d = 0; d < Dv; ++d) delta += double(dO[d]) * o[d];
        for (int j = 0; j < Nk; ++j) {
          bool seen;
          const float sj = score(b, h, i, j, seen);
          if (!seen || std::isinf(lse_f[li])) continue;
          const double pij = std::exp(double(sj) - rmax[li]) / rsum[li];
          double dp = 0;
          for (int d = 0; d < Dv; ++d) dp += double(dO[d]) * v[b * p.v_batch + j * p.v_row + h * Dv + d];
          P[size_t(i) * Nk + j] = pij;
          dS[size_t(i) * Nk + j] = rmax[li] == -FLT_MAX ? 0.0 : pij * (dp - delta);  // masked everywhere: V only
        }
      }
      for (int i = 0; i < Nq; ++i)
        for (int j = 0; j < Nk; ++j) {
          const double pij = P[size_t(i) * Nk + j], ds = dS[size_t(i) * Nk + j];
          if (pij == 0 && ds == 0) continue;
          for (int d = 0; d < D; ++d) {
            rdq[(int64_t(b) * Nq + i) * H * D + h * D + d] += p.scale * ds * k[b * p.k_batch + j * p.k_row + h * D + d];
            rdk[(int64_t(b) * Nk + j) * H * D + h * D + d] += p.scale * ds * q[b * p.q_batch + i * p.q_row + h * D + d];
          }
          for (int d = 0; d < Dv; ++d)
            rdv[(int64_t(b) * Nk + j) * H * Dv + h * Dv + d] += pij * dout[b * p.o_batch + i * p.o_row + h * Dv + d];
        }
    }

  namespace abw = dk::cuda::abw;
  const std::string tag = tc.name;
  abw::Args a = abw::make_args(p, "check");
  const int64_t BH = int64_t(B) * H;
  auto chunks_for = [](int64_t width) {
    const int jd = abw::jd_for(width);
    return std::max<int64_t>(1, (width + 16 * jd - 1) / (16 * jd));
  };
  // Runs KERNEL<JD> for `width` like DK_ABW_LAUNCH.
  auto run = [&](int which, int64_t width, int64_t tiles) {
    const int jd = abw::jd_for(width);
    a.chunks = static_cast<int>(chunks_for(width));
    const unsigned g = static_cast<unsigned>(tiles * BH * a.chunks);
    if (g == 0) return;
    emu::launch({g, 1, 1}, {256, 1, 1}, [&] {
      auto go = [&](auto jdc) {
        constexpr int J = decltype(jdc)::value;
        if (which == 0) abw::fwd_kernel<J>(a);
        else if (which == 1) abw::dkv_kernel<J>(a);
        else abw::dq_kernel<J>(a);
      };
      switch (jd) {
        case 2: go(std::integral_constant<int, 2>()); break;
        case 4: go(std::integral_constant<int, 4>()); break;
        case 5: go(std::integral_constant<int, 5>()); break;
        default: go(std::integral_constant<int, 10>()); break;
      }
    });
  };
  std::vector<float> out(p.o_batch * B, NAN), lse(int64_t(B) * H * Nq, NAN);
  a.q = q.data(); a.k = k.data(); a.v = v.data(); a.out = out.data(); a.lse_out = lse.data();
  run(0, std::max(Dv, 1), a.qtiles);
  compare("out", tag, out, rout);
  compare("lse", tag, lse, rlse);
  if (Nk <= 0) return;  // the backward's Nk == 0 path is a memset on the host side
  // the backward reads the kernel's own forward results, as the autograd does
  std::vector<float> delta(BH * Nq, NAN), dq(rdq.size(), NAN), dk(rdk.size(), NAN), dv(rdv.size(), NAN);
  a.o = out.data(); a.dout = dout.data(); a.lse = lse.data(); a.delta = delta.data();
  a.dq = dq.data(); a.dk = dk.data(); a.dv = dv.data();
  const int64_t rows = BH * Nq;
  emu::launch({static_cast<unsigned>(std::min<int64_t>(5, (rows + 7) / 8)), 1, 1}, {256, 1, 1},
              [&] { abw::delta_kernel(a, delta.data(), rows); });
  run(1, std::max(D, Dv), a.ktiles);
  run(2, D, a.qtiles);
  compare("dq", tag, dq, rdq, 2e-4, 2e-5);
  compare("dk", tag, dk, rdk, 2e-4, 2e-5);
  compare("dv", tag, dv, rdv, 2e-4, 2e-5);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const ConvCase convs[] = {
      {2, 7, 7, 3, 5, 3, 3, 1, 1, 1, 1, 1, 1},      // odd sizes, 3x3 pad 1
      {1, 9, 8, 4, 6, 3, 3, 2, 2, 1, 1, 1, 1},      // stride 2 downsample
      {1, 5, 5, 70, 66, 1, 1, 1, 1, 0, 0, 1, 1},    // 1x1, several channel tiles
      {1, 9, 9, 3, 8, 3, 3, 1, 1, 2, 2, 2, 2},      // dilation 2
      {1, 5, 6, 3, 4, 3, 3, 1, 1, 3, 3, 1, 1},      // padding 3 > dil*(R-1)
      {2, 11, 10, 5, 3, 5, 5, 3, 2, 0, 1, 1, 1},    // 5x5, stride 3x2, pad 0x1
      {1, 7, 7, 6, 5, 1, 1, 2, 2, 0, 0, 1, 1},      // 1x1 stride 2: dx has holes
      {1, 6, 9, 2, 3, 2, 3, 1, 2, 4, 2, 3, 1},      // anisotropic, pad > dil*(R-1) on h
      {3, 12, 12, 20, 70, 3, 3, 1, 1, 1, 1, 1, 1},  // batch 3, K over one tile
  };
  for (const auto& c : convs) check_conv(c, rng);
  check_dw_forced_splits(rng);
  std::printf("conv: %d checks, %d failures\n", g_checks, g_fail);

  const AttnCase attns[] = {
      {"self B2 H2 N70 D17", 2, 70, 70, 2, 17, 17, false, 0},
      {"cross D3 Dv5 Nq5 Nk130", 1, 5, 130, 2, 3, 5, false, 0},
      {"causal Nq70 > Nk40 D8", 1, 70, 40, 2, 8, 8, true, 0},
      {"causal Nq40 < Nk100 D8", 1, 40, 100, 1, 8, 8, true, 0},
      {"mask [B,1,Nq,Nk] -inf + masked row, q view", 2, 9, 77, 2, 40, 40, false, 1, 5},
      {"mask [Nk] causal Nq=Nk=66", 1, 66, 66, 2, 12, 20, true, 2},
      {"D160 Dv160 N65", 1, 65, 65, 1, 160, 160, false, 0},
      {"D200 Dv40 (2 chunks) Nq20 Nk30", 1, 20, 30, 1, 200, 40, false, 0},
      {"D40 Dv170 (2 chunks)", 1, 33, 17, 1, 40, 170, false, 0},
      {"D1 Dv1", 2, 7, 9, 3, 1, 1, false, 0},
      {"D64 Dv80 N129", 1, 129, 65, 1, 64, 80, false, 0},
      {"Nk0", 1, 5, 0, 2, 4, 4, false, 0},
      {"mask [B,H,Nq,Nk] causal Nq130 Nk100, k/q views", 2, 130, 100, 3, 9, 7, true, 3, 2},
      {"mask [B,1,Nq,Nk] causal Nq=Nk=9 with masked row", 1, 9, 9, 2, 5, 6, true, 1},
      {"Nq1 Nk1 causal", 1, 1, 1, 1, 3, 3, true, 0},
  };
  const int c0 = g_checks, f0 = g_fail;
  for (const auto& c : attns) {
    check_attention(c, rng);
    std::printf("  %s done\n", c.name);
    std::fflush(stdout);
  }
  std::printf("attention: %d checks, %d failures\n", g_checks - c0, g_fail - f0);
  std::printf(g_fail ? "FAILED\n" : "all passed\n");
  return g_fail ? 1 : 0;
}
