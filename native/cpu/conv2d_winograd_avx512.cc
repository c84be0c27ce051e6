// The Winograd tile transforms compiled for AVX512 (see conv2d_winograd_tiles.inc).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "conv2d_winograd.h"

// 64-byte vectors passed between inline helpers; nothing crosses an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dk::cpu::wino {
namespace {
#include "conv2d_winograd_tiles.inc"
}  // namespace

Transforms transforms_avx512() { return make_transforms(); }
TransformsBf16 transforms_bf16_avx512() { return make_transforms_bf16(); }

}  // namespace dk::cpu::wino
