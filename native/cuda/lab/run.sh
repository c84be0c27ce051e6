#!/usr/bin/env bash
# Runs the lab built by build.sh, each part in its own process so that a faulting kernel (a
# sticky CUDA error) cannot hide the results of the others:
#   1. tile_layout_check                      host-only index-math check
#   2. gemm_lab_sm90 --no-bench                plain sm_90 build: auto(=mma.sync), mma, simt checks
#   3. gemm_lab --no-bench --paths auto,wgmma3,wgmma4   sm_90a: wgmma checks
#   4. gemm_lab --no-check [--paths mma if 3 failed] "$@"   timings (pass --peak TFLOPS here)
# LAB_SANITIZE=1 adds compute-sanitizer memcheck over the quick checks of both builds.
# Exit status is non-zero when any part failed. Each part has a time limit (LAB_TIMEOUT, 180 s).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
OUT="${LAB_OUT:-$ROOT/build/lab}"
TO="${LAB_TIMEOUT:-180}"
rc=0
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv 2>/dev/null || true

echo "=== 1. tile_layout_check"
timeout "$TO" "$OUT/tile_layout_check" || rc=1

echo "=== 2. gemm_lab_sm90 --no-bench (mma.sync / SIMT kernels)"
timeout "$TO" "$OUT/gemm_lab_sm90" --no-bench || rc=1

echo "=== 3. gemm_lab --no-bench --paths auto,wgmma3,wgmma4"
wg_ok=1
timeout "$TO" "$OUT/gemm_lab" --no-bench --paths auto,wgmma3,wgmma4 || { rc=1; wg_ok=0; }

echo "=== 4. gemm_lab timings $*"
if [ "$wg_ok" = 1 ]; then
  timeout "$TO" "$OUT/gemm_lab" --no-check "$@" || rc=1
else
  echo "(wgmma checks failed: timing mma.sync only)"
  timeout "$TO" "$OUT/gemm_lab" --no-check --paths mma "$@" || rc=1
fi

if [ -n "${LAB_SANITIZE:-}" ] && command -v compute-sanitizer >/dev/null 2>&1; then
  echo "=== 5. compute-sanitizer memcheck --quick"
  timeout "$TO" compute-sanitizer --tool memcheck --error-exitcode 9 "$OUT/gemm_lab_sm90" --quick || rc=1
  timeout "$TO" compute-sanitizer --tool memcheck --error-exitcode 9 "$OUT/gemm_lab" --quick --paths wgmma3,wgmma4 || rc=1
fi
echo "=== lab rc=$rc"
exit $rc
