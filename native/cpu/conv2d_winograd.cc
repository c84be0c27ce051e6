// Winograd F(4x4, 3x3) convolution for stride-1, dilation-1, 3x3 kernels (NHWC x, OHWI w).
// Each 4x4 output tile is A^T [ (G g G^T) (.) (B^T d B) ] A over a 6x6 input window d, so summed
// over input channels it becomes 36 independent GEMMs (one per point of the 6x6 transform):
//   M_a[tiles, K] = V_a[tiles, C] @ U_a[C, K]      a = 0..35
// doing 36 multiply-adds per tile per (c, k) instead of 16 * 9 = 144 (2.25x fewer after the
// partial edge tiles and transforms, up to 4x).
//
// Blocking keeps the scratch bounded whatever the image: output channels go in blocks whose
// transformed weights U (36 x C x Kb) fit kUBytes; within a block, work items of `tb` tiles (and,
// when tiles are few, a slice of the block's channels) run on the pool, each transforming its
// input tiles straight into the GEMM micro-kernel's A-panel layout (no packing pass), running the
// 36 GEMMs with the GEMM micro-kernel (gemm_internal.h) against U, which the weight transform
// wrote in the B-panel layout, and applying A^T plus bias and residual while writing y.
// The tile transforms are vectorised per ISA (conv2d_winograd_tiles.inc).
#include "conv2d_winograd.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "../core/allocator.h"
#include "../core/thread_pool.h"
#include "cpu_features.h"
#include "gemm_internal.h"

// 64-byte vectors passed between inline helpers; nothing crosses an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dk::cpu {
namespace wino {
namespace {
#include "conv2d_winograd_tiles.inc"
}  // namespace

Transforms transforms_generic() { return make_transforms(); }

namespace {

const Transforms& select_transforms() {
  static const Transforms t = [] {
#if defined(DK_X86)
    switch (cpu_features().isa) {
      case Isa::AVX512: return transforms_avx512();
      case Isa::AVX2: return transforms_avx2();
      default: break;
    }
#endif
    return transforms_generic();
  }();
  return t;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Scratch budgets in bytes: the transformed weights of one output-channel block (shared by the
// threads), and per thread the transformed inputs plus products of one work item.
int64_t budget(const char* env, int64_t dflt) {
  const char* s = std::getenv(env);  // tuning knob only
  const long long v = s ? std::atoll(s) : 0;
  return v > 0 ? int64_t(v) << 20 : dflt;
}

struct Plan {
  gemm::Kernel kr;
  int nt = 1;
  int64_t th = 0, tw = 0, T = 0;  // tiles down, across, in all
  int64_t kc = 0, nkc = 0;        // GEMM depth blocks over C
  int64_t kb = 0, nkb = 0;        // output-channel blocks (one U each)
  int64_t njp = 0;                // B panels per output-channel block
  int64_t tb = 0, ntp = 0, ntb = 0;  // tiles per work item, their A panels, tile blocks
  int64_t nks = 1, kp = 0;        // channel slices per block, channels per slice (multiple of nr)
  int64_t apanel = 0;             // floats per A panel slot
  bool shared_v = false;          // one tile block: its V is transformed once, shared by all items
  int64_t v_floats = 0, m_floats = 0, u_floats = 0;
};

Plan make_plan(const Conv2dParams& p) {
  Plan pl;
  pl.kr = gemm::select_kernel();
  const int64_t mr = pl.kr.mr, nr = pl.kr.nr;
  pl.nt = dk::num_threads();
  pl.th = ceil_div(p.P, kOut);
  pl.tw = ceil_div(p.Q, kOut);
  pl.T = p.N * pl.th * pl.tw;
  const int64_t kc_cap = nr >= 32 ? 384 : 256;
  pl.nkc = ceil_div(p.C, kc_cap);
  pl.kc = round_up(ceil_div(p.C, pl.nkc), 16);
  pl.apanel = round_up(gemm::a_panel_floats(pl.kr, pl.kc), 16);

  const int64_t u_bytes = budget("DIFFUSEKIT_WINO_U_MB", int64_t(24) << 20);
  const int64_t kb_cap = std::max(nr, u_bytes / (kPoints * 4 * pl.nkc * pl.kc) / nr * nr);
  pl.nkb = ceil_div(p.K, kb_cap);
  pl.kb = round_up(ceil_div(p.K, pl.nkb), nr);
  pl.njp = pl.kb / nr;

  // Tiles per item from the per-thread budget; with few tiles, one tile block and the channels
  // split over the threads pads fewer GEMM rows than tile blocks rounded up to mr each.
  const int64_t t_bytes = budget("DIFFUSEKIT_WINO_THREAD_MB", int64_t(6) << 20);
  int64_t tb = std::max(mr, t_bytes / (kPoints * 4 * (pl.nkc * pl.kc + pl.kb)) / mr * mr);
  tb = std::min(tb, round_up(pl.T, mr));
  int64_t ntb = ceil_div(pl.T, tb);
  pl.nks = 1;
  if (ntb < 2 * pl.nt && pl.nt > 1) {
    const int64_t split_rows = pl.nt * round_up(ceil_div(pl.T, pl.nt), mr);
    if (pl.njp >= pl.nt && round_up(pl.T, mr) <= split_rows && round_up(pl.T, mr) <= tb * 2) {
      tb = round_up(pl.T, mr);
      pl.nks = pl.nt;
    } else {
      ntb = std::max<int64_t>(ntb, pl.nt);
      tb = round_up(ceil_div(pl.T, ntb), mr);
    }
  }
  pl.tb = tb;
  pl.ntb = ceil_div(pl.T, tb);
  pl.ntp = tb / mr;
  pl.kp = round_up(ceil_div(pl.kb, pl.nks), nr);
  pl.nks = ceil_div(pl.kb, pl.kp);
  pl.shared_v = pl.ntb == 1 && (pl.nkb > 1 || pl.nks > 1);
  pl.v_floats = kPoints * pl.nkc * pl.ntp * pl.apanel;
  pl.m_floats = tb * kPoints * pl.kp;
  pl.u_floats = kPoints * pl.nkc * pl.njp * pl.kc * nr;
  return pl;
}

struct Scratch {
  float* p = nullptr;
  size_t bytes = 0;
  explicit Scratch(int64_t floats) : bytes(size_t(floats) * sizeof(float)) {
    p = static_cast<float*>(dk::cpu_alloc(bytes));
  }
  ~Scratch() { if (p) dk::cpu_free(p, bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

struct Conv {
  const Conv2dParams& p;
  const Plan& pl;
  const Transforms& tr;
  const float *x, *w, *bias, *residual;
  float* y;
  float* u;  // transformed weights of the current output-channel block

  float* u_panel(int64_t a, int64_t kcb, int64_t jp) const {
    return u + ((a * pl.nkc + kcb) * pl.njp + jp) * pl.kc * pl.kr.nr;
  }
  int64_t depth(int64_t kcb) const { return std::min(pl.kc, p.C - kcb * pl.kc); }

  // U for output channels [kb0, kb0 + kbn): B panel (kcb, jp) of every point a. The panel's
  // taps are first transposed to [tap][c][k] (9 small transposes instead of 36), so G g G^T runs
  // across output channels and writes each B-panel row [c][0..nr) in place. wt: 9 x kc x nr.
  void weight_panel(int64_t kb0, int64_t kbn, int64_t kcb, int64_t jp, float* wt) const {
    const int nr = pl.kr.nr;
    const int64_t c0 = kcb * pl.kc, kcn = depth(kcb);
    const int cols = int(std::min<int64_t>(nr, kbn - jp * nr));
    const float* rows[64];
    for (int t = 0; t < 9; ++t) {
      for (int j = 0; j < cols; ++j) rows[j] = w + (kb0 + jp * nr + j) * 9 * p.C + t * p.C + c0;
      pl.kr.pack_rows(kcn, rows, cols, nr, wt + t * kcn * nr);  // lanes past the block's K: zeros
    }
    const int64_t astride = pl.nkc * pl.njp * pl.kc * nr;
    float* u0 = u_panel(0, kcb, jp);
    for (int64_t c = 0; c < kcn; ++c) tr.weight(wt + c * nr, kcn * nr, nr, u0 + c * nr, astride);
  }

  void tile_origin(int64_t t, int64_t& n, int64_t& ty, int64_t& tx) const {
    n = t / (pl.th * pl.tw);
    const int64_t r = t % (pl.th * pl.tw);
    ty = r / pl.tw;
    tx = r % pl.tw;
  }

  // B^T d B of tiles [t0, t0 + tn) into v: A panel (a, kcb, tp) at slot (a * nkc + kcb) * ntp + tp.
  void input_tiles(int64_t t0, int64_t tn, float* v) const {
    const int mr = pl.kr.mr;
    const bool rows = pl.kr.a_rows;
    const int64_t astride = pl.nkc * pl.ntp * pl.apanel;
    const float* win[kPoints];
    const float* wc[kPoints];
    for (int64_t ti = 0; ti < round_up(tn, mr); ++ti) {
      const int64_t tp = ti / mr, row = ti % mr;
      if (ti >= tn) {  // rows past the last tile: zeros, so stale scratch never feeds the kernel
        for (int64_t kcb = 0; kcb < pl.nkc; ++kcb) {
          const int64_t kcn = depth(kcb);
          float* dst = v + (kcb * pl.ntp + tp) * pl.apanel + (rows ? row * gemm::a_pitch(kcn) : row);
          for (int a = 0; a < kPoints; ++a)
            for (int64_t c = 0; c < kcn; ++c) dst[a * astride + c * (rows ? 1 : mr)] = 0.f;
        }
        continue;
      }
      int64_t n, ty, tx;
      tile_origin(t0 + ti, n, ty, tx);
      const int64_t ih0 = ty * kOut - p.pad_h, iw0 = tx * kOut - p.pad_w;
      for (int i = 0; i < kTile; ++i)
        for (int j = 0; j < kTile; ++j) {
          const int64_t ih = ih0 + i, iw = iw0 + j;
          const bool in = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
          win[i * kTile + j] = in ? x + ((n * p.H + ih) * p.W + iw) * p.C : nullptr;
        }
      for (int64_t kcb = 0; kcb < pl.nkc; ++kcb) {
        const int64_t c0 = kcb * pl.kc, kcn = depth(kcb);
        for (int a = 0; a < kPoints; ++a) wc[a] = win[a] ? win[a] + c0 : nullptr;
        float* dst = v + (kcb * pl.ntp + tp) * pl.apanel + (rows ? row * gemm::a_pitch(kcn) : row);
        tr.input(wc, kcn, dst, astride, rows ? 1 : mr);
      }
    }
  }

  // The 36 GEMMs of a work item: m[tile][a][0..kn) for channels [k0, k0 + kn) of block kb0.
  void products(int64_t tn, int64_t kb0, int64_t k0, int64_t kn, const float* v, float* m) const {
    const int mr = pl.kr.mr, nr = pl.kr.nr;
    const int64_t ldm = kPoints * pl.kp;
    const int64_t jp0 = (k0 - kb0) / nr;
    const int64_t ntp = ceil_div(tn, mr);
    for (int a = 0; a < kPoints; ++a)
      for (int64_t kcb = 0; kcb < pl.nkc; ++kcb) {
        const int64_t kcn = depth(kcb);
        gemm::TileEpi e;
        e.beta = kcb == 0 ? 0.f : 1.f;
        for (int64_t jp = 0; jp * nr < kn; ++jp) {
          const float* bp = u_panel(a, kcb, jp0 + jp);
          const int n = int(std::min<int64_t>(nr, kn - jp * nr));
          for (int64_t tp = 0; tp < ntp; ++tp) {
            const float* ap = v + ((a * pl.nkc + kcb) * pl.ntp + tp) * pl.apanel;
            const int rows = int(std::min<int64_t>(mr, tn - tp * mr));
            pl.kr.kernel(kcn, ap, bp, m + tp * mr * ldm + a * pl.kp + jp * nr, ldm, rows, n, e);
          }
        }
      }
  }

  // A^T m A + bias + residual into y for tiles [t0, t0 + tn), channels [k0, k0 + kn).
  void output_tiles(int64_t t0, int64_t tn, int64_t k0, int64_t kn, const float* m) const {
    float* yp[kOut * kOut];
    const float* rp[kOut * kOut];
    for (int64_t ti = 0; ti < tn; ++ti) {
      int64_t n, ty, tx;
      tile_origin(t0 + ti, n, ty, tx);
      for (int i = 0; i < kOut; ++i)
        for (int j = 0; j < kOut; ++j) {
          const int64_t oh = ty * kOut + i, ow = tx * kOut + j;
          const bool in = oh < p.P && ow < p.Q;
          const int64_t off = ((n * p.P + oh) * p.Q + ow) * p.K + k0;
          yp[i * kOut + j] = in ? y + off : nullptr;
          rp[i * kOut + j] = in && residual ? residual + off : nullptr;
        }
      tr.output(m + ti * kPoints * pl.kp, pl.kp, yp, residual ? rp : nullptr, bias ? bias + k0 : nullptr, kn);
    }
  }
};

}  // namespace
}  // namespace wino

bool winograd_applies(const Conv2dParams& p) {
  return p.R == 3 && p.S == 3 && p.stride_h == 1 && p.stride_w == 1 && p.dil_h == 1 && p.dil_w == 1 &&
         p.P > 0 && p.Q > 0;
}

void conv2d_winograd(const Conv2dParams& p, const float* x, const float* w, const float* bias,
                     const float* residual, float* y) {
  using namespace wino;
  if (p.N * p.P * p.Q <= 0 || p.K <= 0) return;
  const Plan pl = make_plan(p);
  const int64_t wt_floats = int64_t(9) * pl.kr.nr * pl.kc;
  const int64_t v_own = pl.shared_v ? 0 : pl.v_floats;
  const int64_t per_thread = round_up(std::max(v_own, wt_floats), 16) + round_up(pl.m_floats, 16);
  Scratch uscr(pl.u_floats);
  Scratch tscr(per_thread * pl.nt + (pl.shared_v ? pl.v_floats : 0));
  float* v_shared = tscr.p + per_thread * pl.nt;
  Conv cv{p, pl, select_transforms(), x, w, bias, residual, y, uscr.p};
  if (pl.shared_v) {  // the few tiles' V once, A panels split over the threads
    const int64_t mr = pl.kr.mr, panels = ceil_div(pl.T, mr);
    dk::parallel_for(panels, 1, [&](int64_t lo, int64_t hi) {
      cv.input_tiles(lo * mr, std::min(hi * mr, pl.T) - lo * mr, v_shared + lo * pl.apanel);
    });
  }
  for (int64_t kb0 = 0; kb0 < p.K; kb0 += pl.kb) {
    const int64_t kbn = std::min(pl.kb, p.K - kb0);
    const int64_t wjobs = pl.nkc * ceil_div(kbn, pl.kr.nr);
    std::atomic<int64_t> next{0};
    dk::parallel_tasks(pl.nt, [&](int task, int) {
      float* wt = tscr.p + task * per_thread;
      for (int64_t j; (j = next.fetch_add(1)) < wjobs;)
        cv.weight_panel(kb0, kbn, j % pl.nkc, j / pl.nkc, wt);
    });
    const int64_t kslices = ceil_div(kbn, pl.kp);
    const int64_t jobs = pl.ntb * kslices;
    std::atomic<int64_t> next_item{0};
    dk::parallel_tasks(pl.nt, [&](int task, int) {
      float* own = tscr.p + task * per_thread;
      float* v = pl.shared_v ? v_shared : own;
      float* m = own + round_up(std::max(v_own, wt_floats), 16);
      int64_t last_tb = -1;
      for (int64_t j; (j = next_item.fetch_add(1)) < jobs;) {
        const int64_t tbi = j / kslices, ks = j % kslices;
        const int64_t t0 = tbi * pl.tb, tn = std::min(pl.tb, pl.T - t0);
        const int64_t k0 = kb0 + ks * pl.kp, kn = std::min(pl.kp, kb0 + kbn - k0);
        if (!pl.shared_v && tbi != last_tb) cv.input_tiles(t0, tn, v);  // slices of a tile block share it
        last_tb = tbi;
        cv.products(tn, kb0, k0, kn, v, m);
        cv.output_tiles(t0, tn, k0, kn, m);
      }
    });
  }
}

// ------------------------------------------------------------------ which path
namespace {
std::atomic<int> g_algo{-1};

ConvAlgo algo_from_env() {
  const char* s = std::getenv("DIFFUSEKIT_CONV_ALGO");
  if (s && std::strcmp(s, "direct") == 0) return ConvAlgo::Direct;
  if (s && std::strcmp(s, "winograd") == 0) return ConvAlgo::Winograd;
  return ConvAlgo::Auto;  // unset, "auto", or unrecognised
}
}  // namespace

void set_conv_algo(ConvAlgo a) { g_algo.store(int(a)); }

ConvAlgo conv_algo_setting() {
  int v = g_algo.load();
  if (v < 0) {
    v = int(algo_from_env());
    g_algo.store(v);
  }
  return ConvAlgo(v);
}

ConvAlgo conv2d_algo(const Conv2dParams& p) {
  if (!winograd_applies(p)) return ConvAlgo::Direct;
  const ConvAlgo s = conv_algo_setting();
  if (s != ConvAlgo::Auto) return s;
  // Measured on Zen 4 (bench conv group, CPU time): 2x8x8 (8 tiles) is ~1.3x slower than the
  // direct path, 2x16x16 (32 tiles) ~1.8x faster at 1280 channels. With few channels the
  // transforms outweigh the GEMMs they shrink (the RGB / 4-channel latent layers stay direct).
  const int64_t tiles = p.N * ((p.P + 3) / 4) * ((p.Q + 3) / 4);
  return p.C >= 32 && p.K >= 32 && tiles >= 28 ? ConvAlgo::Winograd : ConvAlgo::Direct;
}

}  // namespace dk::cpu
