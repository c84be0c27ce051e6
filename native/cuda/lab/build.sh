#!/usr/bin/env bash
# Builds the GEMM / conv2d lab (not part of the addon) into build/lab/ (or $LAB_OUT):
#   tile_layout_check  host-only check of the smem/ldmatrix/wgmma index math (runs without a GPU)
#   gemm_lab           sm_90a build: wgmma + mma.sync + SIMT kernels (cuBLAS timings when it links)
#   gemm_lab_sm90      plain sm_90 build, as the addon's CMake targets build it: no wgmma bodies,
#                      so "auto" must fall back to mma.sync
# Needs nvcc (CUDA 12.x/13.x), no network. From the repository root:
#   native/cuda/lab/build.sh && native/cuda/lab/run.sh --peak 989
# LAB_ARCH overrides the main build's target (default: -gencode arch=compute_90a,code=sm_90a).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
OUT="${LAB_OUT:-$ROOT/build/lab}"
ARCH="${LAB_ARCH:--gencode arch=compute_90a,code=sm_90a}"
NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
mkdir -p "$OUT"
cd "$ROOT"

SRC=(native/cuda/lab/gemm_lab.cu native/cuda/gemm.cu native/cuda/conv2d.cu native/cuda/runtime.cu)
FLAGS=(-O3 -std=c++17 -I native)

t0=$(date +%s)
"$NVCC" -std=c++17 -I native -o "$OUT/tile_layout_check" native/cuda/lab/tile_layout_check.cu &
p_check=$!

# main lab, with cuBLAS when it builds and links
(
  if "$NVCC" "${FLAGS[@]}" $ARCH -DDK_LAB_CUBLAS -o "$OUT/gemm_lab" "${SRC[@]}" -lcublas \
       >"$OUT/build_cublas.log" 2>&1; then
    echo "gemm_lab: built with cuBLAS"
  else
    echo "gemm_lab: cuBLAS build failed (see $OUT/build_cublas.log), building without it"
    "$NVCC" "${FLAGS[@]}" $ARCH -o "$OUT/gemm_lab" "${SRC[@]}"
  fi
) &
p_main=$!

"$NVCC" "${FLAGS[@]}" -arch=sm_90 -o "$OUT/gemm_lab_sm90" "${SRC[@]}" &
p_sm90=$!

rc=0
wait $p_check || rc=1
wait $p_main || rc=1
wait $p_sm90 || rc=1
echo "build: $(( $(date +%s) - t0 )) s, rc=$rc"

# Register / shared-memory report of the tile kernels (sm_90a), for the record.
if [ "$rc" = 0 ] && [ -z "${LAB_SKIP_PTXAS:-}" ]; then
  "$NVCC" -std=c++17 -O3 $ARCH -I native -Xptxas -v -c native/cuda/gemm.cu -o "$OUT/gemm_ptxas.o" 2>&1 |
    grep -E "Compiling entry|Used|spill" > "$OUT/ptxas_gemm.txt" || true
fi
# SASS sanity: the wgmma kernels must contain HGMMA instructions.
if [ "$rc" = 0 ] && command -v cuobjdump >/dev/null 2>&1; then
  n=$(cuobjdump --dump-sass "$OUT/gemm_lab" 2>/dev/null | grep -c HGMMA || true)
  echo "HGMMA instructions in gemm_lab: $n"
fi
exit $rc
