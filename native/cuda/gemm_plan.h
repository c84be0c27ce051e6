// Knobs and introspection for the tiled GEMM / implicit-GEMM conv engine (gemm.cu, conv2d.cu).
// Plain C++ header: tests and benchmarks use it to force a kernel family and to see what ran.
#pragma once

namespace dk::cuda {

// Which kernel family float16/bfloat16 products use. Auto: wgmma on sm_90a builds running on a
// Hopper GPU (A row-major, B given as N x K, or conv), else mma.sync; both fall back to the SIMT
// kernel when a pointer or leading dimension is not 16-byte aligned. A forced family is used
// wherever it applies and falls back the same way elsewhere. float32 always uses SIMT.
// The initial value comes from DK_CUDA_GEMM_PATH = auto | simt | mma | wgmma.
enum class GemmPath : int { Auto = 0, Simt = 1, MmaSync = 2, Wgmma = 3 };
void set_gemm_path(GemmPath p);
GemmPath gemm_path();

// Pipeline depth of the wgmma kernel while both depths are being measured: 3 (two CTAs per SM),
// 4 (one CTA per SM, deeper prefetch), or 0 = choose per problem (4 when the output tiles cannot
// give every SM two CTAs, else 3). The initial value comes from DK_CUDA_WGMMA_STAGES (default 0).
void set_wgmma_stages(int stages);
int wgmma_stages();

// True when this build carries the sm_90a wgmma kernels and `device` can run them.
bool gemm_wgmma_available(int device);

// One line describing the last gemm/conv2d launch made by the calling thread
// (kernel family, tile, split-K factor, grid), for benchmarks and tests.
const char* gemm_last_plan();

}  // namespace dk::cuda
