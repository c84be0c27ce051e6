// Winograd F(4x4, 3x3) convolution (conv2d_winograd.cc) and the per-ISA tile transforms it calls
// (conv2d_winograd_tiles.inc, compiled once per ISA file). Internal to the CPU backend.
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

Transforms transforms_generic();
#if defined(DK_X86)
Transforms transforms_avx2();
Transforms transforms_avx512();
#endif

}  // namespace dk::cpu::wino

namespace dk::cpu {
enum class ConvAlgo : int { Auto = 0, Direct = 1, Winograd = 2 };
// Forces a path for every later conv2d_nhwc (Auto: per shape). Starts from DIFFUSEKIT_CONV_ALGO.
void set_conv_algo(ConvAlgo a);
ConvAlgo conv_algo_setting();
// The path conv2d_nhwc takes for these params under the current setting.
ConvAlgo conv2d_algo(const Conv2dParams& p);
// Stride 1, dilation 1, 3x3: what the Winograd path handles.
bool winograd_applies(const Conv2dParams& p);
void conv2d_winograd(const Conv2dParams& p, const float* x, const float* w, const float* bias,
                     const float* residual, float* y);
}  // namespace dk::cpu
