// AVX-512 micro-kernel and packing for the float32 GEMM (compiled with -mavx512f/bw/dq/vl -mfma).
// The tile is 14 x 32 floats in 28 zmm accumulators; per k it loads two vectors of the B panel
// and broadcasts 14 values of A: 28 FMAs to 16 loads, and the remaining 4 registers hold B and
// the broadcasts. On Zen 4 it runs at ~97% of the FMA peak on cache-resident panels.
#include <immintrin.h>

#include <cstdint>

#include "gemm_internal.h"

// GCC 12 warns about _mm512_undefined_ps() inside its own shuffle intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dk::cpu::gemm {
namespace {

constexpr int MR = 14, NR = 32;

// One k step loads two B vectors, then for each of the 14 rows broadcasts A and issues two FMAs.
// Accumulators are zmm0..zmm27 (row r in zmm(2r), zmm(2r+1)); B in zmm28/29; A in zmm30/31.
// A is 14 rows at a pitch (Kernel::a_rows): the rows are addressed from three bases (rows 0, 3,
// 10) and two indices (1 and 3 pitches), since x86 scales are only 1, 2, 4 and 8.
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
#define DK_RROW(D, ADDR, c0, c1, bc)                       \
  "vbroadcastss " D ADDR ", %%zmm" #bc "\n\t"              \
  "vfmadd231ps %%zmm28, %%zmm" #bc ", %%zmm" #c0 "\n\t"    \
  "vfmadd231ps %%zmm29, %%zmm" #bc ", %%zmm" #c1 "\n\t"
#define DK_RSTEP(D, BOFF)                                                                              \
  "vmovaps " BOFF "(%[b]), %%zmm28\n\t"                                                                \
  "vmovaps " BOFF "+64(%[b]), %%zmm29\n\t"                                                             \
  DK_RROW(D, DK_A0, 0, 1, 30) DK_RROW(D, DK_A1, 2, 3, 31) DK_RROW(D, DK_A2, 4, 5, 30)                  \
  DK_RROW(D, DK_A3, 6, 7, 31) DK_RROW(D, DK_A4, 8, 9, 30) DK_RROW(D, DK_A5, 10, 11, 31)                \
  DK_RROW(D, DK_A6, 12, 13, 30) DK_RROW(D, DK_A7, 14, 15, 31) DK_RROW(D, DK_A8, 16, 17, 30)            \
  DK_RROW(D, DK_A9, 18, 19, 31) DK_RROW(D, DK_A10, 20, 21, 30) DK_RROW(D, DK_A11, 22, 23, 31)          \
  DK_RROW(D, DK_A12, 24, 25, 30) DK_RROW(D, DK_A13, 26, 27, 31)
#define DK_TSTORE2(r, c0, c1) \
  "vmovaps %%zmm" #c0 ", 128*" #r "(%[a3])\n\t" "vmovaps %%zmm" #c1 ", 128*" #r "+64(%[a3])\n\t"

// Accumulates the 14 x 32 product of an A panel (rows at a_pitch(kc)) and a B panel ([kc][32])
// into t[14][32] (64-byte aligned). Written in assembly because GCC spills some of the 28
// accumulators when the loop is written with intrinsics, which costs about a third of the speed.
// The C tile (and the residual the epilogue adds) are read after the loop: their rows are
// prefetched one per 4-k iteration, spread out so that the prefetches are not dropped in a burst.
inline void tile_14x32(int64_t kc, const float* A, const float* B, float* t, const float* C, int64_t ldc,
                       const float* R, int64_t ldr, int m) {
  const int64_t s1 = a_pitch(kc) * 4, s3 = 3 * s1;
  const char* a0 = reinterpret_cast<const char*>(A);
  const char* a3 = a0 + s3;
  const char* a10 = a0 + 10 * s1;
  int64_t k = kc >> 2, pn = m;
  const int64_t k1 = kc & 3, ldcb = ldc * 4, ldrb = R ? ldr * 4 : ldc * 4;
  const char* cp = reinterpret_cast<const char*>(C);
  const char* rp = reinterpret_cast<const char*>(R ? R : C);
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
      "prefetchw 64(%[cp])\n\t"
      "prefetchw 127(%[cp])\n\t"
      "prefetcht0 (%[rp])\n\t"
      "prefetcht0 64(%[rp])\n\t"
      "prefetcht0 127(%[rp])\n\t"
      "add %[ldcb], %[cp]\n\t"
      "add %[ldrb], %[rp]\n\t"
      "dec %[pn]\n"
      "5:\n\t"
      "prefetcht0 1024(%[b])\n\t"
      DK_RSTEP("0", "0")
      "prefetcht0 1088(%[b])\n\t"
      DK_RSTEP("4", "128")
      DK_RSTEP("8", "256")
      DK_RSTEP("12", "384")
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
      DK_RSTEP("0", "0")
      "add $4, %[a0]\n\t"
      "add $4, %[a3]\n\t"
      "add $4, %[a10]\n\t"
      "add $128, %[b]\n\t"
      "dec %[k]\n\t"
      "jnz 3b\n"
      "4:\n\t"
      "mov %[t], %[a3]\n\t"
      DK_TSTORE2(0, 0, 1) DK_TSTORE2(1, 2, 3) DK_TSTORE2(2, 4, 5) DK_TSTORE2(3, 6, 7) DK_TSTORE2(4, 8, 9)
      DK_TSTORE2(5, 10, 11) DK_TSTORE2(6, 12, 13) DK_TSTORE2(7, 14, 15) DK_TSTORE2(8, 16, 17)
      DK_TSTORE2(9, 18, 19) DK_TSTORE2(10, 20, 21) DK_TSTORE2(11, 22, 23) DK_TSTORE2(12, 24, 25)
      DK_TSTORE2(13, 26, 27)
      : [a0] "+r"(a0), [a3] "+r"(a3), [a10] "+r"(a10), [b] "+r"(B), [k] "+r"(k), [cp] "+r"(cp), [rp] "+r"(rp),
        [pn] "+r"(pn)
      : [s1] "r"(s1), [s3] "r"(s3), [t] "m"(t), [ldcb] "m"(ldcb), [ldrb] "m"(ldrb), [k1] "m"(k1)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",
        "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

#undef DK_RROW
#undef DK_RSTEP
#undef DK_TSTORE2
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

// Edge tiles of at most 7 rows (R x 32, 2R accumulators: few enough for GCC to keep in
// registers): the last rows of M would otherwise cost a whole 14-row tile.
template <int R>
void tile_rx32(int64_t kc, const float* A, const float* B, float* t) {
  const int64_t pitch = a_pitch(kc);
  __m512 c[R][2];
  for (int i = 0; i < R; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(B + 32 * k), b1 = _mm512_load_ps(B + 32 * k + 16);
    for (int i = 0; i < R; ++i) {
      const __m512 a = _mm512_set1_ps(A[i * pitch + k]);
      c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
    }
  }
  for (int i = 0; i < R; ++i) {
    _mm512_store_ps(t + i * NR, c[i][0]);
    _mm512_store_ps(t + i * NR + 16, c[i][1]);
  }
}

void kernel_14x32(int64_t kc, const float* A, const float* B, float* C, int64_t ldc, int m, int n,
                  const TileEpi& e) {
  alignas(64) float t[MR * NR];
  switch (m) {
    case 1: tile_rx32<1>(kc, A, B, t); break;
    case 2: tile_rx32<2>(kc, A, B, t); break;
    case 3: tile_rx32<3>(kc, A, B, t); break;
    case 4: tile_rx32<4>(kc, A, B, t); break;
    case 5: tile_rx32<5>(kc, A, B, t); break;
    case 6: tile_rx32<6>(kc, A, B, t); break;
    case 7: tile_rx32<7>(kc, A, B, t); break;
    default: tile_14x32(kc, A, B, t, C, ldc, e.residual, e.ldr, m); break;
  }

  const __mmask16 m0 = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  const __mmask16 m1 = n >= 32 ? __mmask16(0xFFFF) : n <= 16 ? __mmask16(0) : __mmask16((1u << (n - 16)) - 1);
  const __m512 valpha = _mm512_set1_ps(e.alpha), vbeta = _mm512_set1_ps(e.beta);
  const __m512 bias0 = e.bias ? _mm512_maskz_loadu_ps(m0, e.bias) : _mm512_setzero_ps();
  const __m512 bias1 = e.bias ? _mm512_maskz_loadu_ps(m1, e.bias + 16) : _mm512_setzero_ps();
  const bool use_beta = e.beta != 0.f, beta_one = e.beta == 1.f, use_alpha = e.alpha != 1.f;
  for (int i = 0; i < m; ++i) {
    float* crow = C + i * ldc;
    __m512 r0 = _mm512_load_ps(t + i * NR), r1 = _mm512_load_ps(t + i * NR + 16);
    if (use_alpha) { r0 = _mm512_mul_ps(r0, valpha); r1 = _mm512_mul_ps(r1, valpha); }
    if (use_beta) {
      __m512 c0 = _mm512_maskz_loadu_ps(m0, crow), c1 = _mm512_maskz_loadu_ps(m1, crow + 16);
      if (beta_one) { r0 = _mm512_add_ps(r0, c0); r1 = _mm512_add_ps(r1, c1); }
      else { r0 = _mm512_fmadd_ps(c0, vbeta, r0); r1 = _mm512_fmadd_ps(c1, vbeta, r1); }
    }
    if (e.bias) { r0 = _mm512_add_ps(r0, bias0); r1 = _mm512_add_ps(r1, bias1); }
    if (e.residual) {
      const float* rr = e.residual + i * e.ldr;
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, rr));
      r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, rr + 16));
    }
    _mm512_mask_storeu_ps(crow, m0, r0);
    _mm512_mask_storeu_ps(crow + 16, m1, r1);
  }
}

// In-register transpose of 16 rows of 16 floats (r[i][j] -> r[j][i]).
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // Within each 128-bit lane, u[4g + j] now holds column j (of that lane's 4) for rows 4g..4g+3.
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  // Gather lane L of u[j], u[4+j], u[8+j], u[12+j] into output column 4L + j.
  for (int j = 0; j < 4; ++j) {
    __m512 x0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), x1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    __m512 y0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88), y1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
    r[4 + j] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
  }
}

void pack_rows_avx512(int64_t kc, const float* const* rows, int nrows, int width, float* dst) {
  static const float kZeros[16] = {};
  for (int g = 0; g < width; g += 16) {
    const int lanes = width - g < 16 ? width - g : 16;
    const __mmask16 out_mask = __mmask16((1u << lanes) - 1);
    // Absent rows read nothing: a zero mask (no access, no fault) at a harmless address.
    const float* src[16];
    int64_t step[16];
    __mmask16 live = 0;
    for (int i = 0; i < 16; ++i) {
      const bool on = i < lanes && g + i < nrows && rows[g + i];
      src[i] = on ? rows[g + i] : kZeros;
      step[i] = on ? 1 : 0;
      live = __mmask16(live | (on ? 1u << i : 0u));
    }
    for (int64_t k0 = 0; k0 < kc; k0 += 16) {
      const int klen = kc - k0 < 16 ? int(kc - k0) : 16;
      const __mmask16 in_mask = __mmask16((1u << klen) - 1);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        const float* p = src[i] + k0 * step[i];
        // The rows usually come from memory once per call (activations): fetch 512 bytes ahead.
        _mm_prefetch(reinterpret_cast<const char*>(p + 128 * step[i]), _MM_HINT_T0);
        r[i] = _mm512_maskz_loadu_ps((live >> i) & 1 ? in_mask : __mmask16(0), p);
      }
      transpose16(r);
      float* d = dst + k0 * width + g;
      if (lanes == 16) {
        for (int kk = 0; kk < klen; ++kk) _mm512_storeu_ps(d + kk * width, r[kk]);
      } else {
        // A full store of row kk spills into lanes 0.. of row kk+1, which the next store (in
        // ascending k) overwrites; only the call's last row needs the masked store.
        const int full = k0 + klen == kc ? klen - 1 : klen;
        for (int kk = 0; kk < full; ++kk) _mm512_storeu_ps(d + kk * width, r[kk]);
        for (int kk = full; kk < klen; ++kk) _mm512_mask_storeu_ps(d + kk * width, out_mask, r[kk]);
      }
    }
  }
}

}  // namespace

Kernel kernel_avx512() {
  Kernel k;
  k.mr = MR;
  k.nr = NR;
  k.kernel = kernel_14x32;
  k.pack_rows = pack_rows_avx512;
  k.a_rows = true;  // packing A is then a row copy; only B (transposed) needs pack_rows
  k.name = "avx512 14x32";
  return k;
}

}  // namespace dk::cpu::gemm
