// Peak FMA throughput and memory bandwidth, measured on the kernel thread pool (see peak.h).
#include "peak.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <time.h>
#endif

#include "../core/thread_pool.h"
#include "cpu_features.h"

namespace dk::cpu {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

using Loop = double (*)(int64_t, float*);

// CPU time of the calling thread (s); 0 where the platform has no per-thread clock.
double thread_cpu_seconds() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return ts.tv_sec + ts.tv_nsec * 1e-9;
#endif
  return 0;
}

struct Rates { double wall = 0, cpu = 0; };  // flop/s over wall time; sum of per-thread flop per CPU-second

// Every pool thread runs `loop` for `iters` rounds.
Rates run_all_threads(Loop loop, int64_t iters, float* sink) {
  const int nt = num_threads();
  std::vector<double> flops(nt, 0.0), cpu(nt, 0.0);
  std::vector<float> sinks(nt, 0.f);
  auto t0 = Clock::now();
  parallel_tasks(nt, [&](int t, int) {
    double c0 = thread_cpu_seconds();
    flops[t] = loop(iters, &sinks[t]);
    cpu[t] = thread_cpu_seconds() - c0;
  });
  double dt = seconds_since(t0);
  Rates r;
  double total = 0;
  for (int t = 0; t < nt; t++) {
    total += flops[t];
    r.cpu += cpu[t] > 0 ? flops[t] / cpu[t] : 0;
    *sink += sinks[t];
  }
  r.wall = total / dt;
  if (r.cpu == 0) r.cpu = r.wall;  // no thread clock: wall time is the best we have
  return r;
}

// Sizes a run to about seconds/3 from a short trial, then keeps the best of three (each rate alone).
Rates best_rate(Loop loop, double seconds, float* sink) {
  int64_t iters = 1 << 12;
  for (;;) {  // trial: grow until one run takes >= 20 ms
    auto t0 = Clock::now();
    run_all_threads(loop, iters, sink);
    double dt = seconds_since(t0);
    if (dt >= 0.02 || iters > (int64_t{1} << 40)) {
      iters = std::max<int64_t>(1, static_cast<int64_t>(iters * (seconds / 3) / dt));
      break;
    }
    iters *= 4;
  }
  Rates best;
  for (int r = 0; r < 3; r++) {
    Rates x = run_all_threads(loop, iters, sink);
    best.wall = std::max(best.wall, x.wall);
    best.cpu = std::max(best.cpu, x.cpu);
  }
  return best;
}

// Baseline-ISA loop (SSE2 on x86-64: the compiler vectorises across the accumulators).
double fma_loop_generic_impl(int64_t iters, float* sink) {
  constexpr int kAcc = 32;
  float acc[kAcc];
  for (int j = 0; j < kAcc; j++) acc[j] = static_cast<float>(j);
  const float a = 0.999f, b = 1e-3f;
  for (int64_t i = 0; i < iters; i++)
    for (int j = 0; j < kAcc; j++) acc[j] = acc[j] * a + b;
  float s = 0;
  for (float v : acc) s += v;
  *sink += s;
  return 2.0 * kAcc * static_cast<double>(iters);
}

// One pass of a streaming loop over all threads; returns GB/s for `bytes` moved.
template <class Body>
double stream_pass(int64_t n, double bytes, const Body& body) {
  auto t0 = Clock::now();
  parallel_for(n, 1 << 16, body);
  return bytes / seconds_since(t0) / 1e9;
}

}  // namespace

double fma_loop_generic(int64_t iters, float* sink) { return fma_loop_generic_impl(iters, sink); }

#if !defined(DK_X86)
double fma_loop_avx2(int64_t iters, float* sink) { return fma_loop_generic_impl(iters, sink); }
double fma_loop_avx512(int64_t iters, float* sink) { return fma_loop_generic_impl(iters, sink); }
double bf16_loop_avx512(int64_t, float*) { return 0; }
#endif

PeakResult measure_peak(double seconds, int64_t bandwidth_mib) {
  PeakResult r;
  r.threads = num_threads();
  const CpuFeatures& f = cpu_features();
  float sink = 0;
  const double per = std::max(seconds, 0.05);

  Loop fp32 = fma_loop_generic;
  r.fp32_kernel = "generic";
  if (f.isa == Isa::AVX512) { fp32 = fma_loop_avx512; r.fp32_kernel = "avx512"; }
  else if (f.isa == Isa::AVX2) { fp32 = fma_loop_avx2; r.fp32_kernel = "avx2"; }
  Rates fr = best_rate(fp32, per, &sink);
  r.fp32_gflops = fr.wall / 1e9;
  r.fp32_gflops_cpu = fr.cpu / 1e9;
  if (f.avx512_bf16) {
    Rates br = best_rate(bf16_loop_avx512, per, &sink);
    r.bf16_gflops = br.wall / 1e9;
    r.bf16_gflops_cpu = br.cpu / 1e9;
  }

  // Bandwidth: three arrays of bandwidth_mib each, first touched by the threads that stream them.
  const int64_t n = std::max<int64_t>(bandwidth_mib, 1) * (int64_t{1} << 20) / static_cast<int64_t>(sizeof(float));
  float* a = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  float* b = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  float* c = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  if (a && b && c) {
    parallel_for(n, 1 << 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) { a[i] = 0.f; b[i] = 1.f; c[i] = 2.f; }
    });
    const float s = 0.5f;
    auto scale = [&](int64_t lo, int64_t hi) { for (int64_t i = lo; i < hi; i++) a[i] = s * b[i]; };
    auto triad = [&](int64_t lo, int64_t hi) { for (int64_t i = lo; i < hi; i++) a[i] = b[i] + s * c[i]; };
    const double bytes = static_cast<double>(n) * sizeof(float);
    auto t0 = Clock::now();
    int passes = 0;
    do {  // at least 3 passes of each; best pass counts
      r.scale_gbps = std::max(r.scale_gbps, stream_pass(n, 2 * bytes, scale));
      r.triad_gbps = std::max(r.triad_gbps, stream_pass(n, 3 * bytes, triad));
      passes++;
    } while (passes < 3 || (seconds_since(t0) < per && passes < 50));
    sink += a[n / 2];
  }
  std::free(a);
  std::free(b);
  std::free(c);
  volatile float keep = sink;  // the loops' results must look used
  (void)keep;
  return r;
}

}  // namespace dk::cpu
