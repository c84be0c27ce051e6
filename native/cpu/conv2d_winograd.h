// Winograd convolution, fp32 F(4x4, 3x3) (conv2d_winograd.cc) and bf16 F(2x2, 3x3)
// (conv2d_winograd_bf16.cc), and the per-ISA tile transforms they call (conv2d_winograd_tiles.inc,
// compiled once per ISA file). Internal to the CPU backend.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace dk::cpu::wino {

constexpr int kOut = 4;                 // output tile edge (m)
constexpr int kTile = kOut + 2;         // input tile edge (alpha = m + r - 1)
constexpr int kPoints = kTile * kTile;  // 36 elementwise products = 36 GEMMs

// The three transforms, vectorised over channels (16 at a time, any count).
struct Transforms {
  // win[36]: the 6x6 input window's pixels, each pointing at channel 0 of this range, or null
  // (padding). Writes B^T d B for channels [0, len): point a, channel c at dst[a*astride + c*cstride].
  void (*input)(const float* const* win, int64_t len, float* dst, int64_t astride, int64_t cstride);
  // m: the 36 products, point a at m + a*mstride, channels [0, len). Writes A^T m A (+ bias[c]
  // + res[i][c]) to y[i] for the 16 output pixels i (row-major 4x4); a null y[i] is skipped
  // (outside the image), res may be null (no residual) and so may bias.
  void (*output)(const float* m, int64_t mstride, float* const* y, const float* const* res, const float* bias,
                 int64_t len);
  // g: one output channel's 3x3 taps (OHWI), tap t at g + t*tap_stride, channels [0, len).
  // Writes G g G^T: point a, channel c at dst[a*astride + c].
  void (*weight)(const float* g, int64_t tap_stride, int64_t len, float* dst, int64_t astride);
};

// The bf16 path's F(2x2, 3x3) transforms (fp32 arithmetic, bf16 in and out). input: bf16 window,
// bf16 A-panel rows (cstride 1). output: fp32 products, bf16 y / residual / bias. weight: one
// input-channel pair of a bf16 B panel ([pair][width] words, see weight_pairs).
struct TransformsBf16 {
  void (*input)(const uint16_t* const* win, int64_t len, uint16_t* dst, int64_t astride, int64_t cstride);
  void (*output)(const float* m, int64_t mstride, uint16_t* const* y, const uint16_t* const* res,
                 const uint16_t* bias, int64_t len);
  void (*weight)(const uint32_t* g, int64_t tap_stride, int width, uint32_t* dst, int64_t astride);
};

Transforms transforms_generic();
#if defined(DK_X86)
Transforms transforms_avx2();
Transforms transforms_avx512();
TransformsBf16 transforms_bf16_avx512();  // only run where AVX512_BF16 is (the bf16 micro-kernel)
#endif

}  // namespace dk::cpu::wino

namespace dk::cpu {
enum class ConvAlgo : int { Auto = 0, Direct = 1, Winograd = 2 };
// Forces a path for every later conv2d_nhwc (Auto: per shape). Starts from DIFFUSEKIT_CONV_ALGO.
void set_conv_algo(ConvAlgo a);
ConvAlgo conv_algo_setting();
// The path conv2d_nhwc takes for these params: the forced global setting, else the call's
// request (p.algo), else the per-shape choice; never Winograd where it does not apply.
ConvAlgo conv2d_algo(const Conv2dParams& p);
// The shared choice behind both: Direct where Winograd does not apply, else the forced setting,
// else the call's request, else Winograd when channels >= 32 and there are >= min_tiles output
// tiles of tile x tile pixels.
ConvAlgo choose_conv_algo(const Conv2dParams& p, int tile, int64_t min_tiles);
// Stride 1, dilation 1, 3x3: what the Winograd path handles.
bool winograd_applies(const Conv2dParams& p);
void conv2d_winograd(const Conv2dParams& p, const float* x, const float* w, const float* bias,
                     const float* residual, float* y);
// bf16 (needs cpu_features().avx512_bf16): F(2x2, 3x3) on the vdpbf16ps micro-kernel.
ConvAlgo conv2d_algo_bf16(const Conv2dParams& p);
void conv2d_winograd_bf16(const Conv2dParams& p, const uint16_t* x, const uint16_t* w, const uint16_t* bias,
                          const uint16_t* residual, uint16_t* y);
}  // namespace dk::cpu
