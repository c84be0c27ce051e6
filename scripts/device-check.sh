#!/usr/bin/env bash
# One self-contained GPU check (target: under 6 minutes on an H100): uses the addon already built
# with CUDA (build/Release) and the compiled dist/; needs only Node and the GPU driver (plus python3
# with torch for the comparison column, and nvcc-built lab binaries in .device/labs when present).
# Runs the CUDA-vs-CPU parity suite, the training-kernel (gradient) parity and a short training
# run, then the CUDA benchmark, and writes a report (text + JSON).
# Usage: scripts/device-check.sh [REPORT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-device-report}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/report.txt"
: > "$REPORT"
say() { echo "$@" | tee -a "$REPORT"; }

say "# diffusekit device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "node $(node --version), commit ${DIFFUSEKIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$REPORT"
node -e "const d=require('./dist'); console.log('devices:', JSON.stringify(d.devices())); console.log('build:', JSON.stringify(d.buildInfo()))" 2>&1 | tee -a "$REPORT"

status=0
PARTS="${DEVICE_CHECK_PARTS:-parity,grad,train,golden,labs,bench,torch}"  # a subset reruns only what changed
want() { [[ ",$PARTS," == *",$1,"* ]]; }
if want parity; then
say ""
say "## parity (CUDA vs CPU, float32/float16/bfloat16)"
timeout 100 node dist/check/cuda-parity.js --json "$OUT_DIR/parity.json" > "$OUT_DIR/parity.txt" 2>&1 || status=1
grep -E "FAIL|passed" "$OUT_DIR/parity.txt" | tee -a "$REPORT"
fi

if want grad; then
say ""
say "## training kernels: gradients CUDA vs CPU (float32)"
timeout 90 node dist/check/cuda-grad-parity.js --json "$OUT_DIR/grad.json" > "$OUT_DIR/grad.txt" 2>&1 || status=1
grep -E "FAIL|passed|nothing to check" "$OUT_DIR/grad.txt" | tee -a "$REPORT"
fi

if want train; then
say ""
say "## short training run on CUDA (shapes 64x64, UNet small), first losses vs CPU"
timeout 150 node dist/check/cuda-train.js --json "$OUT_DIR/train.json" > "$OUT_DIR/train.txt" 2>&1 || status=1
grep -E "FAIL|passed|images/s|nothing to check|threw" "$OUT_DIR/train.txt" | tee -a "$REPORT"
fi

if want golden; then
say ""
say "## tiny-sd U-Net and VAE on CUDA vs diffusers' golden outputs"
GOLDEN_REF="${DIFFUSEKIT_REFERENCE_DIR:-../shared/reference}"
[ -d .device/reference ] && GOLDEN_REF=.device/reference
timeout 100 node dist/check/cuda-golden.js --reference "$GOLDEN_REF" --json "$OUT_DIR/golden.json" > "$OUT_DIR/golden.txt" 2>&1 || status=1
grep -E "FAIL|passed|skipped" "$OUT_DIR/golden.txt" | tee -a "$REPORT"
fi

if want labs; then
say ""
say "## kernel labs (native harnesses built with nvcc, in .device/labs when carried)"
run_lab() {  # name timeout args...
  local lab=".device/labs/$1" to="$2"; shift 2
  [ -x "$lab" ] || return 0
  echo "### $(basename "$lab") $*" >> "$OUT_DIR/labs.txt"
  timeout "$to" "$lab" "$@" >> "$OUT_DIR/labs.txt" 2>&1; local rc=$?
  say "$(basename "$lab") $*: exit $rc"
  [ $rc = 0 ] || status=1
}
run_lab gemm_lab 75 --peak "${DIFFUSEKIT_PEAK_TFLOPS:-989}"
run_lab ops_lab 150
grep -E "FAIL|mismatch|TFLOP|GB/s|wgmma|error" "$OUT_DIR/labs.txt" 2>/dev/null | head -60 | tee -a "$REPORT" > /dev/null
fi

if want bench; then
say ""
say "## benchmark (diffusekit, float16)"
timeout 120 node dist/bench/cuda-bench.js --dtype float16 --json "$OUT_DIR/bench.json" 2>&1 | tee -a "$REPORT" || status=1
fi

if want xl; then  # opt-in (DEVICE_CHECK_PARTS=...,xl): SDXL base at its native size
say ""
say "## SDXL base 1024x1024, 30 steps (random weights from configs/sdxl), float16"
timeout 300 node dist/bench/cuda-bench.js --dtype float16 --e2e-config configs/sdxl --e2e-size 1024 --e2e-steps 30 --json "$OUT_DIR/bench-xl.json" 2>&1 | tee -a "$REPORT" || status=1
fi

if want torch && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  say ""
  say "## the same cases through PyTorch $(python3 -c 'import torch; print(torch.__version__)')"
  timeout 60 python3 scripts/torch-bench.py "$OUT_DIR/torch.json" float16 2>&1 | tee -a "$REPORT"
  node -e '
    const ours = require(process.argv[1]).rows, theirs = require(process.argv[2]).rows;
    console.log("ratio (torch ms / diffusekit ms; > 1 means diffusekit is faster)");
    for (const r of ours) { const t = theirs.find((x) => x.group === r.group && x.name === r.name);
      if (t) console.log(`${r.group.padEnd(10)} ${r.name.padEnd(40)} ${(t.ms / r.ms).toFixed(2)}x`); }
  ' "$(cd "$OUT_DIR" && pwd)/bench.json" "$(cd "$OUT_DIR" && pwd)/torch.json" 2>&1 | tee -a "$REPORT"
fi
say ""
say "device check finished with status $status"
exit $status
