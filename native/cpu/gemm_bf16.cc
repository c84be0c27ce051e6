// bfloat16 GEMM driver: the blocking of gemm.cc (pack a B slab [KC x NC], then A blocks
// [MC x KC] that stay in L2, micro-kernel over the tiles) around the vdpbf16ps kernel of
// gemm_bf16_avx512.cc. Sums are fp32 throughout: when K takes several KC blocks, the running
// sums of a thread's C rectangle wait in an fp32 buffer and only the last block rounds to bf16.
// Threads own disjoint C rectangles, as in gemm.cc. Fewer than 5 rows skip packing (dot
// products). Without AVX512_BF16 everything goes through gemm_bf16_fallback.cc instead.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "../core/allocator.h"
#include "../core/half.h"
#include "../core/thread_pool.h"
#include "cpu_features.h"
#include "gemm_bf16_internal.h"

namespace dk::cpu::gemm16 {
namespace {

// In bf16 elements: the A block (336 x 768 x 2 B = 504 KiB) and B micro-panel (48 KiB) take the
// same bytes as the fp32 kernel's 336 x 384 floats, which were tuned for Zen 4's 1 MiB L2.
constexpr int64_t kKC = 768, kMC = 14 * 24, kNC = 2048;
constexpr int64_t kSmallM = 4;
constexpr int64_t kL2SlabBytes = 512 << 10;
constexpr int64_t kAccBytes = 8 << 20;     // cap of a thread's fp32 running-sum buffer
constexpr int64_t kWholeKBytes = 4 << 20;  // cap of a whole-K B slab (whole-K order)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t even_block(int64_t total, int64_t cap, int64_t unit) {
  const int64_t nb = ceil_div(total, cap);
  return std::min(cap, round_up(ceil_div(total, nb), unit));
}

const Kernel& kernel() {
  static const Kernel k = kernel_avx512bf16();
  return k;
}

struct Problem {
  int64_t M, N, K;
  float alpha;
  const ASource* a;
  const uint16_t* B;
  int64_t ldb;
  bool transB;
  uint16_t* C;
  int64_t ldc;
  GemmEpilogueBf16 ep;
};

// Scalar epilogue (few-rows path and K = 0).
inline void store(const Problem& p, float acc, int64_t i, int64_t j) {
  float r = p.alpha * acc;
  if (p.ep.bias) r += bf16_to_f32(p.ep.bias[j]);
  if (p.ep.residual) r += bf16_to_f32(p.ep.residual[i * p.ep.ldr + j]);
  p.C[i * p.ldc + j] = f32_to_bf16(r);
}

void run_small_m(const Kernel& kr, const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (p.transB) {
    for (int64_t j = n0; j < n1; ++j)
      for (int64_t i = m0; i < m1; ++i) store(p, kr.dot(p.a->row(i), p.B + j * p.ldb, p.K), i, j);
    return;
  }
  constexpr int64_t kChunk = 256;
  float acc[kChunk];
  for (int64_t i = m0; i < m1; ++i)
    for (int64_t j0 = n0; j0 < n1; j0 += kChunk) {
      const int64_t nc = std::min(kChunk, n1 - j0);
      std::fill(acc, acc + nc, 0.f);
      kr.row_times(p.a->row(i), p.K, p.B + j0, p.ldb, nc, acc);
      for (int64_t j = 0; j < nc; ++j) store(p, acc[j], i, j0 + j);
    }
}

// Packs op(B)[k0:k0+kc, n0:n0+nc] as ceil(nc/nr) panels of [kp][nr] pairs.
void pack_b_slab(const Kernel& kr, const Problem& p, int64_t k0, int64_t kc, int64_t n0, int64_t nc, uint32_t* dst) {
  const int nr = kr.nr;
  const int64_t kp = (kc + 1) / 2;
  for (int64_t j0 = 0; j0 < nc; j0 += nr, dst += kp * nr) {
    const int cols = int(std::min<int64_t>(nr, nc - j0));
    if (p.transB) {
      const uint16_t* rows[64];
      for (int j = 0; j < cols; ++j) rows[j] = p.B + (n0 + j0 + j) * p.ldb + k0;
      kr.pack_bt(kc, rows, cols, dst);
    } else {
      kr.pack_b(kc, p.B + k0 * p.ldb + n0 + j0, p.ldb, cols, dst);
    }
  }
}

struct Buffers {
  uint32_t* a;  // A block
  uint32_t* b;  // B slab (one K block, or all of them in whole-K order)
  float* acc;   // fp32 running sums when K has several blocks
};

// How a rectangle is walked when K takes several blocks.
//  Rect order (jc, pc, ic): as gemm.cc; the running sums of the whole rectangle wait in acc.
//  Whole-K order (jc, ic, pc): the B slab holds every K block (packed once per jc), and each A
//  block is finished before the next, so acc is only one block of rows (stays in L2). Used when
//  the whole-K slab of the rectangle's columns fits kWholeKBytes.
struct Plan {
  int64_t nc_cap;
  bool whole_k;
};

// Packs A block [ic, ic+mc) x [pc, pc+kc) and runs its tiles against the B slab columns
// [jc, jc+nc); acc (if any) is addressed from row acc_row0 at leading dim ldacc.
void multiply_block(const Kernel& kr, const Problem& p, int64_t ic, int64_t mc, int64_t pc, int64_t kc, int64_t jc,
                    int64_t nc, const uint32_t* bslab, const Buffers& buf, int64_t acc_row0, int64_t ldacc) {
  const int mr = kr.mr, nr = kr.nr;
  const int64_t kp = (kc + 1) / 2;
  const bool first = pc == 0, last = pc + kc == p.K;
  const int64_t pitch = gemm::a_pitch(kp), apanel = mr * pitch;
  for (int64_t i0 = 0; i0 < mc; i0 += mr) {
    uint16_t* panel = reinterpret_cast<uint16_t*>(buf.a + i0 / mr * apanel);
    p.a->pack(mr, ic + i0, int(std::min<int64_t>(mr, mc - i0)), pc, kc, panel, 2 * pitch);
    if (kc & 1)
      for (int i = 0; i < mr; ++i) panel[i * 2 * pitch + kc] = 0;
  }
  for (int64_t j0 = 0; j0 < nc; j0 += nr) {
    const int n = int(std::min<int64_t>(nr, nc - j0));
    const uint32_t* bp = bslab + j0 * kp;
    Tile t;
    t.alpha = p.alpha;
    t.last = last;
    t.acc_load = !first;
    if (last && p.ep.bias) t.bias = p.ep.bias + jc + j0;
    for (int64_t i0 = 0; i0 < mc; i0 += mr) {
      const int m = int(std::min<int64_t>(mr, mc - i0));
      const int64_t row = ic + i0, col = jc + j0;
      if (!(first && last)) {
        t.acc = buf.acc + (row - acc_row0) * ldacc + j0;
        t.ldacc = ldacc;
      }
      if (last) {
        t.C = p.C + row * p.ldc + col;
        t.ldc = p.ldc;
        if (p.ep.residual) {
          t.residual = p.ep.residual + row * p.ep.ldr + col;
          t.ldr = p.ep.ldr;
        }
      }
      kr.kernel(kp, buf.a + i0 / mr * apanel, bp, m, n, t);
    }
  }
}

// Serial blocked product for the C rectangle [m0,m1) x [n0,n1).
void run_rect(const Kernel& kr, const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1, const Plan& plan,
              const Buffers& buf) {
  if (m0 >= m1 || n0 >= n1) return;
  if (p.K == 0) {
    for (int64_t i = m0; i < m1; ++i)
      for (int64_t j = n0; j < n1; ++j) store(p, 0.f, i, j);
    return;
  }
  if (p.M <= kSmallM && p.a->row(m0)) {
    run_small_m(kr, p, m0, m1, n0, n1);
    return;
  }
  const int64_t kc_blk = even_block(p.K, kKC, 16);  // even: pairs never straddle blocks
  const int64_t mc_blk = even_block(m1 - m0, kMC, kr.mr);
  const int64_t nc_blk = even_block(n1 - n0, plan.nc_cap, kr.nr);
  for (int64_t jc = n0; jc < n1; jc += nc_blk) {
    const int64_t nc = std::min(nc_blk, n1 - jc);
    const int64_t nc_pad = round_up(nc, kr.nr);
    if (plan.whole_k) {
      for (int64_t pc = 0; pc < p.K; pc += kc_blk)
        pack_b_slab(kr, p, pc, std::min(kc_blk, p.K - pc), jc, nc, buf.b + pc / 2 * nc_pad);
      for (int64_t ic = m0; ic < m1; ic += mc_blk) {
        const int64_t mc = std::min(mc_blk, m1 - ic);
        for (int64_t pc = 0; pc < p.K; pc += kc_blk)
          multiply_block(kr, p, ic, mc, pc, std::min(kc_blk, p.K - pc), jc, nc, buf.b + pc / 2 * nc_pad, buf, ic,
                         nc_blk);
      }
      continue;
    }
    for (int64_t pc = 0; pc < p.K; pc += kc_blk) {
      const int64_t kc = std::min(kc_blk, p.K - pc);
      pack_b_slab(kr, p, pc, kc, jc, nc, buf.b);
      for (int64_t ic = m0; ic < m1; ic += mc_blk)
        multiply_block(kr, p, ic, std::min(mc_blk, m1 - ic), pc, kc, jc, nc, buf.b, buf, m0, nc_blk);
    }
  }
}

// ------------------------------------------------------------------ work split (as gemm.cc)
struct Split {
  int tm = 1, tn = 1;
};

Split choose_split(const Kernel& kr, int64_t M, int64_t N, int64_t K, int parts) {
  Split best;
  double best_cost = -1;
  for (int tm = 1; tm <= parts; ++tm) {
    if (parts % tm) continue;
    const int tn = parts / tm;
    if (M <= kSmallM && tm > 1) continue;
    const int64_t mt = ceil_div(ceil_div(M, kr.mr), tm) * kr.mr;
    const int64_t nt = ceil_div(ceil_div(N, kr.nr), tn) * kr.nr;
    // padded products plus packing (a packed element costs about as much as 8 products)
    const double cost = double(mt) * nt * K + 8.0 * K * (nt + double(mt) * ceil_div(nt, kNC));
    if (best_cost < 0 || cost < best_cost) { best_cost = cost; best = {tm, tn}; }
  }
  return best;
}

struct Rect {
  int64_t m0, m1, n0, n1;
};

Rect rect_of(const Kernel& kr, const Split& s, int64_t M, int64_t N, int part) {
  const int im = part / s.tn, in = part % s.tn;
  const int64_t mtiles = ceil_div(M, kr.mr), ntiles = ceil_div(N, kr.nr);
  return {std::min(M, mtiles * im / s.tm * kr.mr), std::min(M, mtiles * (im + 1) / s.tm * kr.mr),
          std::min(N, ntiles * in / s.tn * kr.nr), std::min(N, ntiles * (in + 1) / s.tn * kr.nr)};
}

struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Scratch(size_t n) : bytes(n) { p = dk::cpu_alloc(bytes); }
  ~Scratch() { if (p) dk::cpu_free(p, bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace

void pack_a_rows(int mr, const uint16_t* const* rows, int nrows, int64_t off, int64_t len, uint16_t* panel,
                 int64_t pitch) {
  for (int i = 0; i < mr; ++i) {
    uint16_t* d = panel + i * pitch + off;
    const uint16_t* src = i < nrows ? rows[i] : nullptr;
    if (src)
      std::memcpy(d, src, sizeof(uint16_t) * len);
    else
      std::memset(d, 0, sizeof(uint16_t) * len);
  }
}

void gemm_driver(int64_t batch, int64_t M, int64_t N, int64_t K, float alpha, const ASource* const* a,
                 const uint16_t* B, int64_t ldb, int64_t strideB, bool transB, uint16_t* C, int64_t ldc,
                 int64_t strideC, const GemmEpilogueBf16& ep) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  const Kernel& kr = kernel();
  auto get = [&](int64_t b) {
    GemmEpilogueBf16 e = ep;
    if (e.residual) e.residual += b * e.stride_residual;
    return Problem{M, N, K, alpha, a[b], B + b * strideB, ldb, transB, C + b * strideC, ldc, e};
  };
  const double products = double(batch) * M * N * std::max<int64_t>(K, 1);
  int nt = products < double(1 << 19) ? 1 : dk::num_threads();
  const int parts = nt / std::gcd<int64_t>(batch, nt);
  const int64_t units = batch * parts;
  if (units < nt) nt = int(units);
  const Split split = choose_split(kr, M, N, K, parts);

  // Per-thread scratch, sized for the largest rectangle.
  const int64_t rect_m = ceil_div(ceil_div(M, kr.mr), split.tm) * kr.mr;
  const int64_t rect_n = ceil_div(ceil_div(N, kr.nr), split.tn) * kr.nr;
  const int64_t kc = std::min(kKC, round_up(std::max<int64_t>(K, 1), 16)), kp = kc / 2;
  const bool multi_k = K > kc;
  const int64_t k_pad = round_up(std::max<int64_t>(K, 1), 16);  // >= the pairs of all K blocks x 2
  Plan plan{kNC, multi_k && k_pad * 2 * std::min(kNC, rect_n) <= kWholeKBytes};
  // A single A block uses each B panel only a few times: keep the slab in (half of) L2.
  if (rect_m <= kMC && !plan.whole_k)
    plan.nc_cap = std::max<int64_t>(kr.nr, std::min(plan.nc_cap, kL2SlabBytes / (kc * 2) / kr.nr * kr.nr));
  const int64_t acc_rows = plan.whole_k ? kMC : rect_m;
  if (multi_k) plan.nc_cap = std::max<int64_t>(kr.nr, std::min(plan.nc_cap, kAccBytes / (acc_rows * 4) / kr.nr * kr.nr));
  const int64_t nc_max = std::min(plan.nc_cap, rect_n);
  const int64_t a_words = round_up(kMC / kr.mr * kr.mr * gemm::a_pitch(kp) + 64, 16);
  const int64_t b_words = round_up(nc_max * (plan.whole_k ? k_pad / 2 : kp) + 64, 16);
  const int64_t acc_floats = multi_k ? round_up(acc_rows * nc_max + 64, 16) : 0;
  const int64_t per_thread = a_words + b_words + acc_floats;  // 4-byte units
  Scratch scratch(size_t(nt) * size_t(per_thread) * 4);

  dk::parallel_tasks(nt, [&](int t, int ntasks) {
    uint32_t* base = static_cast<uint32_t*>(scratch.p) + int64_t(t) * per_thread;
    const Buffers buf{base, base + a_words, multi_k ? reinterpret_cast<float*>(base + a_words + b_words) : nullptr};
    const int64_t u0 = units * t / ntasks, u1 = units * (t + 1) / ntasks;
    for (int64_t u = u0; u < u1; ++u) {
      const Problem p = get(u / parts);
      const Rect r = rect_of(kr, split, p.M, p.N, int(u % parts));
      run_rect(kr, p, r.m0, r.m1, r.n0, r.n1, plan, buf);
    }
  });
}

}  // namespace dk::cpu::gemm16

namespace dk::cpu {
namespace {

// op(A) of a plain strided bf16 matrix.
struct PlainA final : gemm16::ASource {
  const uint16_t* A;
  int64_t lda;
  bool transA;
  PlainA(const uint16_t* a, int64_t l, bool t) : A(a), lda(l), transA(t) {}
  const uint16_t* row(int64_t i) const override { return transA ? nullptr : A + i * lda; }
  void pack(int mr, int64_t i0, int rows, int64_t k0, int64_t kc, uint16_t* panel, int64_t pitch) const override {
    if (!transA) {
      const uint16_t* ptr[gemm::kMaxMR];
      for (int i = 0; i < rows; ++i) ptr[i] = A + (i0 + i) * lda + k0;
      gemm16::pack_a_rows(mr, ptr, rows, 0, kc, panel, pitch);
      return;
    }
    // op(A) row i is column i of A: a strided gather per row
    for (int i = 0; i < mr; ++i) {
      uint16_t* d = panel + i * pitch;
      if (i < rows)
        for (int64_t k = 0; k < kc; ++k) d[k] = A[(k0 + k) * lda + i0 + i];
      else
        std::memset(d, 0, sizeof(uint16_t) * kc);
    }
  }
};

}  // namespace

void gemm_bf16(int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const uint16_t* A, int64_t lda, int64_t strideA, const uint16_t* B, int64_t ldb, int64_t strideB,
               uint16_t* C, int64_t ldc, int64_t strideC, const GemmEpilogueBf16& ep) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  if (!cpu_features().avx512_bf16) {
    gemm16::gemm_fallback(batch, transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, C, ldc,
                             strideC, ep);
    return;
  }
  std::vector<PlainA> srcs;
  srcs.reserve(size_t(batch));
  for (int64_t b = 0; b < batch; ++b) srcs.emplace_back(A + b * strideA, lda, transA);
  std::vector<const gemm16::ASource*> ptrs(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) ptrs[size_t(b)] = &srcs[size_t(b)];
  gemm16::gemm_driver(batch, M, N, K, alpha, ptrs.data(), B, ldb, strideB, transB, C, ldc, strideC, ep);
}

}  // namespace dk::cpu
