// README: correctness + speed lab for the CPU sgemm / conv2d_nhwc kernels (gemm*.cc, conv2d.cc).
// Not part of the addon.
//
// Build from the repository root (per-file ISA flags as in CMakeLists.txt; gemm_lab.sh does this):
//   F="-std=c++17 -O3 -Wall -fno-math-errno -DDK_X86=1"
//   g++ $F -c native/cpu/gemm.cc -o /tmp/gemm.o && g++ $F -c native/cpu/conv2d.cc -o /tmp/conv2d.o
//   X="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16 -mavx2 -mfma -mf16c"
//   g++ $F $X -c native/cpu/gemm_avx512.cc -o /tmp/gemm_avx512.o
//   g++ $F -mavx2 -mfma -mf16c -c native/cpu/gemm_avx2.cc -o /tmp/gemm_avx2.o
//   S="native/core/thread_pool.cc native/core/allocator.cc native/cpu/cpu_features.cc"
//   g++ $F native/cpu/lab/gemm_lab.cc $S /tmp/gemm*.o /tmp/conv2d.o -o /tmp/gemm_lab -lpthread
// (on arm64: drop -DDK_X86=1 and the two ISA objects.)
// Run:
//   /tmp/gemm_lab test      # every ISA path (generic, avx2, avx512) vs naive float64 loops
//   /tmp/gemm_lab peak      # fp32 FMA throughput of this machine, all threads
//   /tmp/gemm_lab ukernel   # the micro-kernel alone on cache-resident panels, and packing speed
//   /tmp/gemm_lab bench     # GFLOP/s and % of the measured peak: 2048^3, SD1.5 linears, 3x3 convs
//   /tmp/gemm_lab all       # test + bench
// Env: DIFFUSEKIT_THREADS=n, DIFFUSEKIT_ISA=generic|avx2 (bench), LAB_KC/LAB_MC/LAB_NC (blocking),
// LAB_REPS=n, LAB_ONLY=<substring of a case name>, LAB_SHAPE=M,K,N (only that transB sgemm).
// Timings: best and median wall time of LAB_REPS runs, as % of the measured all-thread peak, and
// "per-CPU-s" best / median: flops per CPU-second (all threads) against the peak loop's flops per
// CPU-second. On a shared machine the wall numbers swing with the other load; per-CPU-s does not
// count time the threads were descheduled (it still sees cache and memory contention).
#if defined(DK_X86)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../core/thread_pool.h"
#include "../cpu_features.h"
#include "../gemm_internal.h"
#include "../kernels.h"

using namespace dk::cpu;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// CPU seconds used by all threads of this process: on a shared machine, flops per CPU-second
// against the peak loop's flops per CPU-second is a fairer efficiency than wall time.
double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}
double g_peak_per_cpu_s = 0;  // GFLOP per CPU-second of the FMA loop (per-thread peak)

std::vector<float> randv(size_t n, std::mt19937& g) {
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// ---------------------------------------------------------------- references (float64 accumulate)
// C_b[M,N] = alpha * op(A_b)[M,K] @ op(B_b)[K,N] + beta * C_b + bias[N] + residual_b[M,N]
void ref_sgemm(int64_t batch, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, int64_t sA, const float* B, int64_t ldb, int64_t sB, float beta, float* C, int64_t ldc,
               int64_t sC, const GemmEpilogue& ep, std::vector<double>* mag) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0, sa = 0;
        for (int64_t k = 0; k < K; ++k) {
          double a = ta ? A[b * sA + k * lda + i] : A[b * sA + i * lda + k];
          double bb = tb ? B[b * sB + j * ldb + k] : B[b * sB + k * ldb + j];
          s += a * bb;
          sa += std::fabs(a * bb);
        }
        float* c = C + b * sC + i * ldc + j;
        double r = alpha * s + (beta != 0 ? beta * double(*c) : 0.0);
        double m = std::fabs(alpha) * sa + (beta != 0 ? std::fabs(beta * double(*c)) : 0.0);
        if (ep.bias) { r += ep.bias[j]; m += std::fabs(ep.bias[j]); }
        if (ep.residual) {
          double rv = ep.residual[b * ep.stride_residual + i * ep.ldr + j];
          r += rv;
          m += std::fabs(rv);
        }
        *c = float(r);
        if (mag) mag->push_back(m);
      }
}

// y[n,p,q,k] = sum_{r,s,c} x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c] * w[k,r,s,c] + bias[k] + res[n,p,q,k]
void ref_conv(const Conv2dParams& p, const float* x, const float* w, const float* bias, const float* res, float* y,
              std::vector<double>& mag) {
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t oh = 0; oh < p.P; ++oh)
      for (int64_t ow = 0; ow < p.Q; ++ow)
        for (int64_t k = 0; k < p.K; ++k) {
          double s = 0, m = 0;
          for (int64_t r = 0; r < p.R; ++r)
            for (int64_t q = 0; q < p.S; ++q) {
              int64_t ih = oh * p.stride_h - p.pad_h + r * p.dil_h, iw = ow * p.stride_w - p.pad_w + q * p.dil_w;
              if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
              for (int64_t c = 0; c < p.C; ++c) {
                double v = double(x[((n * p.H + ih) * p.W + iw) * p.C + c]) * w[((k * p.R + r) * p.S + q) * p.C + c];
                s += v;
                m += std::fabs(v);
              }
            }
          int64_t o = ((n * p.P + oh) * p.Q + ow) * p.K + k;
          if (bias) { s += bias[k]; m += std::fabs(bias[k]); }
          if (res) { s += res[o]; m += std::fabs(res[o]); }
          y[o] = float(s);
          mag[o] = m;
        }
}

// |got - ref| <= 1e-6 * magnitude + 2e-5 * max(1, magnitude) relative to sum |terms|
bool compare(const char* what, const float* got, const float* ref, const std::vector<double>& mag, size_t n) {
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    double err = std::fabs(double(got[i]) - ref[i]);
    double tol = 1e-6 + 1e-5 * std::max(1.0, mag[i]);
    worst = std::max(worst, err / std::max(1.0, mag[i]));
    if (!(err <= tol)) {
      if (bad < 5) std::printf("  MISMATCH %s at %zu: got %.7g want %.7g (mag %.3g)\n", what, i, got[i], ref[i], mag[i]);
      ++bad;
    }
  }
  if (bad) std::printf("  FAIL %s: %d of %zu wrong (worst rel %.3g)\n", what, bad, n, worst);
  return bad == 0;
}

// ---------------------------------------------------------------- tests
struct GemmCase {
  int64_t batch, M, N, K;
  bool ta, tb;
  float alpha, beta;
  bool bias, residual, bcastB, pad;
};

bool run_gemm_case(const GemmCase& t, std::mt19937& g) {
  const int64_t pad = t.pad ? 3 : 0;
  const int64_t lda = (t.ta ? t.M : t.K) + pad, ldb = (t.tb ? t.K : t.N) + pad, ldc = t.N + pad, ldr = t.N + 1;
  const int64_t sA = (t.ta ? t.K : t.M) * lda + 5, sB = t.bcastB ? 0 : (t.tb ? t.N : t.K) * ldb + 7;
  const int64_t sC = t.M * ldc + 2, sR = t.M * ldr;
  auto A = randv(size_t(sA * t.batch + 16), g), B = randv(size_t(std::max<int64_t>(sB, (t.tb ? t.N : t.K) * ldb) * t.batch + 16), g);
  auto C0 = randv(size_t(sC * t.batch + 16), g), bias = randv(size_t(t.N), g), res = randv(size_t(sR * t.batch), g);
  GemmEpilogue ep;
  if (t.bias) ep.bias = bias.data();
  if (t.residual) { ep.residual = res.data(); ep.ldr = ldr; ep.stride_residual = sR; }
  std::vector<float> C = C0, R = C0;
  if (t.beta == 0) std::fill(C.begin(), C.end(), NAN);  // beta == 0 must never read C
  sgemm(t.batch, t.ta, t.tb, t.M, t.N, t.K, t.alpha, A.data(), lda, sA, B.data(), ldb, sB, t.beta, C.data(), ldc, sC, ep);
  std::vector<double> mag;
  ref_sgemm(t.batch, t.ta, t.tb, t.M, t.N, t.K, t.alpha, A.data(), lda, sA, B.data(), ldb, sB, t.beta, R.data(), ldc,
            sC, ep, &mag);
  // Compare the valid elements only, then check padding columns were not touched.
  std::vector<float> got, want;
  for (int64_t b = 0; b < t.batch; ++b)
    for (int64_t i = 0; i < t.M; ++i)
      for (int64_t j = 0; j < t.N; ++j) {
        got.push_back(C[b * sC + i * ldc + j]);
        want.push_back(R[b * sC + i * ldc + j]);
      }
  char name[160];
  std::snprintf(name, sizeof name, "sgemm b%lld M%lld N%lld K%lld tA%d tB%d a%.1f b%.1f bias%d res%d bc%d pad%d",
                (long long)t.batch, (long long)t.M, (long long)t.N, (long long)t.K, t.ta, t.tb, t.alpha, t.beta,
                t.bias, t.residual, t.bcastB, t.pad);
  bool ok = compare(name, got.data(), want.data(), mag, got.size());
  for (int64_t b = 0; b < t.batch && ok && pad; ++b)
    for (int64_t i = 0; i < t.M; ++i)
      for (int64_t j = t.N; j < ldc && (b * sC + i * ldc + j) < int64_t(C.size()); ++j) {
        float want_pad = t.beta == 0 ? NAN : C0[b * sC + i * ldc + j];
        float v = C[b * sC + i * ldc + j];
        if (!(v == want_pad || (std::isnan(v) && std::isnan(want_pad)))) {
          std::printf("  FAIL %s: wrote padding at b%lld i%lld j%lld\n", name, (long long)b, (long long)i, (long long)j);
          ok = false;
          break;
        }
      }
  return ok;
}

bool run_conv_case(const Conv2dParams& p0, bool bias, bool res, std::mt19937& g) {
  Conv2dParams p = p0;
  p.P = (p.H + 2 * p.pad_h - p.dil_h * (p.R - 1) - 1) / p.stride_h + 1;
  p.Q = (p.W + 2 * p.pad_w - p.dil_w * (p.S - 1) - 1) / p.stride_w + 1;
  auto x = randv(size_t(p.N * p.H * p.W * p.C), g), w = randv(size_t(p.K * p.R * p.S * p.C), g);
  auto b = randv(size_t(p.K), g), r = randv(size_t(p.N * p.P * p.Q * p.K), g);
  size_t ny = size_t(p.N * p.P * p.Q * p.K);
  std::vector<float> y(ny, NAN), ref(ny);
  std::vector<double> mag(ny);
  conv2d_nhwc(p, x.data(), w.data(), bias ? b.data() : nullptr, res ? r.data() : nullptr, y.data());
  ref_conv(p, x.data(), w.data(), bias ? b.data() : nullptr, res ? r.data() : nullptr, ref.data(), mag);
  char name[200];
  std::snprintf(name, sizeof name, "conv N%lld %lldx%lldx%lld->%lld k%lldx%lld s%lld,%lld p%lld,%lld d%lld,%lld bias%d res%d",
                (long long)p.N, (long long)p.H, (long long)p.W, (long long)p.C, (long long)p.K, (long long)p.R,
                (long long)p.S, (long long)p.stride_h, (long long)p.stride_w, (long long)p.pad_h, (long long)p.pad_w,
                (long long)p.dil_h, (long long)p.dil_w, bias, res);
  return compare(name, y.data(), ref.data(), mag, ny);
}

int run_tests(const gemm::Kernel& kr) {
  gemm::set_kernel_for_lab(kr);
  std::printf("== tests with %s (mr %d, nr %d)\n", kr.name, kr.mr, kr.nr);
  std::mt19937 g(1234);
  int fails = 0, count = 0;
  const int64_t sizes[] = {1, 3, 17, 33, 127};
  // Every combination of small odd sizes with transposes.
  for (int64_t M : sizes)
    for (int64_t N : sizes)
      for (int64_t K : sizes)
        for (int tr = 0; tr < 4; ++tr) {
          GemmCase c{1, M, N, K, bool(tr & 1), bool(tr & 2), 1.f, 0.f, false, false, false, false};
          fails += !run_gemm_case(c, g);
          ++count;
        }
  std::uniform_int_distribution<int> coin(0, 1), szd(1, 300);
  const float alphas[] = {1.f, 0.5f, -2.f}, betas[] = {0.f, 1.f, 0.25f};
  for (int it = 0; it < 150; ++it) {
    GemmCase c{1 + (it % 4 == 0 ? 2 : 0) + (it % 7 == 0 ? 1 : 0), szd(g), szd(g), szd(g), bool(coin(g)), bool(coin(g)),
               alphas[it % 3], betas[(it / 3) % 3], bool(coin(g)), bool(coin(g)), bool(coin(g)), bool(coin(g))};
    if (it % 11 == 0) c.K = 400 + szd(g) * 3;  // several K blocks
    if (it % 13 == 0) c.M = 1 + it % 4;        // the few-rows path
    if (it % 17 == 0) c.K = 0;                 // epilogue only
    fails += !run_gemm_case(c, g);
    ++count;
  }
  // Bigger than one cache block in every dimension.
  fails += !run_gemm_case({1, 700, 2100, 900, false, true, 1.f, 1.f, true, true, false, false}, g);
  fails += !run_gemm_case({2, 350, 300, 800, true, false, 0.5f, 0.f, true, false, true, true}, g);
  count += 2;

  struct CC { int64_t N, H, W, C, K, R, S, sh, sw, ph, pw, dh, dw; };
  const CC convs[] = {
      {1, 5, 7, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1},      {2, 9, 8, 17, 33, 3, 3, 1, 1, 1, 1, 1, 1},
      {1, 8, 8, 32, 40, 3, 3, 2, 2, 1, 1, 1, 1},    {2, 6, 5, 20, 9, 1, 1, 1, 1, 0, 0, 1, 1},
      {1, 11, 13, 16, 30, 3, 3, 1, 1, 2, 2, 2, 2},  {1, 10, 9, 5, 7, 1, 1, 2, 2, 0, 0, 1, 1},
      {3, 7, 7, 64, 31, 3, 3, 1, 1, 1, 1, 1, 1},    {1, 12, 10, 9, 12, 5, 3, 1, 2, 2, 1, 1, 1},
      {2, 16, 16, 128, 64, 3, 3, 1, 1, 1, 1, 1, 1}, {1, 4, 4, 320, 70, 3, 3, 1, 1, 0, 0, 1, 1},
      {1, 8, 8, 64, 96, 1, 1, 1, 1, 0, 0, 1, 1},    {1, 9, 9, 8, 8, 4, 4, 3, 3, 0, 0, 1, 1},
  };
  for (const CC& c : convs)
    for (int e = 0; e < 4; ++e) {
      Conv2dParams p{c.N, c.H, c.W, c.C, c.K, c.R, c.S, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, 0, 0};
      fails += !run_conv_case(p, e & 1, e & 2, g);
      ++count;
    }
  std::printf("   %d of %d cases passed\n", count - fails, count);
  return fails;
}

// ---------------------------------------------------------------- peak
#if defined(DK_X86)
__attribute__((target("avx512f,fma"))) double fma_loop_avx512(int64_t iters) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  float s = 0, t[16];
  for (int i = 0; i < 16; ++i) { _mm512_storeu_ps(t, acc[i]); for (float v : t) s += v; }
  return s;
}
__attribute__((target("avx2,fma"))) double fma_loop_avx2(int64_t iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  float s = 0, t[8];
  for (int i = 0; i < 12; ++i) { _mm256_storeu_ps(t, acc[i]); for (float v : t) s += v; }
  return s;
}
#else
// Portable stand-in (the compiler vectorises it to the target's width): 12 x 16 floats.
double fma_loop_avx2(int64_t iters) {
  float acc[12][16];
  for (int i = 0; i < 12; ++i)
    for (int l = 0; l < 16; ++l) acc[i][l] = float(i);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i)
      for (int l = 0; l < 16; ++l) acc[i][l] = acc[i][l] * 0.999999f + 1e-7f;
  float s = 0;
  for (auto& r : acc)
    for (float v : r) s += v;
  return s;
}
double fma_loop_avx512(int64_t iters) { return fma_loop_avx2(iters); }
#endif

// Best of a few runs of the FMA loop on every thread at once; GFLOP/s.
double measure_peak(bool verbose) {
  const bool avx512 = cpu_features().isa == Isa::AVX512;
  const int64_t iters = 20'000'000;
#if defined(DK_X86)
  const double flops_per_thread = avx512 ? iters * 16.0 * 32 : iters * 12.0 * 16;
#else
  const double flops_per_thread = iters * 12.0 * 32;
#endif
  double best = 0, best_cpu = 0;
  volatile double sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now(), c0 = cpu_now();
    dk::parallel_tasks(dk::num_threads(), [&](int, int) { sink = sink + (avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters)); });
    double total = flops_per_thread * dk::num_threads() / 1e9;
    double gf = total / (now() - t0), gf_cpu = total / (cpu_now() - c0);
    best = std::max(best, gf);
    best_cpu = std::max(best_cpu, gf_cpu);
    if (verbose) std::printf("  peak run %d: %.1f GFLOP/s wall, %.1f GFLOP per CPU-second\n", rep, gf, gf_cpu);
  }
  g_peak_per_cpu_s = best_cpu;
  std::printf("measured fp32 FMA peak (%s, %d threads): %.1f GFLOP/s wall (best); %.1f GFLOP per CPU-second "
              "(= %.1f GFLOP/s if both cores were ours)\n",
              avx512 ? "zmm" : "ymm", dk::num_threads(), best, best_cpu, best_cpu * dk::num_threads());
  return best;
}

// ---------------------------------------------------------------- bench
template <class F>
void timeit(const char* name, double flops, double peak, F&& f) {
  if (const char* only = std::getenv("LAB_ONLY"))
    if (!std::strstr(name, only)) return;
  const char* r = std::getenv("LAB_REPS");
  int reps = r ? std::atoi(r) : 7;
  f();  // warm up (page faults, scratch)
  std::vector<double> ts, cs;
  for (int i = 0; i < reps; ++i) {
    double t0 = now(), c0 = cpu_now();
    f();
    ts.push_back(now() - t0);
    cs.push_back(cpu_now() - c0);
  }
  std::sort(ts.begin(), ts.end());
  std::sort(cs.begin(), cs.end());
  double best = flops / ts[0] / 1e9, med = flops / ts[ts.size() / 2] / 1e9;
  double cpu_best = 100 * flops / cs[0] / 1e9 / g_peak_per_cpu_s;
  double cpu_med = 100 * flops / cs[cs.size() / 2] / 1e9 / g_peak_per_cpu_s;
  std::printf("  %-34s %8.2f ms  best %6.1f GFLOP/s (%5.1f%%)  median %6.1f (%5.1f%%)  per-CPU-s %5.1f%% / %5.1f%%\n",
              name, ts[0] * 1e3, best, 100 * best / peak, med, 100 * med / peak, cpu_best, cpu_med);
}

void bench(double peak) {
  std::mt19937 g(7);
  std::printf("== sgemm (%s)\n", gemm::select_kernel().name);
  struct S { int64_t M, K, N; bool tb; };
  const S shapes[] = {{2048, 2048, 2048, false}, {2048, 2048, 2048, true}, {8192, 320, 320, true},
                      {8192, 320, 1280, true},   {8192, 1280, 320, true},  {2048, 640, 640, true},
                      {512, 1280, 1280, true},   {8192, 320, 2560, true},  {77, 768, 768, true},
                      {2, 1280, 1280, true}};
  std::vector<S> list(std::begin(shapes), std::end(shapes));
  if (const char* c = std::getenv("LAB_SHAPE")) {  // "M,K,N": one extra transB case
    long long m, k, n;
    if (std::sscanf(c, "%lld,%lld,%lld", &m, &k, &n) == 3) list.assign(1, S{m, k, n, true});
  }
  for (const S& s : list) {
    auto A = randv(size_t(s.M * s.K), g), B = randv(size_t(s.K * s.N), g), bias = randv(size_t(s.N), g);
    std::vector<float> C(size_t(s.M * s.N));
    GemmEpilogue ep;
    ep.bias = bias.data();
    char name[96];
    std::snprintf(name, sizeof name, "M%lld K%lld N%lld %s +bias", (long long)s.M, (long long)s.K, (long long)s.N,
                  s.tb ? "transB" : "B");
    timeit(name, 2.0 * s.M * s.N * s.K, peak, [&] {
      sgemm(1, false, s.tb, s.M, s.N, s.K, 1.f, A.data(), s.K, 0, B.data(), s.tb ? s.K : s.N, 0, 0.f, C.data(), s.N, 0, ep);
    });
  }
  std::printf("== conv2d 3x3 pad 1 (batch 2, NHWC)\n");
  struct CV { int64_t H, C, K; };
  const CV convs[] = {{64, 320, 320}, {32, 640, 640}, {16, 1280, 1280}, {8, 1280, 1280}, {512, 128, 128}, {256, 256, 256}};
  for (const CV& c : convs) {
    Conv2dParams p{2, c.H, c.H, c.C, c.K, 3, 3, 1, 1, 1, 1, 1, 1, c.H, c.H};
    auto x = randv(size_t(p.N * p.H * p.W * p.C), g), w = randv(size_t(p.K * 9 * p.C), g), b = randv(size_t(p.K), g);
    std::vector<float> y(size_t(p.N * p.P * p.Q * p.K));
    char name[96];
    std::snprintf(name, sizeof name, "%lldx%lldx%lld -> %lld +bias", (long long)c.H, (long long)c.H, (long long)c.C,
                  (long long)c.K);
    timeit(name, 2.0 * p.N * p.P * p.Q * p.K * 9 * p.C, peak,
           [&] { conv2d_nhwc(p, x.data(), w.data(), b.data(), nullptr, y.data()); });
  }
  {
    Conv2dParams p{2, 64, 64, 320, 320, 1, 1, 1, 1, 0, 0, 1, 1, 64, 64};
    auto x = randv(size_t(p.N * p.H * p.W * p.C), g), w = randv(size_t(p.K * p.C), g), r = randv(size_t(p.N * 64 * 64 * p.K), g);
    std::vector<float> y(size_t(p.N * p.P * p.Q * p.K));
    timeit("1x1 64x64x320 -> 320 +residual", 2.0 * p.N * 64 * 64 * p.K * p.C, peak,
           [&] { conv2d_nhwc(p, x.data(), w.data(), nullptr, r.data(), y.data()); });
  }
}

// The micro-kernel alone, on panels that stay in L1/L2: the ceiling the blocking can reach.
void bench_ukernel() {
  const gemm::Kernel& kr = gemm::select_kernel();
  std::mt19937 g(3);
  for (int64_t kc : {64, 128, 256, 384, 512}) {
    auto A = randv(size_t(kc * kr.mr * 4), g), B = randv(size_t(kc * kr.nr * 4 + 64), g);
    float* Bp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(B.data()) + 63) & ~uintptr_t(63));
    std::vector<float> C(size_t(kr.mr * 64));
    gemm::TileEpi e;
    e.beta = 1.f;
    const int iters = int(200'000'000 / (kc * kr.mr * kr.nr / 16));
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      double c0 = cpu_now();
      for (int it = 0; it < iters; ++it) {
        int s = it & 3;
        kr.kernel(kc, A.data() + s * kc * kr.mr, Bp + (s & 1) * kc * kr.nr, C.data(), 64, kr.mr, kr.nr, e);
      }
      best = std::max(best, 2.0 * iters * kc * kr.mr * kr.nr / (cpu_now() - c0) / 1e9);
    }
    std::printf("  micro-kernel %s kc %4lld: %.1f GFLOP per CPU-second (%.1f%% of one thread's peak)\n", kr.name,
                (long long)kc, best, 100 * best / g_peak_per_cpu_s);
  }
}

// Packing alone: ns per float for 14-row A panels and 32-row B panels (transposed B), from a
// cache-resident or a large matrix.
void bench_pack() {
  const gemm::Kernel& kr = gemm::select_kernel();
  std::mt19937 g(5);
  for (int width : {kr.mr, kr.nr})
    for (int64_t rows_total : {int64_t(64), int64_t(8192)}) {
      const int64_t K = 1280, kc = 384;
      auto A = randv(size_t(rows_total * K), g);
      std::vector<float> dst(size_t(gemm::a_panel_floats(kr, kc) + kr.nr * kc + 64));
      double best = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        double c0 = cpu_now();
        int64_t elems = 0;
        for (int it = 0; it < 20; ++it)
          for (int64_t i0 = 0; i0 + width <= rows_total; i0 += width)
            for (int64_t k0 = 0; k0 + kc <= K; k0 += kc) {
              const float* ptr[64];
              for (int i = 0; i < width; ++i) ptr[i] = A.data() + (i0 + i) * K + k0;
              if (width == kr.mr)
                gemm::pack_a_columns(kr, kc, 0, kc, ptr, width, dst.data());
              else
                kr.pack_rows(kc, ptr, width, width, dst.data());
              elems += kc * width;
            }
        best = std::min(best, (cpu_now() - c0) / elems);
      }
      std::printf("  pack %s panel of %d rows, from a %lld x %lld matrix: %.3f ns per float\n",
                  width == kr.mr ? "A" : "B", width, (long long)rows_total, (long long)K, best * 1e9);
    }
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "all";
  auto env = [](const char* n) { const char* s = std::getenv(n); return s ? std::atoll(s) : 0LL; };
  gemm::blocking_override() = {env("LAB_KC"), env("LAB_MC"), env("LAB_NC")};
  std::printf("isa %s, %d threads\n", isa_description().c_str(), dk::num_threads());
  const gemm::Kernel dispatched = gemm::select_kernel();
  int fails = 0;
  if (mode == "test" || mode == "all") {
    fails += run_tests(gemm::kernel_generic());
#if defined(DK_X86)
    if (cpu_features().isa >= Isa::AVX2) fails += run_tests(gemm::kernel_avx2());
    if (cpu_features().isa >= Isa::AVX512) fails += run_tests(gemm::kernel_avx512());
#endif
    gemm::set_kernel_for_lab(dispatched);
  }
  double peak = 0;
  if (mode == "peak" || mode == "bench" || mode == "ukernel" || mode == "all") peak = measure_peak(mode == "peak");
  if (mode == "ukernel") { bench_ukernel(); bench_pack(); }
  if (mode == "bench" || mode == "all") bench(peak);
  if (mode == "test" || mode == "all") std::printf(fails ? "TESTS FAILED (%d)\n" : "ALL TESTS PASSED\n", fails);
  return fails ? 1 : 0;
}
