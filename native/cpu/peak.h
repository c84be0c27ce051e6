// Machine ceilings for the benchmark's "% of peak" columns: FMA throughput on every pool
// thread and streaming memory bandwidth. Measured, not looked up, so a VM's clocks, SMT and
// AVX-512 down-clocking are what the kernels are judged against.
#pragma once
#include <cstdint>

namespace dk::cpu {

struct PeakResult {
  int threads = 0;
  const char* fp32_kernel = "";  // which loop ran: "avx512", "avx2" or "generic"
  double fp32_gflops = 0;        // over wall time; 2 flop per fused multiply-add lane
  double bf16_gflops = 0;        // vdpbf16ps: 2 multiply-adds per fp32 lane; 0 when absent
  // The same loops over each thread's CPU time, summed over threads: what the pool would reach
  // with the cores to itself (other processes on the cores lower the wall-time rates, not these).
  double fp32_gflops_cpu = 0;
  double bf16_gflops_cpu = 0;
  double scale_gbps = 0;         // a[i] = s*b[i]: bytes read + written (STREAM convention)
  double triad_gbps = 0;         // a[i] = b[i] + s*c[i]
};

// Runs each measurement for about `seconds` (best of several repeats); `bandwidth_mib` is the
// size of each array in the bandwidth loops (well past the last-level cache).
PeakResult measure_peak(double seconds, int64_t bandwidth_mib);

// ---- per-ISA FMA loops: `iters` rounds over the kernel's independent accumulators;
// return the flop count done (the result is kept alive through `sink`).
double fma_loop_generic(int64_t iters, float* sink);
double fma_loop_avx2(int64_t iters, float* sink);
double fma_loop_avx512(int64_t iters, float* sink);
double bf16_loop_avx512(int64_t iters, float* sink);

}  // namespace dk::cpu
