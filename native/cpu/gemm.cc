// Float32 GEMM for the CPU backend: BLIS-style packing and cache blocking around a register-tiled
// micro-kernel chosen at run time (gemm_avx512.cc, gemm_avx2.cc, or the portable one below).
//
// Per thread, for its C rectangle:   for jc (NC cols): for pc (KC): pack B slab [KC x NC]
//                                       for ic (MC rows): pack A block [MC x KC]
//                                         for jr (NR): for ir (MR): micro-kernel
// The A block stays in L2 and a B micro-panel is reused by the MC/MR tiles below it. Threads own
// disjoint C rectangles (split along M or N, whichever wastes the least padding and packing), so
// they never synchronise, and each packs the B it needs once per call. While a block is being
// multiplied, the next A block and B slab are prefetched a slice per tile (Trickle), so packing
// rarely waits on DRAM. K blocks after the first accumulate into C; bias and residual are added
// by the last one. Fewer than 5 rows (GEMV-like) skip packing and use dot products.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "../core/allocator.h"
#include "../core/thread_pool.h"
#include "cpu_features.h"
#include "gemm_internal.h"
#include "kernels.h"

namespace dk::cpu::gemm {
namespace {

// ------------------------------------------------------------------ portable micro-kernel
// Plain loops the compiler vectorises (SSE2 on baseline x86-64, NEON on arm64).
#if defined(__aarch64__)
constexpr int kGenMR = 8, kGenNR = 12;
#else
constexpr int kGenMR = 4, kGenNR = 8;
#endif

void kernel_generic_tile(int64_t kc, const float* __restrict A, const float* __restrict B, float* C, int64_t ldc,
                         int m, int n, const TileEpi& e) {
  float acc[kGenMR][kGenNR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int i = 0; i < kGenMR; ++i) {
      const float a = A[i];
      for (int j = 0; j < kGenNR; ++j) acc[i][j] += a * B[j];
    }
    A += kGenMR;
    B += kGenNR;
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float r = e.alpha * acc[i][j];
      if (e.beta != 0.f) r += e.beta * C[i * ldc + j];
      if (e.bias) r += e.bias[j];
      if (e.residual) r += e.residual[i * e.ldr + j];
      C[i * ldc + j] = r;
    }
}

void pack_rows_generic(int64_t kc, const float* const* rows, int nrows, int width, float* dst) {
  for (int i = 0; i < width; ++i) {
    const float* src = i < nrows ? rows[i] : nullptr;
    if (src)
      for (int64_t k = 0; k < kc; ++k) dst[k * width + i] = src[k];
    else
      for (int64_t k = 0; k < kc; ++k) dst[k * width + i] = 0.f;
  }
}

// ------------------------------------------------------------------ blocking
Blocking blocking_for(const Kernel& kr) {
  Blocking b;
  if (kr.nr >= 32) {
    b = {384, 14 * 24, 2048};  // A block 336x384 floats = 504 KiB (half of a 1 MiB L2)
  } else if (kr.nr >= 16) {
    b = {256, 6 * 24, 2048};
  } else {
    b = {256, 64, 1024};
  }
  const Blocking& o = blocking_override();
  if (o.kc > 0) b.kc = o.kc;
  if (o.mc > 0) b.mc = o.mc;
  if (o.nc > 0) b.nc = o.nc;
  b.mc = std::max<int64_t>(kr.mr, b.mc / kr.mr * kr.mr);
  b.nc = std::max<int64_t>(kr.nr, b.nc / kr.nr * kr.nr);
  return b;
}

constexpr int64_t kL2SlabBytes = 512 << 10;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Splits [0, total) into blocks of at most `cap` (a multiple of `unit`), all about equal, so a
// K of 400 becomes 2 x 200 rather than 384 + 16.
inline int64_t even_block(int64_t total, int64_t cap, int64_t unit) {
  int64_t nb = ceil_div(total, cap);
  return std::min(cap, round_up(ceil_div(total, nb), unit));
}

// ------------------------------------------------------------------ one problem
struct Problem {
  int64_t M, N, K;
  float alpha, beta;
  const ASource* a;
  const float* B;
  int64_t ldb;
  bool transB;
  float* C;
  int64_t ldc;
  GemmEpilogue ep;
};

// Packs op(B)[k0:k0+kc, n0:n0+nc] as ceil(nc/nr) panels of [kc][nr].
void pack_b_slab(const Kernel& kr, const Problem& p, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) {
  const int nr = kr.nr;
  for (int64_t j0 = 0; j0 < nc; j0 += nr, dst += kc * nr) {
    const int cols = int(std::min<int64_t>(nr, nc - j0));
    if (p.transB) {
      const float* rows[64];
      for (int j = 0; j < cols; ++j) rows[j] = p.B + (n0 + j0 + j) * p.ldb + k0;
      kr.pack_rows(kc, rows, cols, nr, dst);
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = p.B + (k0 + k) * p.ldb + n0 + j0;
        float* d = dst + k * nr;
        std::memcpy(d, src, sizeof(float) * cols);
        for (int j = cols; j < nr; ++j) d[j] = 0.f;
      }
    }
  }
}

// Dot-product path for a handful of rows (GEMV-like): packing B would cost more than the product.
constexpr int64_t kSmallM = 4;

inline float epi_value(const Problem& p, float acc, int64_t i, int64_t j) {
  float r = p.alpha * acc;
  float* c = p.C + i * p.ldc + j;
  if (p.beta != 0.f) r += p.beta * *c;
  if (p.ep.bias) r += p.ep.bias[j];
  if (p.ep.residual) r += p.ep.residual[i * p.ep.ldr + j];
  return r;
}

inline float dot(const float* a, const float* b, int64_t K) {
  float s[8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int l = 0; l < 8; ++l) s[l] += a[k + l] * b[k + l];
  float t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; k < K; ++k) t += a[k] * b[k];
  return t;
}

void run_small_m(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (p.transB) {
    for (int64_t j = n0; j < n1; ++j) {
      const float* brow = p.B + j * p.ldb;
      for (int64_t i = m0; i < m1; ++i) p.C[i * p.ldc + j] = epi_value(p, dot(p.a->row(i), brow, p.K), i, j);
    }
    return;
  }
  constexpr int64_t kChunk = 256;
  float acc[kChunk];
  for (int64_t i = m0; i < m1; ++i) {
    const float* arow = p.a->row(i);
    for (int64_t j0 = n0; j0 < n1; j0 += kChunk) {
      const int64_t nc = std::min(kChunk, n1 - j0);
      for (int64_t j = 0; j < nc; ++j) acc[j] = 0.f;
      for (int64_t k = 0; k < p.K; ++k) {
        const float a = arow[k];
        const float* b = p.B + k * p.ldb + j0;
        for (int64_t j = 0; j < nc; ++j) acc[j] += a * b[j];
      }
      for (int64_t j = 0; j < nc; ++j) p.C[i * p.ldc + j0 + j] = epi_value(p, acc[j], i, j0 + j);
    }
  }
}

// Hands out a range of rows to prefetch a slice at a time, one slice per micro-kernel call, so
// the memory reads of the next packing overlap the arithmetic instead of stalling it.
struct Trickle {
  int64_t next = 0, end = 0, per = 0;
  void plan(int64_t begin, int64_t count, int64_t calls) {
    next = begin;
    end = begin + count;
    per = ceil_div(count, std::max<int64_t>(calls, 1));
  }
  template <class F>
  void step(F&& f) {
    if (next >= end) return;
    const int64_t n = std::min(per, end - next);
    f(next, n);
    next += n;
  }
};

// Serial blocked product for the C rectangle [m0,m1) x [n0,n1).
void run_rect(const Kernel& kr, const Blocking& bl, const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
              float* abuf, float* bbuf) {
  if (m0 >= m1 || n0 >= n1) return;
  if (p.K == 0) {
    for (int64_t i = m0; i < m1; ++i)
      for (int64_t j = n0; j < n1; ++j) p.C[i * p.ldc + j] = epi_value(p, 0.f, i, j);
    return;
  }
  if (p.M <= kSmallM && p.a->row(m0)) {
    run_small_m(p, m0, m1, n0, n1);
    return;
  }
  const int mr = kr.mr, nr = kr.nr;
  const int64_t kc_blk = even_block(p.K, bl.kc, 8);
  const int64_t mc_blk = even_block(m1 - m0, bl.mc, mr);
  // With a single A block (few rows) each B panel is used by only a few tiles, so the slab
  // should stay in L2 (half of it) rather than come back from L3; re-packing the small A block
  // per slab is cheap.
  int64_t nc_cap = bl.nc;
  if (m1 - m0 <= bl.mc) nc_cap = std::max<int64_t>(nr, std::min(bl.nc, kL2SlabBytes / (kc_blk * 4) / nr * nr));
  const int64_t nc_blk = even_block(n1 - n0, nc_cap, nr);
  const int64_t row_tiles = ceil_div(m1 - m0, mr) + ceil_div(m1 - m0, mc_blk);  // (upper bound)
  for (int64_t jc = n0; jc < n1; jc += nc_blk) {
    const int64_t nc = std::min(nc_blk, n1 - jc);
    for (int64_t pc = 0; pc < p.K; pc += kc_blk) {
      const int64_t kc = std::min(kc_blk, p.K - pc);
      pack_b_slab(kr, p, pc, kc, jc, nc, bbuf);
      // The next B slab (weights: usually in DRAM) trickles in while this one is used.
      int64_t bx_n = jc, bx_nc = 0, bx_k = pc + kc, bx_kc = 0;
      if (pc + kc < p.K) {
        bx_nc = nc;
        bx_kc = std::min(kc_blk, p.K - bx_k);
      } else if (jc + nc < n1) {
        bx_n = jc + nc;
        bx_nc = std::min(nc_blk, n1 - bx_n);
        bx_k = 0;
        bx_kc = std::min(kc_blk, p.K);
      }
      Trickle bpf;
      bpf.plan(0, p.transB ? bx_nc : bx_kc, row_tiles * ceil_div(nc, nr));
      auto prefetch_b = [&](int64_t r, int64_t cnt) {
        for (int64_t x = r; x < r + cnt; ++x) {
          if (p.transB)
            prefetch_span(p.B + (bx_n + x) * p.ldb + bx_k, bx_kc);
          else
            prefetch_span(p.B + (bx_k + x) * p.ldb + bx_n, bx_nc);
        }
      };

      const bool first = pc == 0, last = pc + kc == p.K;
      TileEpi base;
      base.alpha = p.alpha;
      base.beta = first ? p.beta : 1.f;
      for (int64_t ic = m0; ic < m1; ic += mc_blk) {
        const int64_t mc = std::min(mc_blk, m1 - ic);
        const int64_t apanel = a_panel_floats(kr, kc);
        for (int64_t i0 = 0; i0 < mc; i0 += mr)
          p.a->pack(kr, ic + i0, int(std::min<int64_t>(mr, mc - i0)), pc, kc, abuf + i0 / mr * apanel);
        // Likewise the next A block (activations), a few rows per tile.
        int64_t ax_i = m1, ax_rows = 0, ax_k = pc, ax_kc = kc;
        if (ic + mc < m1) {
          ax_i = ic + mc;
          ax_rows = std::min(mc_blk, m1 - ax_i);
        } else if (pc + kc < p.K) {
          ax_i = m0;
          ax_rows = std::min(mc_blk, m1 - m0);
          ax_k = pc + kc;
          ax_kc = std::min(kc_blk, p.K - ax_k);
        }
        Trickle apf;
        apf.plan(ax_i, ax_rows, ceil_div(nc, nr) * ceil_div(mc, mr));
        for (int64_t j0 = 0; j0 < nc; j0 += nr) {
          const int n = int(std::min<int64_t>(nr, nc - j0));
          const float* bp = bbuf + j0 * kc;
          TileEpi e = base;
          if (last && p.ep.bias) e.bias = p.ep.bias + jc + j0;
          for (int64_t i0 = 0; i0 < mc; i0 += mr) {
            apf.step([&](int64_t r, int64_t cnt) { p.a->prefetch(r, int(cnt), ax_k, ax_kc); });
            bpf.step(prefetch_b);
            const int m = int(std::min<int64_t>(mr, mc - i0));
            const int64_t row = ic + i0, col = jc + j0;
            if (last && p.ep.residual) {
              e.residual = p.ep.residual + row * p.ep.ldr + col;
              e.ldr = p.ep.ldr;
            }
            kr.kernel(kc, abuf + i0 / mr * apanel, bp, p.C + row * p.ldc + col, p.ldc, m, n, e);
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------ work split
struct Split {
  int tm = 1, tn = 1;
};

// Best tm x tn = parts grid for one problem: the busiest thread's padded FMAs plus its packing
// (a packed element costs about as much as 8 FMAs).
Split choose_split(const Kernel& kr, const Blocking& bl, int64_t M, int64_t N, int64_t K, int parts) {
  Split best;
  double best_cost = -1;
  for (int tm = 1; tm <= parts; ++tm) {
    if (parts % tm) continue;
    const int tn = parts / tm;
    const int64_t mt = ceil_div(ceil_div(M, kr.mr), tm) * kr.mr;
    const int64_t nt = ceil_div(ceil_div(N, kr.nr), tn) * kr.nr;
    if (M <= kSmallM && tm > 1) continue;
    double cost = double(mt) * nt * K + 8.0 * K * (nt + double(mt) * ceil_div(nt, bl.nc));
    if (best_cost < 0 || cost < best_cost) { best_cost = cost; best = {tm, tn}; }
  }
  return best;
}

struct RectBounds {
  int64_t m0, m1, n0, n1;
};

RectBounds rect_of(const Kernel& kr, const Split& s, int64_t M, int64_t N, int part) {
  const int im = part / s.tn, in = part % s.tn;
  const int64_t mtiles = ceil_div(M, kr.mr), ntiles = ceil_div(N, kr.nr);
  RectBounds r;
  r.m0 = std::min(M, mtiles * im / s.tm * kr.mr);
  r.m1 = std::min(M, mtiles * (im + 1) / s.tm * kr.mr);
  r.n0 = std::min(N, ntiles * in / s.tn * kr.nr);
  r.n1 = std::min(N, ntiles * (in + 1) / s.tn * kr.nr);
  return r;
}

struct Scratch {
  float* p = nullptr;
  size_t bytes = 0;
  explicit Scratch(size_t n) : bytes(n * sizeof(float)) { p = static_cast<float*>(dk::cpu_alloc(bytes)); }
  ~Scratch() { if (p) dk::cpu_free(p, bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Runs `batch` problems (get(b) builds problem b) on the pool. Each problem is cut into `parts`
// rectangles with parts = nthreads / gcd(batch, nthreads), so every thread gets the same number
// of equal pieces.
template <class GetProblem>
void run_batched(int64_t batch, const GetProblem& get) {
  const Kernel& kr = select_kernel();
  const Problem p0 = get(0);
  const Blocking bl = blocking_for(kr);
  const double fmas = double(batch) * p0.M * p0.N * std::max<int64_t>(p0.K, 1);
  int nt = fmas < double(1 << 19) ? 1 : dk::num_threads();
  int parts = nt / std::gcd<int64_t>(batch, nt);
  int64_t units = batch * parts;
  if (units < nt) nt = int(units);
  const Split split = choose_split(kr, bl, p0.M, p0.N, p0.K, parts);

  // Scratch for one thread: an A block and a B slab, sized for the largest rectangle.
  const int64_t kc = std::min(bl.kc, round_up(std::max<int64_t>(p0.K, 1), 8));
  const int64_t rect_n = round_up(ceil_div(p0.N, split.tn), kr.nr) + kr.nr;
  const int64_t a_elems = round_up(bl.mc / kr.mr * a_panel_floats(kr, kc) + 64, 16);
  const int64_t b_elems = round_up(std::min(bl.nc, rect_n) * kc + 64, 16);
  Scratch scratch(size_t(nt) * (a_elems + b_elems));

  dk::parallel_tasks(nt, [&](int t, int ntasks) {
    float* abuf = scratch.p + int64_t(t) * (a_elems + b_elems);
    float* bbuf = abuf + a_elems;
    const int64_t u0 = units * t / ntasks, u1 = units * (t + 1) / ntasks;
    for (int64_t u = u0; u < u1; ++u) {
      const Problem p = get(u / parts);
      const RectBounds r = rect_of(kr, split, p.M, p.N, int(u % parts));
      run_rect(kr, bl, p, r.m0, r.m1, r.n0, r.n1, abuf, bbuf);
    }
  });
}

// op(A) of a plain strided matrix.
struct PlainA final : ASource {
  const float* A;
  int64_t lda;
  bool transA;
  PlainA(const float* a, int64_t l, bool t) : A(a), lda(l), transA(t) {}
  const float* row(int64_t i) const override { return transA ? nullptr : A + i * lda; }
  void prefetch(int64_t i0, int rows, int64_t k0, int64_t kc) const override {
    if (!transA) {
      for (int i = 0; i < rows; ++i) prefetch_span(A + (i0 + i) * lda + k0, kc);
    } else {
      for (int64_t k = 0; k < kc; ++k) prefetch_span(A + (k0 + k) * lda + i0, rows);
    }
  }
  void pack(const Kernel& kr, int64_t i0, int rows, int64_t k0, int64_t kc, float* dst) const override {
    const int mr = kr.mr;
    if (!transA) {
      const float* ptr[kMaxMR];
      for (int i = 0; i < rows; ++i) ptr[i] = A + (i0 + i) * lda + k0;
      pack_a_columns(kr, kc, 0, kc, ptr, rows, dst);
      return;
    }
    if (kr.a_rows) {  // op(A) row i is column i of A: a strided gather per row
      const int64_t pitch = a_pitch(kc);
      for (int i = 0; i < mr; ++i) {
        float* d = dst + i * pitch;
        if (i < rows)
          for (int64_t k = 0; k < kc; ++k) d[k] = A[(k0 + k) * lda + i0 + i];
        else
          std::memset(d, 0, sizeof(float) * kc);
      }
      return;
    }
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = A + (k0 + k) * lda + i0;
      float* d = dst + k * mr;
      for (int i = 0; i < rows; ++i) d[i] = src[i];
      for (int i = rows; i < mr; ++i) d[i] = 0.f;
    }
  }
};

}  // namespace

void pack_a_columns(const Kernel& kr, int64_t kc, int64_t k0, int64_t len, const float* const* rows, int nrows,
                    float* panel) {
  if (!kr.a_rows) {
    kr.pack_rows(len, rows, nrows, kr.mr, panel + k0 * kr.mr);
    return;
  }
  const int64_t pitch = a_pitch(kc);
  for (int i = 0; i < kr.mr; ++i) {
    float* d = panel + i * pitch + k0;
    const float* src = i < nrows ? rows[i] : nullptr;
    if (src)
      std::memcpy(d, src, sizeof(float) * len);
    else
      std::memset(d, 0, sizeof(float) * len);
  }
}

Blocking& blocking_override() {
  static Blocking b;
  return b;
}

Kernel kernel_generic() {
  Kernel k;
  k.mr = kGenMR;
  k.nr = kGenNR;
  k.kernel = kernel_generic_tile;
  k.pack_rows = pack_rows_generic;
  k.name = "generic";
  return k;
}

static Kernel& kernel_slot() {
  static Kernel k = [] {
#if defined(DK_X86)
    switch (cpu_features().isa) {
      case Isa::AVX512: return kernel_avx512();
      case Isa::AVX2: return kernel_avx2();
      default: break;
    }
#endif
    return kernel_generic();
  }();
  return k;
}

const Kernel& select_kernel() { return kernel_slot(); }
void set_kernel_for_lab(const Kernel& k) { kernel_slot() = k; }

void gemm_driver(int64_t M, int64_t N, int64_t K, float alpha, const ASource& a, const float* B, int64_t ldb,
                 bool transB, float beta, float* C, int64_t ldc, const GemmEpilogue& ep) {
  if (M <= 0 || N <= 0) return;
  const Problem p{M, N, K, alpha, beta, &a, B, ldb, transB, C, ldc, ep};
  run_batched(1, [&](int64_t) { return p; });
}

}  // namespace dk::cpu::gemm

namespace dk::cpu {

void sgemm(int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, int64_t strideA, const float* B, int64_t ldb, int64_t strideB, float beta, float* C,
           int64_t ldc, int64_t strideC, const GemmEpilogue& ep) {
  using namespace gemm;
  if (batch <= 0 || M <= 0 || N <= 0) return;
  std::vector<PlainA> srcs;
  srcs.reserve(size_t(batch));
  for (int64_t b = 0; b < batch; ++b) srcs.emplace_back(A + b * strideA, lda, transA);
  run_batched(batch, [&](int64_t b) {
    GemmEpilogue e = ep;
    if (e.residual) e.residual += b * e.stride_residual;
    return Problem{M, N, K, alpha, beta, &srcs[size_t(b)], B + b * strideB, ldb, transB, C + b * strideC, ldc, e};
  });
}

}  // namespace dk::cpu
