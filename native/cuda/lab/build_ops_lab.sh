#!/usr/bin/env bash
# Builds and runs ops_lab (checks + timings of the non-GEMM CUDA kernels) on a GPU machine,
# then, when python3 has torch, times PyTorch's scaled_dot_product_attention at the same
# shapes for comparison. Run from anywhere; logs go to $OUT (if set) or build/.
#   native/cuda/lab/build_ops_lab.sh            # build, check, time
#   ARCH=sm_80 native/cuda/lab/build_ops_lab.sh --check-only
set -u
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
arch="${ARCH:-sm_90}"
out="${OUT:-$root/build}"
mkdir -p build "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>/dev/null | tee "$out/gpu.txt"
echo "building ops_lab for $arch"
nvcc -std=c++17 -O3 -arch="$arch" -I native native/cuda/lab/ops_lab.cu native/cuda/runtime.cu \
  -o build/ops_lab 2>&1 | grep -v "^$" | tail -20
[ -x build/ops_lab ] || { echo "ops_lab: build failed"; exit 2; }
set -o pipefail
build/ops_lab "$@" 2>&1 | tee "$out/ops_lab.log"
rc=$?
if [[ " $* " != *" --check-only "* ]] && python3 -c "import torch" 2>/dev/null; then
  PYTHONUNBUFFERED=1 python3 native/cuda/lab/sdpa_baseline.py 2>&1 | tee "$out/sdpa_baseline.log"
fi
echo "ops_lab exit status: $rc"
exit $rc
