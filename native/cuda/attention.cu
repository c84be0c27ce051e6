// Fused attention on device (contract: native/cpu/kernels.h, attention.cc):
// out = softmax(scale * q k^T + mask) v per (batch, head), never materialising the scores.
//
// Tensor-core path (float16 / bfloat16, D and Dv multiples of 8 up to 160, 16-byte aligned
// rows): a block of 4 warps owns BM = 64*MT queries; each warp owns 16*MT query rows, keeps
// its Q fragments in registers and walks the keys in tiles of 64 (FlashAttention-2's loop
// order, Dao 2023). Per key tile: S = Q K^T with mma.sync m16n8k16 (float32 accumulate), an
// online softmax in the log2 domain (scale*log2(e) folded into one multiply, ex2.approx),
// then O += P V with P taken straight from the S accumulators (the m16n8k16 C layout of two
// n8 tiles is the A layout of one k16 step). K and V tiles arrive by cp.async into padded
// shared rows (row pitch an odd number of 16-byte units, so ldmatrix is conflict-free);
// V(j) loads while S(j) is computed and K(j+1) while P(j)V(j) is (PIPE = false). The default
// dispatch (PIPE = true) double-buffers K and V: tile j+1 loads during all of tile j, with one
// __syncthreads per tile, and full unmasked tiles fold the scale into the exponent's FFMA
// (max on raw scores, p = 2^(s*scale*log2e - m)); DK_ATTN_VARIANT=old restores the previous
// dispatch, =wide takes 8-warp blocks for D <= 80 (see launch_tc_pipe). Head sizes are padded:
// QK^T to a multiple of 16 (k-steps), PV only to a multiple of 8 (n-tiles), so D = Dv = 40
// runs as 48 x 40. In the last, partial key tile only the 16-key slices holding real keys are
// computed: 77 cross-attention keys cost 80, not 128.
//
// SIMT path (float32, odd head sizes, misaligned views, D or Dv over 160): 64 x 64 tiles,
// 256 threads, 4x4 scores per thread, float32 throughout; Dv over 256 is done in slices of
// 256 columns (softmax does not depend on V).
//
// Semantics shared by both (and by the CPU kernel): causal keeps j <= i + (Nk - Nq); the
// optional float32 mask is added to the scaled scores, floored at -FLT_MAX so that a row the
// mask removes everywhere averages V over its keys (PyTorch's result for finfo.min masks); a
// row that sees no key at all (causal with Nq > Nk, or Nk == 0) outputs 0.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernel_util.cuh"
#include "kernels.h"

namespace dk::cuda {
namespace attn {

using ku::from_f;
using ku::to_f;

constexpr float kLog2e = 1.4426950408889634f;

struct Args {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  int64_t B, Nq, Nk, H;
  int D, Dv;
  int64_t q_batch, q_row, q_head;  // element strides; head h starts at h * x_head
  int64_t k_batch, k_row, k_head;
  int64_t v_batch, v_row, v_head;
  int64_t o_batch, o_row, o_head;
  float scale_log2;  // scale * log2(e)
  bool causal;
  const float* mask;
  int64_t mask_b, mask_h, mask_q;
  int64_t q_tiles;
};

__host__ __device__ __forceinline__ int64_t lmin(int64_t x, int64_t y) { return x < y ? x : y; }
__host__ __device__ __forceinline__ int64_t lmax(int64_t x, int64_t y) { return x > y ? x : y; }

// A mask value in the log2 domain, floored at -FLT_MAX (as the CPU kernel does): a row that the
// mask removes everywhere, by -inf or by finfo.min, then averages V over its keys as PyTorch does
// for finfo.min masks, instead of dividing 0 by 0.
__device__ __forceinline__ float mask_log2(float m) {
  const float x = m * kLog2e;
  return x < -FLT_MAX ? -FLT_MAX : x;
}

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ================================================================ tensor-core path
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(p)));
}

// d += a * b for one m16n8k16 tile, float32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats as one register of two 16-bit values (lower column in the low half).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// Row pitch (elements) of a shared tile whose rows hold `cols` 16-bit values: an odd number of
// 16-byte units, so the 8 row addresses of one ldmatrix phase fall in 8 different bank groups.
constexpr int pitch(int cols) { return ((cols / 8) % 2 == 1) ? cols : cols + 8; }

// DK: QK^T head size (multiple of 16), DV: PV head size (multiple of 8), MT: m16 tiles per
// warp (BM = 64*MT queries per block), BN: keys per tile, EXP16: exponentials as f16x2
// (float16 only; the row sums then come from the tensor cores through a column of ones).
// NW: warps per block. PIPE >= 1: K/V tiles double-buffered (tile j+1 loads during all of tile j,
// one __syncthreads per tile instead of two) and, in tiles without mask / causal / ragged edges,
// the scale folded into the exponent's FFMA (row max taken on the raw scores). PIPE == 2: also
// compiles those plain tiles as their own branch-free body (edge known at compile time).
template <int DK, int DV, int MT, int BN_, bool EXP16, int NW_ = 4, int PIPE = 0> struct TcCfg {
  static constexpr int NW = NW_, THREADS = NW * 32;
  static constexpr int BM = 16 * MT * NW, BN = BN_;
  static constexpr int QS = pitch(DK), KS = pitch(DK), VS = pitch(DV);
  static constexpr int STAGES = PIPE ? 2 : 1;
  static constexpr int KBUF = BN * KS, VBUF = BN * VS;  // elements of one K / V stage
  static constexpr int SMEM = (BM * QS + STAGES * (KBUF + VBUF)) * 2;
  static_assert(DK % 16 == 0 && DV % 8 == 0 && BN % 16 == 0, "padded head sizes");
  static_assert(QS >= DV, "the output is staged in the Q tile");
};

// Copies rows [0, rows) x chunks [0, chunks) of 8 elements into a shared tile of ROWS x CH
// chunks (pitch P); the rest of the tile is zero-filled.
template <int ROWS, int CH, int P, int THREADS, typename T>
__device__ __forceinline__ void load_tile(T* sm, const T* g, int64_t row_stride, int rows, int chunks,
                                          const T* any_valid) {
#pragma unroll
  for (int c0 = 0; c0 < ROWS * CH; c0 += THREADS) {
    const int c = c0 + static_cast<int>(threadIdx.x);
    if ((ROWS * CH) % THREADS == 0 || c < ROWS * CH) {
      const int r = c / CH, ch = c % CH;
      const bool valid = r < rows && ch < chunks;
      const T* src = valid ? g + r * row_stride + ch * 8 : any_valid;
      cp_async16(sm + r * P + ch * 8, src, valid);
    }
  }
}

__device__ __forceinline__ uint32_t ex2_h2(uint32_t x) {
  uint32_t y;
  asm("ex2.approx.f16x2 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

template <typename T, int DK, int DV, int MT, int BN, bool EXP16, int NW = 4, int PIPE_ = 0, int MINB = 2>
__global__ void __launch_bounds__(NW * 32, MINB) attn_tc(Args a) {
  using C = TcCfg<DK, DV, MT, BN, EXP16, NW, PIPE_>;
  constexpr bool PIPE = PIPE_ != 0, CT_EDGE = PIPE_ >= 2;
  constexpr int BM = C::BM, QS = C::QS, KS = C::KS, VS = C::VS, TH = C::THREADS;
  constexpr int NT = BN / 8;   // n8 tiles of S
  constexpr int KQ = DK / 16;  // k16 steps of QK^T
  constexpr int NV = DV / 8;   // n8 tiles of O
  static_assert(!EXP16 || std::is_same_v<T, __half>, "f16x2 exponentials need float16 P");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + BM * QS;
  T* Vs = Ks + C::STAGES * C::KBUF;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tq = lane & 3;
  int64_t qt = blockIdx.x % a.q_tiles;
  const int64_t bh = blockIdx.x / a.q_tiles;
  const int64_t h = bh % a.H, b = bh / a.H;
  if (a.causal) qt = a.q_tiles - 1 - qt;  // the longest rows first
  const int64_t q0 = qt * BM;
  const T* qg = static_cast<const T*>(a.q) + b * a.q_batch + h * a.q_head + q0 * a.q_row;
  const T* kg = static_cast<const T*>(a.k) + b * a.k_batch + h * a.k_head;
  const T* vg = static_cast<const T*>(a.v) + b * a.v_batch + h * a.v_head;
  T* og = static_cast<T*>(a.o) + b * a.o_batch + h * a.o_head + q0 * a.o_row;
  const int q_rows = static_cast<int>(lmin(BM, a.Nq - q0));
  const int64_t diag = a.Nk - a.Nq;  // key j is visible to query i when j <= i + diag
  int64_t n_end = a.Nk;
  if (a.causal) n_end = lmax(0, lmin(a.Nk, q0 + BM + diag));
  const int ntiles = static_cast<int>((n_end + BN - 1) / BN);
  const int dch = a.D / 8, dvch = a.Dv / 8;
  const float* mbase = a.mask ? a.mask + b * a.mask_b + h * a.mask_h : nullptr;

  load_tile<BM, DK / 8, QS, TH>(Qs, qg, a.q_row, q_rows, dch, static_cast<const T*>(a.q));
  if (ntiles > 0) {
    load_tile<BN, DK / 8, KS, TH>(Ks, kg, a.k_row, static_cast<int>(lmin(BN, a.Nk)), dch,
                                  static_cast<const T*>(a.k));
    if constexpr (PIPE)
      load_tile<BN, DV / 8, VS, TH>(Vs, vg, a.v_row, static_cast<int>(lmin(BN, a.Nk)), dvch,
                                    static_cast<const T*>(a.v));
  }
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  const int wrow = warp * 16 * MT;  // first tile row of this warp
  uint32_t qf[MT][KQ][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int ks = 0; ks < KQ; ks++)
      ldsm_x4(qf[mt][ks], Qs + (wrow + mt * 16 + (lane & 15)) * QS + ks * 16 + (lane >> 4) * 8);

  constexpr int NO = EXP16 ? NV + 1 : NV;  // EXP16: tile NV accumulates P * ones = row sums
  float o[MT][NO][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int nv = 0; nv < NO; nv++)
#pragma unroll
      for (int e = 0; e < 4; e++) o[mt][nv][e] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  // One key tile. FULL (all BN keys real) drops the per-slice guards from the unrolled code.
  // PIPE_ == 2: edge (mask, causal diagonal, ragged tile or scale <= 0) is a compile-time flag, so
  // the common tile is one branch-free block (QK^T, softmax and PV of the two m16 tiles can
  // interleave in the schedule); without PIPE edge_c is ignored and edge is found at run time.
  auto tile = [&](const int j, auto full, auto edge_c) {
    constexpr bool FULL = decltype(full)::value;
    const int64_t n0 = static_cast<int64_t>(j) * BN;
    const int kv = FULL ? BN : static_cast<int>(lmin(BN, a.Nk - n0));  // real keys in this tile
    const T* Kc = Ks + (PIPE ? (j & 1) * C::KBUF : 0);
    const T* Vc = Vs + (PIPE ? (j & 1) * C::VBUF : 0);
    if constexpr (PIPE) {
      if (j > 0) {
        cp_async_wait_all();  // K(j), V(j) landed (issued one tile ago)
        __syncthreads();      // and every warp is done with tile j-1, whose buffers get tile j+1
      }
      if (j + 1 < ntiles) {
        const int64_t n1 = n0 + BN;
        const int kv1 = static_cast<int>(lmin(BN, a.Nk - n1));
        const int nb = (j + 1) & 1;
        load_tile<BN, DK / 8, KS, TH>(Ks + nb * C::KBUF, kg + n1 * a.k_row, a.k_row, kv1, dch,
                                      static_cast<const T*>(a.k));
        load_tile<BN, DV / 8, VS, TH>(Vs + nb * C::VBUF, vg + n1 * a.v_row, a.v_row, kv1, dvch,
                                      static_cast<const T*>(a.v));
        cp_async_commit();
      }
    } else {
      if (j > 0) {
        cp_async_wait_all();  // K(j) landed
        __syncthreads();      // and every warp is done with V(j-1)
      }
      load_tile<BN, DV / 8, VS, TH>(Vs, vg + n0 * a.v_row, a.v_row, kv, dvch, static_cast<const T*>(a.v));
      cp_async_commit();
    }

    // ---- S = Q K^T
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[mt][nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KQ; ks++) {
#pragma unroll
      for (int np = 0; np < NT / 2; np++) {
        if (FULL || np * 16 < kv) {  // 16-key slices past the last key are skipped
          uint32_t bk[4];
          ldsm_x4(bk, Kc + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * KS + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816<T>(s[mt][2 * np], qf[mt][ks], bk[0], bk[1]);
            mma16816<T>(s[mt][2 * np + 1], qf[mt][ks], bk[2], bk[3]);
          }
        }
      }
    }

    // ---- online softmax (log2 domain)
    // PIPE folds the scale into the exponent where no mask / limit applies (needs scale > 0: the
    // max is then taken on the raw scores); f multiplies the stored s in the exponent.
    const bool edge = CT_EDGE ? decltype(edge_c)::value
                              : (!FULL || mbase != nullptr || (a.causal && n0 + BN - 1 > q0 + diag) ||
                                 (PIPE && !(a.scale_log2 > 0.f)));
    const bool fold = PIPE && !edge;
    const float f = fold ? a.scale_log2 : 1.f;
    [[maybe_unused]] uint32_t p16[EXP16 ? MT : 1][EXP16 ? NT : 1][2];  // EXP16: P as f16x2, [hf] = row g or g+8
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int64_t row = q0 + wrow + mt * 16 + g + 8 * hf;
        int lim = kv;  // keys [0, lim) of this tile are visible to this row
        const float* mrow = nullptr;
        if (edge) {
          if (a.causal) lim = static_cast<int>(lmax(0, lmin(kv, row + diag - n0 + 1)));
          if (mbase != nullptr && row < a.Nq) mrow = mbase + row * a.mask_q + n0;
        }
        float mx = -INFINITY;
        if (fold) {  // raw scores: s stays unscaled, the exponent below is fma(s, scale, -max)
#pragma unroll
          for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
        } else {
#pragma unroll
          for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
              float x = s[mt][nt][2 * hf + e] * a.scale_log2;
              if (edge) {
                const int col = nt * 8 + 2 * tq + e;
                if (col >= lim) x = -INFINITY;
                else if (mrow != nullptr) x += mask_log2(mrow[col]);
              }
              s[mt][nt][2 * hf + e] = x;
              mx = fmaxf(mx, x);
            }
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        mx *= f;  // scaled max (exact when f == 1; monotone rounding keeps it the max of s*scale)
        const float mnew = fmaxf(m[mt][hf], mx);
        const float muse = mnew == -INFINITY ? 0.f : mnew;  // a row with no key yet: all p = 0
        const float alpha = exp2_approx(m[mt][hf] - muse);
        m[mt][hf] = mnew;
        if constexpr (EXP16) {
#pragma unroll
          for (int nt = 0; nt < NT; nt++)
            p16[mt][nt][hf] = ex2_h2(
                pack2<__half>(fmaf(s[mt][nt][2 * hf], f, -muse), fmaf(s[mt][nt][2 * hf + 1], f, -muse)));
        } else {
          float rs = 0.f;
#pragma unroll
          for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
              const float p = exp2_approx(fmaf(s[mt][nt][2 * hf + e], f, -muse));
              s[mt][nt][2 * hf + e] = p;
              rs += p;
            }
          l[mt][hf] = l[mt][hf] * alpha + rs;  // this thread's columns; summed over the quad at the end
        }
#pragma unroll
        for (int nv = 0; nv < NO; nv++) {
          o[mt][nv][2 * hf] *= alpha;
          o[mt][nv][2 * hf + 1] *= alpha;
        }
      }
    }

    if constexpr (!PIPE) {
    cp_async_wait_all();  // V(j) landed
    __syncthreads();      // and every warp is done with K(j)
    if (j + 1 < ntiles) {
      const int64_t n1 = n0 + BN;
      load_tile<BN, DK / 8, KS, TH>(Ks, kg + n1 * a.k_row, a.k_row, static_cast<int>(lmin(BN, a.Nk - n1)), dch,
                                     static_cast<const T*>(a.k));
      cp_async_commit();
    }
    }

    // ---- O += P V
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      if (FULL || kk * 16 < kv) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          if constexpr (EXP16) {
            pa[mt][0] = p16[mt][2 * kk][0];
            pa[mt][1] = p16[mt][2 * kk][1];
            pa[mt][2] = p16[mt][2 * kk + 1][0];
            pa[mt][3] = p16[mt][2 * kk + 1][1];
          } else {
            pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
          }
        }
        const T* vrow = Vc + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * VS;
#pragma unroll
        for (int dp = 0; dp < NV / 2; dp++) {
          uint32_t bv[4];
          ldsm_x4_t(bv, vrow + dp * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816<T>(o[mt][2 * dp], pa[mt], bv[0], bv[1]);
            mma16816<T>(o[mt][2 * dp + 1], pa[mt], bv[2], bv[3]);
          }
        }
        if constexpr (NV % 2 == 1) {
          uint32_t bv[2];
          ldsm_x2_t(bv, vrow + (NV - 1) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) mma16816<T>(o[mt][NV - 1], pa[mt], bv[0], bv[1]);
        }
        if constexpr (EXP16) {
          constexpr uint32_t kOnes = 0x3C003C00u;  // two float16 1.0
#pragma unroll
          for (int mt = 0; mt < MT; mt++) mma16816<T>(o[mt][NV], pa[mt], kOnes, kOnes);
        }
      }
    }
    };
  for (int j = 0; j < ntiles; j++) {
    const int64_t n0 = static_cast<int64_t>(j) * BN;
    const bool full = a.Nk - n0 >= BN;
    if constexpr (CT_EDGE) {
      const bool edge = !full || mbase != nullptr || (a.causal && n0 + BN - 1 > q0 + diag) || !(a.scale_log2 > 0.f);
      if (!edge) tile(j, std::true_type(), std::false_type());
      else if (full) tile(j, std::true_type(), std::true_type());
      else tile(j, std::false_type(), std::true_type());
    } else {
      if (full) tile(j, std::true_type(), std::true_type());
      else tile(j, std::false_type(), std::true_type());
    }
  }

  // ---- normalise, stage this warp's rows in its part of the Q tile, store 16-byte chunks
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      float lt;
      if constexpr (EXP16) {
        lt = o[mt][NV][2 * hf];  // every column of the ones tile holds the row sum
      } else {
        lt = l[mt][hf];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      }
      const float inv = lt > 0.f ? 1.0f / lt : 0.f;
      T* srow = Qs + (wrow + mt * 16 + g + 8 * hf) * QS + 2 * tq;
#pragma unroll
      for (int nv = 0; nv < NV; nv++)
        *reinterpret_cast<uint32_t*>(srow + nv * 8) = pack2<T>(o[mt][nv][2 * hf] * inv, o[mt][nv][2 * hf + 1] * inv);
    }
  }
  __syncwarp();
  constexpr int WROWS = 16 * MT;
#pragma unroll
  for (int c0 = 0; c0 < WROWS * NV; c0 += 32) {
    const int c = c0 + lane;
    if ((WROWS * NV) % 32 == 0 || c < WROWS * NV) {
      const int r = c / NV, ch = c % NV;
      if (wrow + r < q_rows && ch < dvch)
        *reinterpret_cast<uint4*>(og + (wrow + r) * a.o_row + ch * 8) =
            *reinterpret_cast<const uint4*>(Qs + (wrow + r) * QS + ch * 8);
    }
  }
}

template <typename T, int DK, int DV, int MT, int BN, bool EXP16, int NW = 4, int PIPE = 0, int MINB = 2>
void launch_tc(int device, Args a, cudaStream_t s) {
  using C = TcCfg<DK, DV, MT, BN, EXP16, NW, PIPE>;
  auto kern = attn_tc<T, DK, DV, MT, BN, EXP16, NW, PIPE, MINB>;
  if (C::SMEM > 48 * 1024) {
    static bool raised[64] = {};  // per device; a repeated call is harmless
    if (device < 0 || device >= 64 || !raised[device]) {
      check(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM), "attention");
      if (device >= 0 && device < 64) raised[device] = true;
    }
  }
  a.q_tiles = (a.Nq + C::BM - 1) / C::BM;
  const int64_t blocks = a.q_tiles * a.H * a.B;
  if (blocks > 0x7fffffffLL) throw_range("attention: too many query tiles for one launch");
  kern<<<static_cast<unsigned>(blocks), C::THREADS, C::SMEM, s>>>(a);
  ku::launch_check("attention");
}

// ================================================================ SIMT path
constexpr int SB = 64;   // queries and keys per tile
constexpr int SDC = 16;  // head-dim slice of Q and K staged at once
constexpr int SKC = 16;  // keys of V staged at once

template <typename T, int NJ>
__global__ void __launch_bounds__(256, 1) attn_simt(Args a) {
  constexpr int DVP = 16 * NJ;
  __shared__ __align__(16) float Qc[SDC][SB + 4];  // [d][query]
  __shared__ __align__(16) float Kc[SDC][SB + 4];  // [d][key]
  __shared__ __align__(16) float Pt[SB][SB + 4];   // [key][query]
  __shared__ float Vc[SKC][DVP];

  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t qt = blockIdx.x % a.q_tiles;
  const int64_t bh = blockIdx.x / a.q_tiles;
  const int64_t h = bh % a.H, b = bh / a.H;
  const int64_t q0 = qt * SB;
  const T* qg = static_cast<const T*>(a.q) + b * a.q_batch + h * a.q_head;
  const T* kg = static_cast<const T*>(a.k) + b * a.k_batch + h * a.k_head;
  const T* vg = static_cast<const T*>(a.v) + b * a.v_batch + h * a.v_head;
  T* og = static_cast<T*>(a.o) + b * a.o_batch + h * a.o_head;
  const int64_t diag = a.Nk - a.Nq;
  int64_t n_end = a.Nk;
  if (a.causal) n_end = lmax(0, lmin(a.Nk, q0 + SB + diag));

  float o[4][NJ];
  float m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int jj = 0; jj < NJ; jj++) o[i][jj] = 0.f;
  }

  for (int64_t n0 = 0; n0 < n_end; n0 += SB) {
    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) s[i][j] = 0.f;
    for (int d0 = 0; d0 < a.D; d0 += SDC) {
#pragma unroll
      for (int e = 0; e < SB * SDC / 256; e++) {
        const int idx = tid + 256 * e, r = idx / SDC, dd = idx % SDC;
        const bool dok = d0 + dd < a.D;
        Qc[dd][r] = (dok && q0 + r < a.Nq) ? to_f(qg[(q0 + r) * a.q_row + d0 + dd]) : 0.f;
        Kc[dd][r] = (dok && n0 + r < a.Nk) ? to_f(kg[(n0 + r) * a.k_row + d0 + dd]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int dd = 0; dd < SDC; dd++) {
        const float4 qv = *reinterpret_cast<const float4*>(&Qc[dd][ty * 4]);
        const float4 kv = *reinterpret_cast<const float4*>(&Kc[dd][tx * 4]);
        const float qa[4] = {qv.x, qv.y, qv.z, qv.w}, ka[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) s[i][j] = fmaf(qa[i], ka[j], s[i][j]);
      }
      __syncthreads();
    }
    // online softmax over this tile; the 16 threads of one row group are 16 consecutive lanes
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int64_t row = q0 + ty * 4 + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int64_t col = n0 + tx * 4 + j;
        float x = s[i][j] * a.scale_log2;
        if (col >= a.Nk || (a.causal && col > row + diag)) x = -INFINITY;
        else if (a.mask != nullptr && row < a.Nq)
          x += mask_log2(a.mask[b * a.mask_b + h * a.mask_h + row * a.mask_q + col]);
        s[i][j] = x;
        mx = fmaxf(mx, x);
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mnew = fmaxf(m[i], mx);
      const float muse = mnew == -INFINITY ? 0.f : mnew;
      const float alpha = exp2_approx(m[i] - muse);
      m[i] = mnew;
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        s[i][j] = exp2_approx(s[i][j] - muse);
        rs += s[i][j];
      }
      l[i] = l[i] * alpha + rs;
#pragma unroll
      for (int jj = 0; jj < NJ; jj++) o[i][jj] *= alpha;
    }
#pragma unroll
    for (int j = 0; j < 4; j++)
      *reinterpret_cast<float4*>(&Pt[tx * 4 + j][ty * 4]) = make_float4(s[0][j], s[1][j], s[2][j], s[3][j]);
    // O += P V, SKC keys of V at a time
    for (int kc = 0; kc < SB; kc += SKC) {
      for (int idx = tid; idx < SKC * DVP; idx += 256) {
        const int kr = idx / DVP, c = idx % DVP;
        const int64_t key = n0 + kc + kr;
        Vc[kr][c] = (key < a.Nk && c < a.Dv) ? to_f(vg[key * a.v_row + c]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < SKC; kk++) {
        const float4 pv = *reinterpret_cast<const float4*>(&Pt[kc + kk][ty * 4]);
        const float pa[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
        for (int jj = 0; jj < NJ; jj++) {
          const float vv = Vc[kk][tx + 16 * jj];
#pragma unroll
          for (int i = 0; i < 4; i++) o[i][jj] = fmaf(pa[i], vv, o[i][jj]);
        }
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float lt = l[i];
#pragma unroll
    for (int off = 1; off < 16; off <<= 1) lt += __shfl_xor_sync(0xffffffffu, lt, off);
    const float inv = lt > 0.f ? 1.0f / lt : 0.f;
    const int64_t row = q0 + ty * 4 + i;
    if (row >= a.Nq) continue;
#pragma unroll
    for (int jj = 0; jj < NJ; jj++) {
      const int c = tx + 16 * jj;
      if (c < a.Dv) og[row * a.o_row + c] = from_f<T>(o[i][jj] * inv);
    }
  }
}

template <typename T> void launch_simt(int device, Args a, cudaStream_t s) {
  (void)device;
  a.q_tiles = (a.Nq + SB - 1) / SB;
  const int64_t blocks = a.q_tiles * a.H * a.B;
  if (blocks > 0x7fffffffLL) throw_range("attention: too many query tiles for one launch");
  const int Dv_all = a.Dv;
  const T* v0 = static_cast<const T*>(a.v);
  T* o0 = static_cast<T*>(a.o);
  for (int c0 = 0; c0 < Dv_all; c0 += 256) {  // softmax does not depend on V: slice wide Dv
    a.v = v0 + c0;
    a.o = o0 + c0;
    a.Dv = std::min(256, Dv_all - c0);
    const unsigned g = static_cast<unsigned>(blocks);
    const int nj = (a.Dv + 15) / 16;
    if (nj <= 2) attn_simt<T, 2><<<g, 256, 0, s>>>(a);
    else if (nj <= 3) attn_simt<T, 3><<<g, 256, 0, s>>>(a);
    else if (nj <= 4) attn_simt<T, 4><<<g, 256, 0, s>>>(a);
    else if (nj <= 5) attn_simt<T, 5><<<g, 256, 0, s>>>(a);
    else if (nj <= 8) attn_simt<T, 8><<<g, 256, 0, s>>>(a);
    else if (nj <= 10) attn_simt<T, 10><<<g, 256, 0, s>>>(a);
    else attn_simt<T, 16><<<g, 256, 0, s>>>(a);
    ku::launch_check("attention");
  }
}

// ================================================================ dispatch
template <typename T> bool tc_eligible(const Args& a) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    if (a.D % 8 || a.Dv % 8 || a.D > 160 || a.Dv > 160) return false;
    const int64_t st[] = {a.q_batch, a.q_row, a.q_head, a.k_batch, a.k_row, a.k_head,
                          a.v_batch, a.v_row, a.v_head, a.o_batch, a.o_row, a.o_head};
    for (int64_t x : st)
      if (x % 8) return false;
    return ku::aligned16(a.q) && ku::aligned16(a.k) && ku::aligned16(a.v) && ku::aligned16(a.o);
  }
}

// Whether float16 attention takes its exponentials as f16x2 (twice the MUFU rate; P is
// rounded to float16 for the PV product either way). Off until ops_lab's timings say it pays.
constexpr bool kExpHalf2 = false;

// Smallest instantiated (DK, DV) holding (D, Dv). MT and BN are the largest that compile
// without spills under the 255-register cap (ptxas -v). Returns false when none fits.
// The dispatch before the PIPE kernels (DK_ATTN_VARIANT=old), kept for A/B runs.
template <typename T> bool launch_tc_old(int device, const Args& a, cudaStream_t s) {
  constexpr bool E = kExpHalf2 && std::is_same_v<T, __half>;
  if (a.D <= 32 && a.Dv <= 32) return launch_tc<T, 32, 32, 2, 64, E>(device, a, s), true;
  // Cross-attention over CLIP's 77 keys: 32-key tiles waste less of the last tile (ops_lab v2).
  if (a.D <= 48 && a.Dv <= 40)
    return (a.Nk <= 96 ? launch_tc<T, 48, 40, 2, 32, E>(device, a, s) : launch_tc<T, 48, 40, 2, 64, E>(device, a, s)),
           true;
  if (a.D <= 48 && a.Dv <= 48) return launch_tc<T, 48, 48, 2, 64, E>(device, a, s), true;
  if (a.D <= 64 && a.Dv <= 64) return launch_tc<T, 64, 64, 2, 64, E>(device, a, s), true;
  // D = 80: one m16 tile per warp and 64-key tiles ran 1.6x faster than MT=2/BN=32 on an H200
  // (ops_lab v12 vs v11: 127 vs 78 TFLOP/s at Nq = Nk = 1024).
  if (a.D <= 80 && a.Dv <= 80) return launch_tc<T, 80, 80, 1, 64, E>(device, a, s), true;
  if (a.D <= 128 && a.Dv <= 128) return launch_tc<T, 128, 128, 1, 64, E>(device, a, s), true;
  if (a.D <= 160 && a.Dv <= 160) return launch_tc<T, 160, 160, 1, 32, E>(device, a, s), true;
  return false;
}

// PIPE dispatch (DK_ATTN_VARIANT unset / new): the old tile shapes with double-buffered K/V and
// the folded scale; D = 160 takes 2-warp blocks (32 queries) so that 256 tokens x 16 heads fill
// 128 blocks instead of 64. wide = true (DK_ATTN_VARIANT=wide): 8-warp blocks for D <= 80
// (256 queries per block for D <= 64, 128 for D = 80), K/V tiles shared by twice the warps.
template <typename T, int P, bool wide> bool launch_tc_pipe(int device, const Args& a, cudaStream_t s) {
  constexpr bool E = kExpHalf2 && std::is_same_v<T, __half>;
  if (a.D <= 32 && a.Dv <= 32) {
    if constexpr (wide) launch_tc<T, 32, 32, 2, 64, E, 8, P, 1>(device, a, s);
    else launch_tc<T, 32, 32, 2, 64, E, 4, P, 2>(device, a, s);
    return true;
  }
  if (a.D <= 48 && a.Dv <= 40) {
    if (a.Nk <= 96) launch_tc<T, 48, 40, 2, 32, E, 4, P, 2>(device, a, s);  // CLIP's 77 keys
    else if constexpr (wide) launch_tc<T, 48, 40, 2, 64, E, 8, P, 1>(device, a, s);
    else launch_tc<T, 48, 40, 2, 64, E, 4, P, 2>(device, a, s);
    return true;
  }
  if (a.D <= 48 && a.Dv <= 48) return launch_tc<T, 48, 48, 2, 64, E, 4, P, 2>(device, a, s), true;
  if (a.D <= 64 && a.Dv <= 64) {
    if constexpr (wide) launch_tc<T, 64, 64, 2, 64, E, 8, P, 1>(device, a, s);
    else launch_tc<T, 64, 64, 2, 64, E, 4, P, 2>(device, a, s);
    return true;
  }
  if (a.D <= 80 && a.Dv <= 80) {
    if constexpr (wide) launch_tc<T, 80, 80, 1, 64, E, 8, P, 1>(device, a, s);
    else launch_tc<T, 80, 80, 1, 64, E, 4, P, 2>(device, a, s);
    return true;
  }
  if (a.D <= 128 && a.Dv <= 128) return launch_tc<T, 128, 128, 1, 64, E, 4, P, 2>(device, a, s), true;
  if (a.D <= 160 && a.Dv <= 160) return launch_tc<T, 160, 160, 1, 32, E, 2, P, 4>(device, a, s), true;
  return false;
}

// DK_ATTN_VARIANT: "old" (or 0) = launch_tc_old, "wide" (or 2) = launch_tc_pipe<1>(wide),
// "sched" (or 3) = launch_tc_pipe<2> (compile-time plain tiles), anything else or unset =
// launch_tc_pipe<1>. Read once per process.
inline int env_variant() {
  static const int v = [] {
    // Default: "sched" (PIPE 2), the fastest on an H200 for every SD shape (2026-11-26:
    // 187/273/157/41 TFLOP/s at D=40/64/80/77-key cross vs 119/177/126/34 for "old").
    const char* e = std::getenv("DK_ATTN_VARIANT");
    if (e == nullptr) return 3;
    const std::string x(e);
    if (x == "old" || x == "0") return 0;
    if (x == "pipe" || x == "new" || x == "1") return 1;
    if (x == "wide" || x == "2") return 2;
    return 3;
  }();
  return v;
}

template <typename T> bool launch_tc_any(int device, const Args& a, cudaStream_t s, int sel) {
  if (sel < 0) sel = env_variant();
  if (sel == 0) return launch_tc_old<T>(device, a, s);
  if (sel == 2) return launch_tc_pipe<T, 1, true>(device, a, s);
  if (sel == 3) return launch_tc_pipe<T, 2, false>(device, a, s);
  return launch_tc_pipe<T, 1, false>(device, a, s);
}

// force: 0 = choose, 1 = tensor-core path only, 2 = SIMT path only (for the lab).
// sel: -1 = DK_ATTN_VARIANT, 0 = old dispatch, 1 = PIPE, 2 = PIPE wide, 3 = PIPE 2 (default).
template <typename T> void run(int device, Args a, int force, int sel) {
  cudaStream_t s = stream(device);
  if constexpr (!std::is_same_v<T, float>) {
    if (force != 2 && tc_eligible<T>(a) && launch_tc_any<T>(device, a, s, sel)) return;
  }
  if (force == 1) throw_range("attention: the tensor-core path cannot take this shape");
  launch_simt<T>(device, a, s);
}

inline Args make_args(const AttentionParams& p, const void* q, const void* k, const void* v, void* out) {
  if (p.B < 0 || p.Nq < 0 || p.Nk < 0 || p.heads < 0 || p.D <= 0 || p.Dv <= 0)
    throw_range("attention: sizes must be non-negative and head sizes positive");
  if (p.D > (1 << 20) || p.Dv > (1 << 20)) throw_range("attention: head size too large");
  Args a{};
  a.q = q;
  a.k = k;
  a.v = v;
  a.o = out;
  a.B = p.B;
  a.Nq = p.Nq;
  a.Nk = p.Nk;
  a.H = p.heads;
  a.D = static_cast<int>(p.D);
  a.Dv = static_cast<int>(p.Dv);
  a.q_batch = p.q_batch;
  a.q_row = p.q_row;
  a.q_head = p.D;
  a.k_batch = p.k_batch;
  a.k_row = p.k_row;
  a.k_head = p.D;
  a.v_batch = p.v_batch;
  a.v_row = p.v_row;
  a.v_head = p.Dv;
  a.o_batch = p.o_batch;
  a.o_row = p.o_row;
  a.o_head = p.Dv;
  a.scale_log2 = p.scale * kLog2e;
  a.causal = p.causal;
  a.mask = p.mask;
  a.mask_b = p.mask_b;
  a.mask_h = p.mask_h;
  a.mask_q = p.mask_q;
  return a;
}

// Entry with a forced path, for ops_lab.
inline void attention_forced(int device, DType dt, const AttentionParams& p, const void* q, const void* k,
                             const void* v, void* out, int force, int sel = -1) {
  if (p.B == 0 || p.Nq == 0 || p.heads == 0) return;
  Args a = make_args(p, q, k, v, out);
  DK_DISPATCH_FLOAT(dt, "attention", run<T>(device, a, force, sel));
}

}  // namespace attn

void attention(int device, DType dt, const AttentionParams& p, const void* q, const void* k, const void* v,
               void* out) {
  attn::attention_forced(device, dt, p, q, k, v, out, 0);
}

}  // namespace dk::cuda
