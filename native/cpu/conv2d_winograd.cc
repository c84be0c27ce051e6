// Winograd F(4x4, 3x3) convolution for stride-1, dilation-1, 3x3 kernels (NHWC x, OHWI w).
// Each 4x4 output tile is A^T [ (G g G^T) (.) (B^T d B) ] A over a 6x6 input window d, so summed
// over input channels it becomes 36 independent GEMMs (one per point of the 6x6 transform):
//   M_a[tiles, K] = V_a[tiles, C] @ U_a[C, K]      a = 0..35
// doing 36 multiply-adds per tile per (c, k) instead of 16 * 9 = 144 (2.25x fewer after the
// partial edge tiles and transforms, up to 4x).
//
// The blocking plan and threaded walk are shared with the bf16 path (conv2d_winograd_plan.h); this
// file supplies the fp32 layouts: A panels of the GEMM micro-kernel (gemm_internal.h) for the
// transformed inputs, its B panels for U.
// The tile transforms are vectorised per ISA (conv2d_winograd_tiles.inc).
#include "conv2d_winograd.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "conv2d_winograd_plan.h"
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

int64_t apanel_bytes_f32(int64_t kc) { return round_up(gemm::a_panel_floats(gemm::select_kernel(), kc), 16) * 4; }

Operands operands_f32() {
  const gemm::Kernel kr = gemm::select_kernel();
  return Operands{kF43, kr.mr, kr.nr, kr.nr >= 32 ? 384 : 256, 4, 4, apanel_bytes_f32, 6};
}

struct Conv {
  const Conv2dParams& p;
  const Plan& pl;
  const gemm::Kernel& kr;
  const Transforms& tr;
  const float *x, *w, *bias, *residual;
  float* y;
  char* u = nullptr;  // transformed weights of the current output-channel block

  float* u_panel(int64_t a, int64_t kcb, int64_t jp) const {
    return reinterpret_cast<float*>(u) + ((a * pl.nkc + kcb) * pl.njp + jp) * pl.kc * pl.nr;
  }
  int64_t depth(int64_t kcb) const { return std::min(pl.kc, p.C - kcb * pl.kc); }
  int64_t apanel() const { return pl.apanel / 4; }

  // U for output channels [kb0, kb0 + kbn): B panel (kcb, jp) of every point a. The panel's
  // taps are first transposed to [tap][c][k] (9 small transposes instead of 36), so G g G^T runs
  // across output channels and writes each B-panel row [c][0..nr) in place. wt: 9 x kc x nr.
  void weight_panel(int64_t kb0, int64_t kbn, int64_t kcb, int64_t jp, char* wtb) const {
    float* wt = reinterpret_cast<float*>(wtb);
    const int nr = pl.nr;
    const int64_t c0 = kcb * pl.kc, kcn = depth(kcb);
    const int cols = int(std::min<int64_t>(nr, kbn - jp * nr));
    const float* rows[64];
    for (int t = 0; t < 9; ++t) {
      for (int j = 0; j < cols; ++j) rows[j] = w + (kb0 + jp * nr + j) * 9 * p.C + t * p.C + c0;
      kr.pack_rows(kcn, rows, cols, nr, wt + t * kcn * nr);  // lanes past the block's K: zeros
    }
    const int64_t astride = pl.nkc * pl.njp * pl.kc * nr;
    float* u0 = u_panel(0, kcb, jp);
    for (int64_t c = 0; c < kcn; ++c) tr.weight(wt + c * nr, kcn * nr, nr, u0 + c * nr, astride);
  }

  // B^T d B of tiles [t0, t0 + tn) into v: A panel (a, kcb, tp) at slot (a * nkc + kcb) * ntp + tp.
  void input_tiles(int64_t t0, int64_t tn, char* vb) const {
    float* v = reinterpret_cast<float*>(vb);
    const int mr = pl.mr;
    const bool rows = kr.a_rows;
    const int64_t astride = pl.nkc * pl.ntp * apanel();
    const float* win[kPoints];
    const float* wc[kPoints];
    for (int64_t ti = 0; ti < round_up(tn, mr); ++ti) {
      const int64_t tp = ti / mr, row = ti % mr;
      if (ti >= tn) {  // rows past the last tile: zeros, so stale scratch never feeds the kernel
        for (int64_t kcb = 0; kcb < pl.nkc; ++kcb) {
          const int64_t kcn = depth(kcb);
          float* dst = v + (kcb * pl.ntp + tp) * apanel() + (rows ? row * gemm::a_pitch(kcn) : row);
          for (int a = 0; a < kPoints; ++a)
            for (int64_t c = 0; c < kcn; ++c) dst[a * astride + c * (rows ? 1 : mr)] = 0.f;
        }
        continue;
      }
      tile_window(pl, p, x, t0 + ti, win);
      for (int64_t kcb = 0; kcb < pl.nkc; ++kcb) {
        const int64_t c0 = kcb * pl.kc, kcn = depth(kcb);
        for (int a = 0; a < kPoints; ++a) wc[a] = win[a] ? win[a] + c0 : nullptr;
        float* dst = v + (kcb * pl.ntp + tp) * apanel() + (rows ? row * gemm::a_pitch(kcn) : row);
        tr.input(wc, kcn, dst, astride, rows ? 1 : mr);
      }
    }
  }

  // The 36 GEMMs of a work item: m[tile][a][0..kn) for channels [k0, k0 + kn) of block kb0.
  void products(int64_t tn, int64_t kb0, int64_t k0, int64_t kn, const char* vb, float* m) const {
    const float* v = reinterpret_cast<const float*>(vb);
    const int mr = pl.mr, nr = pl.nr;
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
            const float* ap = v + ((a * pl.nkc + kcb) * pl.ntp + tp) * apanel();
            const int rows = int(std::min<int64_t>(mr, tn - tp * mr));
            kr.kernel(kcn, ap, bp, m + tp * mr * ldm + a * pl.kp + jp * nr, ldm, rows, n, e);
          }
        }
      }
  }

  // A^T m A + bias + residual into y for tiles [t0, t0 + tn), channels [k0, k0 + kn).
  void output_tiles(int64_t t0, int64_t tn, int64_t k0, int64_t kn, const float* m) const {
    float* yp[kOut * kOut];
    const float* rp[kOut * kOut];
    for (int64_t ti = 0; ti < tn; ++ti) {
      tile_outputs(pl, p, y, residual, t0 + ti, k0, yp, rp);
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
  const Plan pl = make_plan(p, operands_f32());
  const gemm::Kernel kr = gemm::select_kernel();
  Conv cv{p, pl, kr, select_transforms(), x, w, bias, residual, y};
  run(p, pl, cv);
}

// ------------------------------------------------------------------ which path
namespace {
std::atomic<int> g_algo{-1};

ConvAlgo algo_from_env() {
  const char* s = std::getenv("DIFFUSEKIT_CONV_ALGO");
  if (s && std::strcmp(s, "direct") == 0) return ConvAlgo::Direct;
  if (s && std::strcmp(s, "winograd") == 0) return ConvAlgo::Winograd;
  if (s && *s && std::strcmp(s, "auto") != 0)  // a typo should not silently benchmark the wrong path
    std::fprintf(stderr, "diffusekit: DIFFUSEKIT_CONV_ALGO=%s is not direct, winograd or auto; using auto\n", s);
  return ConvAlgo::Auto;
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

ConvAlgo choose_conv_algo(const Conv2dParams& p, int tile, int64_t min_tiles) {
  if (!winograd_applies(p)) return ConvAlgo::Direct;
  const ConvAlgo s = conv_algo_setting();
  if (s != ConvAlgo::Auto) return s;
  if (p.algo != int(ConvAlgo::Auto)) return ConvAlgo(p.algo);
  // With few channels the transforms outweigh the GEMMs they shrink (the RGB / 4-channel latent
  // layers stay direct); with few tiles the GEMMs are too short to pay for them.
  const int64_t tiles = p.N * ((p.P + tile - 1) / tile) * ((p.Q + tile - 1) / tile);
  return p.C >= 32 && p.K >= 32 && tiles >= min_tiles ? ConvAlgo::Winograd : ConvAlgo::Direct;
}

ConvAlgo conv2d_algo(const Conv2dParams& p) {
  // F(4,3), measured on Zen 4 (bench conv group, CPU time): 2x8x8 (8 tiles) is ~1.3x slower than
  // the direct path, 2x16x16 (32 tiles) ~1.8x faster at 1280 channels.
  return choose_conv_algo(p, 4, 28);
}

}  // namespace dk::cpu
