#!/usr/bin/env bash
# Runs the lab built by build.sh: the host layout check, the full sm_90a lab (checks + timings),
# and the plain-sm_90 build's checks (mma.sync fallback). Extra arguments go to the sm_90a run
# (e.g. --peak 989 for an H100/H200 SXM). LAB_SANITIZE=1 adds a compute-sanitizer memcheck pass
# over the quick checks. Exit status is non-zero when any part failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
OUT="${LAB_OUT:-$ROOT/build/lab}"
rc=0
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv 2>/dev/null || true

echo "=== tile_layout_check"
"$OUT/tile_layout_check" || rc=1

echo "=== gemm_lab (sm_90a) $*"
"$OUT/gemm_lab" "$@" || rc=1

echo "=== gemm_lab_sm90 (no wgmma) --no-bench"
"$OUT/gemm_lab_sm90" --no-bench || rc=1

if [ -n "${LAB_SANITIZE:-}" ] && command -v compute-sanitizer >/dev/null 2>&1; then
  echo "=== compute-sanitizer memcheck, gemm_lab --quick"
  compute-sanitizer --tool memcheck --error-exitcode 9 "$OUT/gemm_lab" --quick || rc=1
fi
echo "=== lab rc=$rc"
exit $rc
