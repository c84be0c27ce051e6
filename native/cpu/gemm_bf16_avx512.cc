// AVX512_BF16 micro-kernel and packing for the bfloat16 GEMM (layouts: gemm_bf16_internal.h).
// The tile is 14 x 32 fp32 sums in 28 zmm accumulators, as in the fp32 kernel, but each
// vdpbf16ps adds two products per lane: per k pair it loads two B vectors ([32 columns][2]) and
// broadcasts one 32-bit (bf16 pair) of each of the 14 A rows, 28 vdpbf16ps in all. Zen 4 issues
// one 512-bit vdpbf16ps per cycle like an FMA, so the peak is twice the fp32 one.
#include <immintrin.h>

#include <cstdint>

#include "gemm_bf16_internal.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace dk::cpu::gemm16 {
#if defined(__AVX512BF16__)
namespace {

constexpr int MR = 14, NR = 32;

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// bf16 -> fp32 of up to 16 elements (masked: absent lanes are 0).
inline __m512 load_bf16(__mmask16 k, const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}

// Accumulators zmm0..27 (row r in zmm(2r), zmm(2r+1)), B in zmm28/29, A broadcasts in zmm30/31.
// The 14 A rows are addressed from three bases (rows 0, 3, 10) and the 1- and 3-pitch indices,
// since x86 address scales are only 1, 2, 4 and 8.
#define DK_A0 "(%[a0])"
#define DK_A1 "(%[a0],%[s1],1)"
#define DK_A2 "(%[a0],%[s1],2)"
#define DK_A3 "(%[a3])"
#define DK_A4 "(%[a0],%[s1],4)"
#define DK_A5 "(%[a3],%[s1],2)"
#define DK_A6 "(%[a0],%[s3],2)"
#define DK_A7 "(%[a3],%[s1],4)"
#define DK_A8 "(%[a0],%[s1],8)"
#define DK_A9 "(%[a3],%[s3],2)"
#define DK_A10 "(%[a10])"
#define DK_A11 "(%[a10],%[s1],1)"
#define DK_A12 "(%[a10],%[s1],2)"
#define DK_A13 "(%[a10],%[s3],1)"
#define DK_BROW(D, ADDR, c0, c1, bc)                   \
  "vbroadcastss " D ADDR ", %%zmm" #bc "\n\t"          \
  "vdpbf16ps %%zmm28, %%zmm" #bc ", %%zmm" #c0 "\n\t"  \
  "vdpbf16ps %%zmm29, %%zmm" #bc ", %%zmm" #c1 "\n\t"
#define DK_BSTEP(D, BOFF)                                                                              \
  "vmovaps " BOFF "(%[b]), %%zmm28\n\t"                                                                \
  "vmovaps " BOFF "+64(%[b]), %%zmm29\n\t"                                                             \
  DK_BROW(D, DK_A0, 0, 1, 30) DK_BROW(D, DK_A1, 2, 3, 31) DK_BROW(D, DK_A2, 4, 5, 30)                  \
  DK_BROW(D, DK_A3, 6, 7, 31) DK_BROW(D, DK_A4, 8, 9, 30) DK_BROW(D, DK_A5, 10, 11, 31)                \
  DK_BROW(D, DK_A6, 12, 13, 30) DK_BROW(D, DK_A7, 14, 15, 31) DK_BROW(D, DK_A8, 16, 17, 30)            \
  DK_BROW(D, DK_A9, 18, 19, 31) DK_BROW(D, DK_A10, 20, 21, 30) DK_BROW(D, DK_A11, 22, 23, 31)          \
  DK_BROW(D, DK_A12, 24, 25, 30) DK_BROW(D, DK_A13, 26, 27, 31)
#define DK_BSTORE2(r, c0, c1) \
  "vmovaps %%zmm" #c0 ", 128*" #r "(%[a3])\n\t" "vmovaps %%zmm" #c1 ", 128*" #r "+64(%[a3])\n\t"

// Sums the 14 x 32 product of an A panel and a B panel over kp pairs into t[14][32] (64-byte
// aligned). Assembly because GCC spills accumulators when this is written with intrinsics. The
// rows the epilogue touches after the loop (pf0: written, pf1: read; 128 bytes each) are
// prefetched one row per 4-pair iteration, spread so the prefetches are not dropped in a burst.
inline void tile_14x32(int64_t kp, const uint32_t* A, const uint32_t* B, float* t, const void* pf0, int64_t pf0_step,
                       const void* pf1, int64_t pf1_step, int m) {
  const int64_t s1 = gemm::a_pitch(kp) * 4, s3 = 3 * s1;
  const char* a0 = reinterpret_cast<const char*>(A);
  const char* a3 = a0 + s3;
  const char* a10 = a0 + 10 * s1;
  int64_t k = kp >> 2, pn = m;
  const int64_t k1 = kp & 3;
  const char* cp = static_cast<const char*>(pf0);
  const char* rp = static_cast<const char*>(pf1);
  __asm__ volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovaps %%zmm0, %%zmm1\n\t" "vmovaps %%zmm0, %%zmm2\n\t" "vmovaps %%zmm0, %%zmm3\n\t"
      "vmovaps %%zmm0, %%zmm4\n\t" "vmovaps %%zmm0, %%zmm5\n\t" "vmovaps %%zmm0, %%zmm6\n\t"
      "vmovaps %%zmm0, %%zmm7\n\t" "vmovaps %%zmm0, %%zmm8\n\t" "vmovaps %%zmm0, %%zmm9\n\t"
      "vmovaps %%zmm0, %%zmm10\n\t" "vmovaps %%zmm0, %%zmm11\n\t" "vmovaps %%zmm0, %%zmm12\n\t"
      "vmovaps %%zmm0, %%zmm13\n\t" "vmovaps %%zmm0, %%zmm14\n\t" "vmovaps %%zmm0, %%zmm15\n\t"
      "vmovaps %%zmm0, %%zmm16\n\t" "vmovaps %%zmm0, %%zmm17\n\t" "vmovaps %%zmm0, %%zmm18\n\t"
      "vmovaps %%zmm0, %%zmm19\n\t" "vmovaps %%zmm0, %%zmm20\n\t" "vmovaps %%zmm0, %%zmm21\n\t"
      "vmovaps %%zmm0, %%zmm22\n\t" "vmovaps %%zmm0, %%zmm23\n\t" "vmovaps %%zmm0, %%zmm24\n\t"
      "vmovaps %%zmm0, %%zmm25\n\t" "vmovaps %%zmm0, %%zmm26\n\t" "vmovaps %%zmm0, %%zmm27\n\t"
      "test %[k], %[k]\n\t"
      "jz 2f\n\t"
      ".p2align 5\n"
      "1:\n\t"
      "test %[pn], %[pn]\n\t"
      "jz 5f\n\t"
      "prefetchw (%[cp])\n\t"
      "prefetchw 127(%[cp])\n\t"
      "prefetcht0 (%[rp])\n\t"
      "prefetcht0 127(%[rp])\n\t"
      "add %[cstep], %[cp]\n\t"
      "add %[rstep], %[rp]\n\t"
      "dec %[pn]\n"
      "5:\n\t"
      "prefetcht0 1024(%[b])\n\t"
      DK_BSTEP("0", "0")
      "prefetcht0 1088(%[b])\n\t"
      DK_BSTEP("4", "128")
      DK_BSTEP("8", "256")
      DK_BSTEP("12", "384")
      "add $16, %[a0]\n\t"
      "add $16, %[a3]\n\t"
      "add $16, %[a10]\n\t"
      "add $512, %[b]\n\t"
      "dec %[k]\n\t"
      "jnz 1b\n"
      "2:\n\t"
      "mov %[k1], %[k]\n\t"
      "test %[k], %[k]\n\t"
      "jz 4f\n"
      "3:\n\t"
      DK_BSTEP("0", "0")
      "add $4, %[a0]\n\t"
      "add $4, %[a3]\n\t"
      "add $4, %[a10]\n\t"
      "add $128, %[b]\n\t"
      "dec %[k]\n\t"
      "jnz 3b\n"
      "4:\n\t"
      "mov %[t], %[a3]\n\t"
      DK_BSTORE2(0, 0, 1) DK_BSTORE2(1, 2, 3) DK_BSTORE2(2, 4, 5) DK_BSTORE2(3, 6, 7) DK_BSTORE2(4, 8, 9)
      DK_BSTORE2(5, 10, 11) DK_BSTORE2(6, 12, 13) DK_BSTORE2(7, 14, 15) DK_BSTORE2(8, 16, 17)
      DK_BSTORE2(9, 18, 19) DK_BSTORE2(10, 20, 21) DK_BSTORE2(11, 22, 23) DK_BSTORE2(12, 24, 25)
      DK_BSTORE2(13, 26, 27)
      : [a0] "+r"(a0), [a3] "+r"(a3), [a10] "+r"(a10), [b] "+r"(B), [k] "+r"(k), [cp] "+r"(cp), [rp] "+r"(rp),
        [pn] "+r"(pn)
      : [s1] "r"(s1), [s3] "r"(s3), [t] "m"(t), [cstep] "m"(pf0_step), [rstep] "m"(pf1_step), [k1] "m"(k1)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",
        "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

#undef DK_BROW
#undef DK_BSTEP
#undef DK_BSTORE2
#undef DK_A0
#undef DK_A1
#undef DK_A2
#undef DK_A3
#undef DK_A4
#undef DK_A5
#undef DK_A6
#undef DK_A7
#undef DK_A8
#undef DK_A9
#undef DK_A10
#undef DK_A11
#undef DK_A12
#undef DK_A13

// Edge tiles of at most 7 rows (2R accumulators GCC keeps in registers): the last rows of M
// would otherwise cost a whole 14-row tile.
template <int R>
void tile_rx32(int64_t kp, const uint32_t* A, const uint32_t* B, float* t) {
  const int64_t pitch = gemm::a_pitch(kp);
  __m512 c[R][2];
  for (int i = 0; i < R; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kp; ++k) {
    const __m512bh b0 = as_bh(_mm512_load_si512(B + 32 * k)), b1 = as_bh(_mm512_load_si512(B + 32 * k + 16));
    for (int i = 0; i < R; ++i) {
      const __m512bh a = as_bh(_mm512_set1_epi32(int(A[i * pitch + k])));
      c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
      c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
    }
  }
  for (int i = 0; i < R; ++i) {
    _mm512_store_ps(t + i * NR, c[i][0]);
    _mm512_store_ps(t + i * NR + 16, c[i][1]);
  }
}

inline __mmask16 lanes(int n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }

void kernel_14x32(int64_t kp, const uint32_t* A, const uint32_t* B, int m, int n, const Tile& e) {
  alignas(64) float t[MR * NR];
  switch (m) {
    case 1: tile_rx32<1>(kp, A, B, t); break;
    case 2: tile_rx32<2>(kp, A, B, t); break;
    case 3: tile_rx32<3>(kp, A, B, t); break;
    case 4: tile_rx32<4>(kp, A, B, t); break;
    case 5: tile_rx32<5>(kp, A, B, t); break;
    case 6: tile_rx32<6>(kp, A, B, t); break;
    case 7: tile_rx32<7>(kp, A, B, t); break;
    default: {
      const void* pf0 = e.last ? static_cast<const void*>(e.C) : e.acc;
      const int64_t s0 = e.last ? e.ldc * 2 : e.ldacc * 4;
      const void* pf1 = e.last && e.residual ? static_cast<const void*>(e.residual) : e.acc ? e.acc : pf0;
      const int64_t s1 = e.last && e.residual ? e.ldr * 2 : e.acc ? e.ldacc * 4 : s0;
      tile_14x32(kp, A, B, t, pf0, s0, pf1, s1, m);
    }
  }
  const __mmask16 m0 = lanes(n), m1 = lanes(n - 16);
  if (!e.last) {  // an earlier K block: keep the running sum in fp32
    for (int i = 0; i < m; ++i) {
      float* a = e.acc + i * e.ldacc;
      __m512 r0 = _mm512_load_ps(t + i * NR), r1 = _mm512_load_ps(t + i * NR + 16);
      if (e.acc_load) {
        r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, a));
        r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, a + 16));
      }
      _mm512_mask_storeu_ps(a, m0, r0);
      _mm512_mask_storeu_ps(a + 16, m1, r1);
    }
    return;
  }
  const __m512 valpha = _mm512_set1_ps(e.alpha);
  const bool use_alpha = e.alpha != 1.f;
  const __m512 bias0 = e.bias ? load_bf16(m0, e.bias) : _mm512_setzero_ps();
  const __m512 bias1 = e.bias ? load_bf16(m1, e.bias + 16) : _mm512_setzero_ps();
  for (int i = 0; i < m; ++i) {
    __m512 r0 = _mm512_load_ps(t + i * NR), r1 = _mm512_load_ps(t + i * NR + 16);
    if (e.acc_load) {
      const float* a = e.acc + i * e.ldacc;
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, a));
      r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, a + 16));
    }
    if (use_alpha) { r0 = _mm512_mul_ps(r0, valpha); r1 = _mm512_mul_ps(r1, valpha); }
    if (e.bias) { r0 = _mm512_add_ps(r0, bias0); r1 = _mm512_add_ps(r1, bias1); }
    if (e.residual) {
      const uint16_t* rr = e.residual + i * e.ldr;
      r0 = _mm512_add_ps(r0, load_bf16(m0, rr));
      r1 = _mm512_add_ps(r1, load_bf16(m1, rr + 16));
    }
    uint16_t* c = e.C + i * e.ldc;
    // vcvtneps2bf16 rounds to nearest even (NaN stays NaN).
    _mm256_mask_storeu_epi16(c, m0, (__m256i)_mm512_cvtneps_pbh(r0));
    _mm256_mask_storeu_epi16(c + 16, m1, (__m256i)_mm512_cvtneps_pbh(r1));
  }
}

// In-register transpose of 16 rows of 16 32-bit words (r[i][j] -> r[j][i]).
inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // Within each 128-bit lane L, u[4g + j] holds rows 4g..4g+3 of column 4L + j.
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i x0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), x1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
    const __m512i y0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88), y1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
    r[4 + j] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
  }
}

// Transposed B (weights [N][K]): a row's consecutive bf16 pairs are already the 32-bit words the
// panel wants, so packing is a 16 x 16 transpose of words per 16 columns.
void pack_bt(int64_t len, const uint16_t* const* rows, int ncols, uint32_t* dst) {
  static const uint32_t kZeros[16] = {};
  const int64_t full = len / 2, kp = (len + 1) / 2;
  for (int g = 0; g < NR; g += 16) {
    const uint32_t* src[16];
    int64_t step[16];
    __mmask16 live = 0;
    for (int i = 0; i < 16; ++i) {
      const bool on = g + i < ncols && rows[g + i];
      src[i] = on ? reinterpret_cast<const uint32_t*>(rows[g + i]) : kZeros;  // bf16 rows: 2-byte aligned
      step[i] = on ? 1 : 0;
      live = __mmask16(live | (on ? 1u << i : 0u));
    }
    for (int64_t p0 = 0; p0 < full; p0 += 16) {
      const int plen = full - p0 < 16 ? int(full - p0) : 16;
      const __mmask16 in_mask = lanes(plen);
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const uint32_t* p = src[i] + p0 * step[i];
        _mm_prefetch(reinterpret_cast<const char*>(p + 128 * step[i]), _MM_HINT_T0);
        r[i] = _mm512_maskz_loadu_epi32((live >> i) & 1 ? in_mask : __mmask16(0), p);
      }
      transpose16(r);
      uint32_t* d = dst + p0 * NR + g;
      for (int kk = 0; kk < plen; ++kk) _mm512_storeu_si512(d + kk * NR, r[kk]);
    }
    if (kp > full) {  // odd len: the last pair is (element len-1, 0)
      uint32_t* d = dst + full * NR + g;
      for (int i = 0; i < 16; ++i) d[i] = (live >> i) & 1 ? rows[g + i][len - 1] : 0u;
    }
  }
}

// Row-major B ([K][N]): interleave rows 2p and 2p+1 column by column (low half = even k).
void pack_b(int64_t len, const uint16_t* B, int64_t ldb, int ncols, uint32_t* dst) {
  const __mmask16 mk0 = lanes(ncols), mk1 = lanes(ncols - 16);
  for (int64_t p = 0; 2 * p < len; ++p, dst += NR) {
    const uint16_t* r0 = B + 2 * p * ldb;
    const uint16_t* r1 = 2 * p + 1 < len ? r0 + ldb : nullptr;
    for (int g = 0; g < 2; ++g) {
      const __mmask16 mk = g ? mk1 : mk0;
      __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r0 + 16 * g));
      if (r1) lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r1 + 16 * g)), 16));
      _mm512_storeu_si512(dst + 16 * g, lo);
    }
  }
}

float dot(const uint16_t* a, const uint16_t* b, int64_t K) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    s0 = _mm512_dpbf16_ps(s0, as_bh(_mm512_loadu_si512(a + k)), as_bh(_mm512_loadu_si512(b + k)));
    s1 = _mm512_dpbf16_ps(s1, as_bh(_mm512_loadu_si512(a + k + 32)), as_bh(_mm512_loadu_si512(b + k + 32)));
  }
  for (; k < K; k += 32) {
    const int64_t n = K - k < 32 ? K - k : 32;
    const __mmask32 mk = n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1);
    s0 = _mm512_dpbf16_ps(s0, as_bh(_mm512_maskz_loadu_epi16(mk, a + k)), as_bh(_mm512_maskz_loadu_epi16(mk, b + k)));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void row_times(const uint16_t* a, int64_t K, const uint16_t* B, int64_t ldb, int64_t n, float* acc) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const __mmask16 mk = lanes(int(n - j0 < 16 ? n - j0 : 16));
    __m512 s = _mm512_maskz_loadu_ps(mk, acc + j0);
    for (int64_t k = 0; k < K; k += 2) {
      const bool pair = k + 1 < K;
      const uint32_t ap = uint32_t(a[k]) | (pair ? uint32_t(a[k + 1]) << 16 : 0u);
      const uint16_t* r0 = B + k * ldb + j0;
      __m512i b = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r0));
      if (pair) b = _mm512_or_si512(b, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r0 + ldb)), 16));
      s = _mm512_dpbf16_ps(s, as_bh(_mm512_set1_epi32(int(ap))), as_bh(b));
    }
    _mm512_mask_storeu_ps(acc + j0, mk, s);
  }
}

}  // namespace

Kernel kernel_avx512bf16() {
  Kernel k;
  k.mr = MR;
  k.nr = NR;
  k.kernel = kernel_14x32;
  k.pack_bt = pack_bt;
  k.pack_b = pack_b;
  k.dot = dot;
  k.row_times = row_times;
  k.name = "avx512bf16 14x32";
  return k;
}
#else
// Compiler without AVX512_BF16: never selected (gemm_bf16 falls back to fp32).
Kernel kernel_avx512bf16() { return Kernel(); }
#endif

}  // namespace dk::cpu::gemm16
