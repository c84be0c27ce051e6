// Shared between gemm.cc (blocking, threading), conv2d.cc (implicit GEMM) and the ISA files
// gemm_avx512.cc / gemm_avx2.cc (register-blocked micro-kernels and packing routines).
//
// Packed layouts: a B micro-panel is [kc][nr] (BLIS style). An A micro-panel is either [kc][mr]
// (interleaved: column k of the mr rows) or, for kernels with a_rows, mr rows of kc floats at a
// pitch of a_pitch(kc) floats (packing is then a plain copy per row, no transpose; the pitch is
// an odd number of cache lines so the mr row streams fall in different L1 sets). Rows past the
// matrix edge are zero. The micro-kernel keeps the mr x nr C tile in registers over the whole kc
// loop and writes it once, applying the epilogue.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace dk::cpu::gemm {

// What the micro-kernel does when it writes its tile (m x n valid of mr x nr):
//   C = alpha * acc + (beta != 0 ? beta * C : 0) + bias[j] + residual[i, j]
// bias / residual may be null. beta == 0 never reads C. Pointers are already offset to the tile.
struct TileEpi {
  float alpha = 1.f;
  float beta = 0.f;
  const float* bias = nullptr;
  const float* residual = nullptr;
  int64_t ldr = 0;
};

using KernelFn = void (*)(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int m, int n,
                          const TileEpi& e);
// dst[k * width + i] = rows[i][k] for i < nrows, k < kc; lanes nrows..width-1 are zero (also when
// rows[i] is null). width is the kernel's mr (A panels) or nr (B panels of a transposed B).
using PackRowsFn = void (*)(int64_t kc, const float* const* rows, int nrows, int width, float* dst);

struct Kernel {
  int mr = 0, nr = 0;
  KernelFn kernel = nullptr;
  PackRowsFn pack_rows = nullptr;  // B panels of a transposed B, and interleaved A panels
  bool a_rows = false;             // A panels row-major at a_pitch(kc) (see above)
  const char* name = "";
};

// Floats between rows of a row-major A panel: >= kc, a whole odd number of 64-byte lines.
inline int64_t a_pitch(int64_t kc) {
  int64_t lines = (kc + 15) / 16;
  return (lines | 1) * 16;
}
inline int64_t a_panel_floats(const Kernel& kr, int64_t kc) {
  return kr.a_rows ? kr.mr * a_pitch(kc) : kr.mr * kc;
}
// Writes columns [k0, k0+len) of an A panel (of depth kc) from row pointers that point at column
// k0; rows i >= nrows or with a null pointer get zeros.
void pack_a_columns(const Kernel& kr, int64_t kc, int64_t k0, int64_t len, const float* const* rows, int nrows,
                    float* panel);

Kernel kernel_generic();
#if defined(DK_X86)
Kernel kernel_avx2();
Kernel kernel_avx512();
#endif
// The best kernel for cpu_features().isa (DIFFUSEKIT_ISA caps it).
const Kernel& select_kernel();

constexpr int kMaxMR = 16;

// Cache blocking (floats): KC deep, MC rows of A per L2 block, NC columns of B per slab.
// Zero fields keep the defaults; the lab sets these when tuning.
struct Blocking {
  int64_t kc = 0, mc = 0, nc = 0;
};
Blocking& blocking_override();
// Replaces the dispatched kernel (lab only: comparing tiles and ISA paths in one process).
void set_kernel_for_lab(const Kernel& k);  // the widest register tile any ISA file uses (for stack row tables)

// Source of op(A) for the driver: fills one A micro-panel (rows i0..i0+rows-1, columns
// k0..k0+kc-1) in the kernel's layout (pack_a_columns), zero beyond `rows`. sgemm packs plain matrices; conv2d
// gathers input patches here, which is what makes it an implicit GEMM.
struct ASource {
  virtual ~ASource() = default;
  // Row i of op(A) when it is contiguous in k (enables the few-rows dot-product path), else null.
  virtual const float* row(int64_t) const { return nullptr; }
  virtual void pack(const Kernel& kr, int64_t i0, int rows, int64_t k0, int64_t kc, float* dst) const = 0;
  // Hint: the same region will be packed soon (bring it towards L2). Optional.
  virtual void prefetch(int64_t /*i0*/, int /*rows*/, int64_t /*k0*/, int64_t /*kc*/) const {}
};

// Prefetches the cache lines of n floats at p towards L2.
inline void prefetch_span(const float* p, int64_t n) {
  if (n <= 0) return;
  for (int64_t k = 0; k < n; k += 16) __builtin_prefetch(p + k, 0, 2);
  __builtin_prefetch(p + n - 1, 0, 2);
}

// C[M,N] = alpha * A[M,K] @ op(B)[K,N] + beta * C (+ ep), multithreaded, one problem.
// op(B) is B[K,N] with leading dim ldb, or B[N,K] when transB.
void gemm_driver(int64_t M, int64_t N, int64_t K, float alpha, const ASource& a, const float* B, int64_t ldb,
                 bool transB, float beta, float* C, int64_t ldc, const GemmEpilogue& ep);

}  // namespace dk::cpu::gemm
