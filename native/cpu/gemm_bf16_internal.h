// Shared between gemm_bf16.cc (blocking, threading), conv2d_bf16.cc (implicit GEMM),
// gemm_bf16_avx512.cc (vdpbf16ps micro-kernel and packing) and gemm_bf16_fallback.cc.
//
// vdpbf16ps multiplies bf16 pairs: each fp32 lane j gets a[2j]*b[2j] + a[2j+1]*b[2j+1]. So both
// packed operands are laid out in 32-bit units, each a (k even, k odd) pair of bf16:
//   B micro-panel: [kp][nr] pairs (column j's pair p at p*nr + j), kp = ceil(kc / 2);
//   A micro-panel: mr rows of bf16 at a pitch of gemm::a_pitch(kp) pairs (a plain row copy:
//                  pair p of row i is the 32-bit word i*pitch + p, broadcast with vbroadcastss).
// An odd kc pads the last pair with a zero on both sides (0 * pad could otherwise be NaN), and
// rows or columns past the matrix edge are zero.
#pragma once
#include <cstdint>

#include "gemm_internal.h"
#include "kernels.h"

namespace dk::cpu::gemm16 {

// What the micro-kernel does with its m x n tile (of mr x nr) once the kp pairs are summed.
// K is cut in blocks; sums of earlier blocks wait in an fp32 buffer (acc), never in bf16 C.
struct Tile {
  float alpha = 1.f;
  float* acc = nullptr;            // fp32 partial sums at leading dim ldacc, or null (one K block)
  int64_t ldacc = 0;
  bool acc_load = false;           // acc holds the earlier blocks' sums: add them
  bool last = true;                // last K block: write C, else store the running sum to acc
  const uint16_t* bias = nullptr;  // [n], last block only
  const uint16_t* residual = nullptr;
  int64_t ldr = 0;
  uint16_t* C = nullptr;           // bf16 output at leading dim ldc, rounded to nearest even
  int64_t ldc = 0;
};

using KernelFn = void (*)(int64_t kp, const uint32_t* Ap, const uint32_t* Bp, int m, int n, const Tile& t);
// B panel from a transposed B: rows[j] points at element k0 of B row j (column j of op(B)), len
// elements; columns j >= ncols (or null rows) are zero.
using PackBtFn = void (*)(int64_t len, const uint16_t* const* rows, int ncols, uint32_t* dst);
// B panel from a row-major B: rows k0 .. k0+len-1 at B, leading dim ldb, ncols columns.
using PackBFn = void (*)(int64_t len, const uint16_t* B, int64_t ldb, int ncols, uint32_t* dst);
// Few-row products (no packing): sum_k a[k] b[k]; and acc[j] += sum_k a[k] B[k*ldb + j], j < n.
using DotFn = float (*)(const uint16_t* a, const uint16_t* b, int64_t K);
using RowTimesFn = void (*)(const uint16_t* a, int64_t K, const uint16_t* B, int64_t ldb, int64_t n, float* acc);

struct Kernel {
  int mr = 0, nr = 0;
  KernelFn kernel = nullptr;
  PackBtFn pack_bt = nullptr;
  PackBFn pack_b = nullptr;
  DotFn dot = nullptr;
  RowTimesFn row_times = nullptr;
  const char* name = "";
};
#if defined(DK_X86)
Kernel kernel_avx512bf16();
#endif

// Source of op(A) (bf16): writes columns [k0, k0+kc) of rows i0.. i0+rows-1 into an A panel of
// mr rows at `pitch` bf16 elements; rows >= `rows` must be zero. The driver pads an odd kc.
struct ASource {
  virtual ~ASource() = default;
  // Row i of op(A) when contiguous in k (enables the few-rows path), else null.
  virtual const uint16_t* row(int64_t) const { return nullptr; }
  virtual void pack(int mr, int64_t i0, int rows, int64_t k0, int64_t kc, uint16_t* panel, int64_t pitch) const = 0;
};

// Copies len elements from rows[i] into row i of the panel at column off; i >= nrows or a null
// row gets zeros.
void pack_a_rows(int mr, const uint16_t* const* rows, int nrows, int64_t off, int64_t len, uint16_t* panel,
                 int64_t pitch);

// C[M,N] = alpha * op(A) @ op(B) (+ ep), multithreaded; needs cpu_features().avx512_bf16.
void gemm_driver(int64_t batch, int64_t M, int64_t N, int64_t K, float alpha, const ASource* const* a,
                 const uint16_t* B, int64_t ldb, int64_t strideB, bool transB, uint16_t* C, int64_t ldc,
                 int64_t strideC, const GemmEpilogueBf16& ep);

// Convert-to-fp32 paths for CPUs without AVX512_BF16 (or DIFFUSEKIT_ISA below avx512).
void gemm_fallback(int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                   const uint16_t* A, int64_t lda, int64_t strideA, const uint16_t* B, int64_t ldb, int64_t strideB,
                   uint16_t* C, int64_t ldc, int64_t strideC, const GemmEpilogueBf16& ep);
void conv2d_fallback(const Conv2dParams& p, const uint16_t* x, const uint16_t* w, const uint16_t* bias,
                     const uint16_t* residual, uint16_t* y);

}  // namespace dk::cpu::gemm16
