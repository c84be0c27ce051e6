// What the fp32 and bf16 Winograd convolutions share (conv2d_winograd.cc, conv2d_winograd_bf16.cc):
// the tile geometry, the blocking plan and the threaded driver. Each dtype supplies a Conv with
// the four steps (weight_panel, input_tiles, products, output_tiles) on its own layouts; the
// plan sizes everything in bytes so one rule serves fp32 and bf16 operands.
//
// Blocking keeps the scratch bounded whatever the image: output channels go in blocks whose
// transformed weights U (points x C x Kb) fit DIFFUSEKIT_WINO_U_MB (24 MiB); within a block, work
// items of `tb` tiles (their V and fp32 products within DIFFUSEKIT_WINO_THREAD_MB per thread) (and, when tiles are few, a slice of the block's channels) run on the pool,
// each transforming its input tiles straight into the micro-kernel's A-panel layout, running the
// per-point GEMMs against U (written by the weight transform in the B-panel layout), and
// applying A^T plus bias and residual while writing y.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "../core/allocator.h"
#include "../core/thread_pool.h"
#include "kernels.h"

namespace dk::cpu::wino {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// F(m x m, 3x3): output tile edge m, input tile edge m + 2, (m + 2)^2 GEMMs.
struct Geometry {
  int out, tile, points;
};
constexpr Geometry kF43{4, 6, 36};
constexpr Geometry kF23{2, 4, 16};

// What the plan needs to know about the dtype and its micro-kernel.
struct Operands {
  Geometry g;
  int mr, nr;
  int64_t kc_cap;                    // GEMM depth block cap (channels)
  int64_t v_bytes, u_bytes;          // bytes per transformed input / weight element
  int64_t (*apanel_bytes)(int64_t);  // bytes of one A-panel slot of depth kc (64-byte multiple)
  int64_t thread_mb;                 // default per-thread scratch budget (DIFFUSEKIT_WINO_THREAD_MB)
};

struct Plan {
  Geometry g;
  int mr = 0, nr = 0;
  int nt = 1;
  int64_t th = 0, tw = 0, T = 0;     // tiles down, across, in all
  int64_t kc = 0, nkc = 0;           // GEMM depth blocks over C
  int64_t kb = 0, nkb = 0;           // output-channel blocks (one U each)
  int64_t njp = 0;                   // B panels per output-channel block
  int64_t tb = 0, ntp = 0, ntb = 0;  // tiles per work item, their A panels, tile blocks
  int64_t nks = 1, kp = 0;           // channel slices per block, channels per slice (multiple of nr)
  int64_t apanel = 0;                // bytes per A panel slot
  bool shared_v = false;             // one tile block: its V is transformed once, shared by all items
  int64_t v_size = 0, m_size = 0, u_size = 0, wt_size = 0;  // bytes: V, products (fp32), U, tap scratch
};

Plan make_plan(const Conv2dParams& p, const Operands& o);

// Scratch memory from the CPU allocator (64-byte aligned).
struct Scratch {
  char* p = nullptr;
  size_t bytes = 0;
  explicit Scratch(int64_t n) : bytes(size_t(n)) { p = static_cast<char*>(dk::cpu_alloc(bytes)); }
  ~Scratch() { if (p) dk::cpu_free(p, bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Tile t -> image n, tile row ty, tile column tx.
inline void tile_origin(const Plan& pl, int64_t t, int64_t& n, int64_t& ty, int64_t& tx) {
  n = t / (pl.th * pl.tw);
  const int64_t r = t % (pl.th * pl.tw);
  ty = r / pl.tw;
  tx = r % pl.tw;
}

// Input window of tile t: win[i * tile + j] at channel 0 of pixel (i, j), or null (padding).
template <class T>
void tile_window(const Plan& pl, const Conv2dParams& p, const T* x, int64_t t, const T** win) {
  int64_t n, ty, tx;
  tile_origin(pl, t, n, ty, tx);
  const int64_t ih0 = ty * pl.g.out - p.pad_h, iw0 = tx * pl.g.out - p.pad_w;
  for (int i = 0; i < pl.g.tile; ++i)
    for (int j = 0; j < pl.g.tile; ++j) {
      const int64_t ih = ih0 + i, iw = iw0 + j;
      const bool in = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      win[i * pl.g.tile + j] = in ? x + ((n * p.H + ih) * p.W + iw) * p.C : nullptr;
    }
}

// Output pixels of tile t at channel k0: y[i * out + j] (null outside the image), and the
// residual's (all null when there is none).
template <class T>
void tile_outputs(const Plan& pl, const Conv2dParams& p, T* y, const T* res, int64_t t, int64_t k0, T** yp,
                  const T** rp) {
  int64_t n, ty, tx;
  tile_origin(pl, t, n, ty, tx);
  for (int i = 0; i < pl.g.out; ++i)
    for (int j = 0; j < pl.g.out; ++j) {
      const int64_t oh = ty * pl.g.out + i, ow = tx * pl.g.out + j;
      const bool in = oh < p.P && ow < p.Q;
      const int64_t off = ((n * p.P + oh) * p.Q + ow) * p.K + k0;
      yp[i * pl.g.out + j] = in ? y + off : nullptr;
      rp[i * pl.g.out + j] = in && res ? res + off : nullptr;
    }
}

// The threaded walk. Conv provides (pointers into the scratch it is handed):
//   u: char* (set here: U of the current output-channel block)
//   weight_panel(kb0, kbn, kcb, jp, char* wt)  input_tiles(t0, tn, char* v)
//   products(tn, kb0, k0, kn, const char* v, float* m)  output_tiles(t0, tn, k0, kn, const float* m)
template <class Conv>
void run(const Conv2dParams& p, const Plan& pl, Conv& cv) {
  const int64_t v_own = pl.shared_v ? 0 : pl.v_size;
  const int64_t head = round_up(std::max(v_own, pl.wt_size), 64);
  const int64_t per_thread = head + round_up(pl.m_size, 64);
  Scratch uscr(pl.u_size);
  Scratch tscr(per_thread * pl.nt + (pl.shared_v ? pl.v_size : 0));
  char* v_shared = tscr.p + per_thread * pl.nt;
  cv.u = uscr.p;
  if (pl.shared_v) {  // the few tiles' V once, A panels split over the threads
    const int64_t mr = pl.mr, panels = ceil_div(pl.T, mr);
    dk::parallel_for(panels, 1, [&](int64_t lo, int64_t hi) {
      cv.input_tiles(lo * mr, std::min(hi * mr, pl.T) - lo * mr, v_shared + lo * pl.apanel);
    });
  }
  for (int64_t kb0 = 0; kb0 < p.K; kb0 += pl.kb) {
    const int64_t kbn = std::min(pl.kb, p.K - kb0);
    const int64_t wjobs = pl.nkc * ceil_div(kbn, pl.nr);
    std::atomic<int64_t> next{0};
    dk::parallel_tasks(pl.nt, [&](int task, int) {
      char* wt = tscr.p + task * per_thread;
      for (int64_t j; (j = next.fetch_add(1)) < wjobs;) cv.weight_panel(kb0, kbn, j % pl.nkc, j / pl.nkc, wt);
    });
    const int64_t kslices = ceil_div(kbn, pl.kp);
    const int64_t jobs = pl.ntb * kslices;
    std::atomic<int64_t> next_item{0};
    dk::parallel_tasks(pl.nt, [&](int task, int) {
      char* own = tscr.p + task * per_thread;
      char* v = pl.shared_v ? v_shared : own;
      float* m = reinterpret_cast<float*>(own + head);
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

}  // namespace dk::cpu::wino
