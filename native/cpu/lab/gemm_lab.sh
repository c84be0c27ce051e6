#!/bin/sh
# Builds native/cpu/lab/gemm_lab.cc (see its header) with the per-file flags of CMakeLists.txt.
set -e
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/gemm_lab}
O=$(mktemp -d)
F="-std=c++17 -O3 -Wall -Wno-unused-function -fno-math-errno -DDK_X86=1"
AVX512="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16 -mavx2 -mfma -mf16c"
g++ $F -c native/cpu/gemm.cc -o $O/gemm.o &
g++ $F -c native/cpu/conv2d.cc -o $O/conv2d.o &
g++ $F $AVX512 -c native/cpu/gemm_avx512.cc -o $O/gemm_avx512.o &
g++ $F -mavx2 -mfma -mf16c -c native/cpu/gemm_avx2.cc -o $O/gemm_avx2.o &
wait
g++ $F native/cpu/lab/gemm_lab.cc native/core/thread_pool.cc native/core/allocator.cc native/cpu/cpu_features.cc \
  $O/gemm.o $O/conv2d.o $O/gemm_avx512.o $O/gemm_avx2.o -o "$OUT" -lpthread
rm -rf "$O"
echo "built $OUT"
