#!/usr/bin/env bash
# One self-contained GPU check (within DEVICE_CHECK_BUDGET_S, default 540 s): uses the addon already
# built with CUDA (build/Release, DIFFUSEKIT_ADDON or .device/diffusekit.node.xz, which
# scripts/device-prepare.sh makes) and the compiled dist/; needs only Node and the GPU driver (plus
# python3 with torch for the comparison column, and nvcc-built lab binaries in .device/labs when present).
# Runs the CUDA-vs-CPU parity suite, tiny-sd against diffusers' golden outputs, the CUDA benchmark
# and PyTorch's numbers for the same cases, the training-kernel (gradient) parity and a short
# training run, and writes a report (text + JSON) within a time budget.
# Usage: scripts/device-check.sh [REPORT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-device-report}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/report.txt"
: > "$REPORT"
say() { echo "$@" | tee -a "$REPORT"; }
# A part's own output may be redirected or piped into the report: its notes go to the script's
# stdout (fd 3) and the report once.
exec 3>&1
note() { echo "$@" | tee -a "$REPORT" >&3; }

# What a GPU run carries compressed (it may carry 64 MiB in all), unpacked here: the CUDA addon,
# the golden reference copy (tiny-sd) and the runtime packages dist/ requires.
if [ -z "${DIFFUSEKIT_ADDON:-}" ] && [ -f .device/diffusekit.node.xz ]; then
  xz -dc .device/diffusekit.node.xz > /tmp/diffusekit.node && export DIFFUSEKIT_ADDON=/tmp/diffusekit.node
fi
if [ -f .device/reference.tar.xz ]; then
  rm -rf /tmp/diffusekit-reference && mkdir -p /tmp/diffusekit-reference &&
    tar -xJf .device/reference.tar.xz -C /tmp/diffusekit-reference && export DIFFUSEKIT_REFERENCE_DIR=/tmp/diffusekit-reference
fi
[ -z "${NODE_PATH:-}" ] && [ -d .device/node_modules ] && export NODE_PATH="$PWD/.device/node_modules"

say "# diffusekit device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "node $(node --version), commit ${DIFFUSEKIT_COMMIT:-$(cat .device/ADDON_COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$REPORT"
node -e "const d=require('./dist'); console.log('devices:', JSON.stringify(d.devices())); console.log('build:', JSON.stringify(d.buildInfo()))" 2>&1 | tee -a "$REPORT"

status=0
# Parts run in this order, most telling first; a subset (DEVICE_CHECK_PARTS=...) reruns only what changed.
PARTS="${DEVICE_CHECK_PARTS:-parity,golden,bench,torch,grad,train,labs}"  # opt-in: xl, profile, torch-e2e
want() { [[ ",$PARTS," == *",$1,"* ]]; }
# Device time is scarce: the whole check keeps within DEVICE_CHECK_BUDGET_S; each part gets its own
# cap or what is left, and a part that no longer fits is reported as skipped.
START=$(date +%s); BUDGET="${DEVICE_CHECK_BUDGET_S:-540}"
cap() {  # cap SECONDS -> the timeout to use, or 0 when under 15 s remain
  local left=$(( BUDGET - ($(date +%s) - START) ))
  (( left < 15 )) && { echo 0; return; }
  echo $(( left < $1 ? left : $1 ))
}
timed() {  # timed CAP PART cmd... : runs cmd under the capped timeout, notes skips and time outs
  local t; t=$(cap "$1"); local part="$2"; shift 2
  if [ "$t" = 0 ]; then note "$part: skipped, the check's time budget ($BUDGET s) is spent"; return 0; fi
  local t0=$(date +%s)
  timeout "$t" "$@"; local rc=$?
  echo "$part: exit $rc after $(( $(date +%s) - t0 )) s (limit $t s)" >> "$OUT_DIR/timing.txt"
  [ $rc = 124 ] && note "$part: timed out after $t s"
  return $rc
}
if want parity; then
say ""
say "## parity (CUDA vs CPU, float32/float16/bfloat16)"
CUDA_LAUNCH_BLOCKING=1 timed 90 parity node dist/check/cuda-parity.js --json "$OUT_DIR/parity.json" > "$OUT_DIR/parity.txt" 2>&1 || status=1
grep -E "FAIL|passed" "$OUT_DIR/parity.txt" | tee -a "$REPORT"
fi

if want golden; then
say ""
say "## tiny-sd U-Net and VAE on CUDA vs diffusers' golden outputs"
GOLDEN_REF="${DIFFUSEKIT_REFERENCE_DIR:-../shared/reference}"
timed 60 golden node dist/check/cuda-golden.js --reference "$GOLDEN_REF" --json "$OUT_DIR/golden.json" > "$OUT_DIR/golden.txt" 2>&1 || status=1
grep -E "FAIL|passed|skipped" "$OUT_DIR/golden.txt" | tee -a "$REPORT"
fi

if want bench; then
say ""
say "## benchmark (diffusekit, float16)"
timed 150 bench node dist/bench/cuda-bench.js --dtype float16 --json "$OUT_DIR/bench.json" 2>&1 | tee -a "$REPORT" || status=1
fi

if want torch && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  say ""
  say "## the same cases through PyTorch $(python3 -c 'import torch; print(torch.__version__)')"
  timed 60 torch python3 scripts/torch-bench.py "$OUT_DIR/torch.json" float16 2>&1 | tee -a "$REPORT"
  node -e '
    const ours = require(process.argv[1]).rows, theirs = require(process.argv[2]).rows;
    console.log("ratio (torch ms / diffusekit ms; > 1 means diffusekit is faster)");
    for (const r of ours) { const t = theirs.find((x) => x.group === r.group && x.name === r.name);
      if (t) console.log(`${r.group.padEnd(10)} ${r.name.padEnd(40)} ${(t.ms / r.ms).toFixed(2)}x`); }
  ' "$(cd "$OUT_DIR" && pwd)/bench.json" "$(cd "$OUT_DIR" && pwd)/torch.json" 2>&1 | tee -a "$REPORT"
fi
if want grad; then
say ""
say "## training kernels: gradients CUDA vs CPU (float32)"
timed 60 grad node dist/check/cuda-grad-parity.js --json "$OUT_DIR/grad.json" > "$OUT_DIR/grad.txt" 2>&1 || status=1
grep -E "FAIL|passed|nothing to check" "$OUT_DIR/grad.txt" | tee -a "$REPORT"
fi

if want train; then
say ""
say "## short training run on CUDA (shapes 64x64, UNet small), first losses vs CPU"
timed 120 train node dist/check/cuda-train.js --json "$OUT_DIR/train.json" > "$OUT_DIR/train.txt" 2>&1 || status=1
grep -E "FAIL|passed|images/s|nothing to check|threw" "$OUT_DIR/train.txt" | tee -a "$REPORT"
fi

if want labs; then
say ""
say "## kernel labs (native harnesses built with nvcc, in .device/labs when carried)"
run_lab() {  # name timeout args...
  local lab=".device/labs/$1" to="$2"; shift 2
  [ -x "$lab" ] || return 0
  echo "### $(basename "$lab") $*" >> "$OUT_DIR/labs.txt"
  timed "$to" "$(basename "$lab")" "$lab" "$@" >> "$OUT_DIR/labs.txt" 2>&1; local rc=$?
  say "$(basename "$lab") $*: exit $rc"
  [ $rc = 0 ] || status=1
}
run_lab gemm_lab 75 --peak "${DIFFUSEKIT_PEAK_TFLOPS:-989}"
run_lab ops_lab 150
grep -E "FAIL|mismatch|TFLOP|GB/s|wgmma|error" "$OUT_DIR/labs.txt" 2>/dev/null | head -60 | tee -a "$REPORT" > /dev/null
fi

if want xl; then  # opt-in (DEVICE_CHECK_PARTS=...,xl): SDXL base at its native size
say ""
say "## SDXL base 1024x1024, 30 steps (random weights from configs/sdxl), float16"
timed 200 xl node dist/bench/cuda-bench.js --dtype float16 --e2e-config configs/sdxl --e2e-size 1024 --e2e-steps 30 --json "$OUT_DIR/bench-xl.json" 2>&1 | tee -a "$REPORT" || status=1
fi

if want profile; then  # opt-in: where the U-Net step's time goes, kernel by kernel (Nsight Compute)
say ""
say "## kernel time of one eager SD1.5 U-Net step, 512x512 batch 2, float16 (ncu, clocks and caches as they are)"
NCU=$(command -v ncu || { [ -x /usr/local/cuda/bin/ncu ] && echo /usr/local/cuda/bin/ncu; } || true)
if [ -n "$NCU" ]; then
  # two forwards (warm-up + 1), the last one summarised; the constant weights' fill_kernel launches are left out by name
  timed 150 profile "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum \
    --kernel-name-base demangled --kernel-name "regex:^(?!.*fill_kernel).*" --csv --page raw \
    --log-file "$OUT_DIR/ncu.csv" node dist/bench/cuda-unet-loop.js --steps 1 > "$OUT_DIR/profile.txt" 2>&1 || status=1
  python3 scripts/kernel-summary.py "$OUT_DIR/ncu.csv" 2 timestep_kernel 2>&1 | tee -a "$REPORT"
else
  say "ncu not found on this machine; skipped"
fi
fi

if want torch-e2e; then  # opt-in: diffusers' pipeline loop on the same card, when diffusers is installed
say ""
say "## diffusers on the same card (random SD1.5 weights, float16)"
timed 150 torch-e2e python3 scripts/torch-e2e.py configs/sd15 "$OUT_DIR/torch-e2e.json" 2>&1 | tee -a "$REPORT"
fi

say ""
say "device check finished with status $status"
# The run's files come back from the machine a few at a time: keep the report, pack the rest.
if [ "${DEVICE_CHECK_PACK:-1}" = 1 ]; then
  (cd "$OUT_DIR" && files=$(ls | grep -v -e '^report.txt$' -e '^all.tar.gz$') &&
    [ -n "$files" ] && tar -czf all.tar.gz $files && rm -f $files)
fi
exit $status
