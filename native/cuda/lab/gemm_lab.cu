// gemm_lab: correctness and speed lab for dk::cuda::gemm and dk::cuda::conv2d_nhwc. Not part of
// the addon. Needs a GPU. Build with native/cuda/lab/build.sh and run with native/cuda/lab/run.sh,
// or by hand from the repository root:
//
//   nvcc -O3 -std=c++17 -I native -gencode arch=compute_90a,code=sm_90a -o build/lab/gemm_lab \
//        native/cuda/lab/gemm_lab.cu native/cuda/gemm.cu native/cuda/conv2d.cu native/cuda/runtime.cu
//   (-arch=sm_90 instead builds what the addon's CMake builds: no wgmma kernel bodies;
//    add -DDK_LAB_CUBLAS -lcublas for a cuBLAS row in the timings)
//
// Without a GPU, -DLAB_HOST_MOCK with native/cuda/lab/host_mock.cc instead of the three .cu
// sources exercises this harness against naive host loops.
//
// Run:  build/lab/gemm_lab [--peak TFLOPS] [--quick] [--no-bench] [--no-check] [--paths LIST] [--device N]
//   --peak   dense fp16/bf16 tensor peak used for the "% peak" column (default 989.4, H100/H200 SXM)
//   --quick  fewer correctness cases (e.g. under compute-sanitizer), no timings
//   --paths  comma list of kernel families for float16/bfloat16 checks and timings, from
//            auto, mma, simt, wgmma3, wgmma4 (default: all that this build and GPU have;
//            timings default to mma, wgmma3, wgmma4, auto; or auto alone without wgmma)
// Exit status: 0 when every check passed, 1 on any mismatch or error.
//
// Checks: every case is computed by a double-precision host loop and compared for float32,
// float16 and bfloat16 and for every kernel family (auto, mma.sync, SIMT, and wgmma when the build
// and the GPU have it). Inputs are multiples of 1/4 in [-1, 1], so products and float32 sums are
// exact: the only error left is the final rounding to the storage type, and the tolerance
// |got - ref| <= atol + rtol*|ref| is that rounding's bound. Output padding (ld > N, batch gaps)
// must keep its sentinel; beta == 0 runs start from NaN-filled C (C must not be read).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/half.h"
#include "cuda/gemm_plan.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "cuda/stream.cuh"

#ifdef DK_LAB_CUBLAS
#include <cublas_v2.h>
#endif

using dk::DType;
using dk::cuda::GemmPath;

namespace {

int g_failures = 0;
int g_checks = 0;
int g_dev = 0;

#define LAB_CUDA(x)                                                                          \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, \
                   __LINE__, #x);                                                            \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// A kernel family to force, and the wgmma pipeline depth (0 = per-problem choice).
struct Variant {
  GemmPath path;
  int stages;
  const char* name;
};
const Variant kAuto{GemmPath::Auto, 0, "auto"}, kMma{GemmPath::MmaSync, 0, "mma"}, kSimt{GemmPath::Simt, 0, "simt"},
    kWg3{GemmPath::Wgmma, 3, "wgmma3"}, kWg4{GemmPath::Wgmma, 4, "wgmma4"};

std::vector<Variant> g_paths;  // --paths, empty = defaults

bool parse_paths(const std::string& list) {
  size_t at = 0;
  while (at <= list.size()) {
    const size_t comma = std::min(list.find(',', at), list.size());
    const std::string name = list.substr(at, comma - at);
    bool found = false;
    for (const Variant& v : {kAuto, kMma, kSimt, kWg3, kWg4})
      if (name == v.name) {
        g_paths.push_back(v);
        found = true;
      }
    if (!found) {
      std::fprintf(stderr, "unknown path '%s' (auto, mma, simt, wgmma3, wgmma4)\n", name.c_str());
      return false;
    }
    at = comma + 1;
  }
  return true;
}

void use_variant(const Variant& v) {
  dk::cuda::set_gemm_path(v.path);
  dk::cuda::set_wgmma_stages(v.stages);
}

// ------------------------------------------------------------------ host data in storage types
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
#ifdef LAB_HOST_MOCK  // host_mock.cc: "device" memory is host memory
  explicit DevBuf(size_t n) : p(std::malloc(n ? n : 16)), bytes(n) {}
  ~DevBuf() { std::free(p); }
#else
  explicit DevBuf(size_t n) : bytes(n) { LAB_CUDA(cudaMalloc(&p, n ? n : 16)); }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
#endif
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

std::vector<unsigned char> encode(DType dt, const std::vector<float>& h) {
  const size_t es = dk::dtype_size(dt);
  std::vector<unsigned char> raw(h.size() * es);
  for (size_t i = 0; i < h.size(); ++i) {
    if (dt == DType::F32) {
      std::memcpy(&raw[i * 4], &h[i], 4);
    } else {
      uint16_t u = dt == DType::F16 ? dk::f32_to_f16(h[i]) : dk::f32_to_bf16(h[i]);
      std::memcpy(&raw[i * 2], &u, 2);
    }
  }
  return raw;
}

std::vector<float> decode(DType dt, const std::vector<unsigned char>& raw, size_t n) {
  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) {
    if (dt == DType::F32) {
      std::memcpy(&h[i], &raw[i * 4], 4);
    } else {
      uint16_t u;
      std::memcpy(&u, &raw[i * 2], 2);
      h[i] = dt == DType::F16 ? dk::f16_to_f32(u) : dk::bf16_to_f32(u);
    }
  }
  return h;
}

// Device copy of host floats at `offset_elems` into a fresh buffer (offset > 0 misaligns the base).
struct DevTensor {
  DevBuf buf;
  DType dt;
  size_t n, off;
  DevTensor(DType d, const std::vector<float>& h, size_t offset_elems = 0)
      : buf((h.size() + offset_elems) * dk::dtype_size(d)), dt(d), n(h.size()), off(offset_elems) {
    auto raw = encode(d, h);
    if (!raw.empty()) dk::cuda::copy_h2d(g_dev, ptr(), raw.data(), raw.size());
  }
  void* ptr() const { return static_cast<unsigned char*>(buf.p) + off * dk::dtype_size(dt); }
  std::vector<float> read() const {
    std::vector<unsigned char> raw(n * dk::dtype_size(dt));
    if (!raw.empty()) dk::cuda::copy_d2h(g_dev, raw.data(), ptr(), raw.size());
    return decode(dt, raw, n);
  }
};

struct Tol {
  double atol, rtol;
};
Tol tol_for(DType dt) {
  // the storage rounding of the result: half an ulp is 2^-24, 2^-11, 2^-8 relative
  if (dt == DType::F16) return {1e-3, 1.2e-3};
  if (dt == DType::BF16) return {1e-3, 5e-3};
  return {1e-5, 1e-5};
}

float quarter(std::mt19937& rng) { return static_cast<float>(static_cast<int>(rng() % 9) - 4) * 0.25f; }

const float kSentinel = 96.0f;  // exact in every dtype

// Runs `body(lo, hi)` over [0, n) on the host's cores.
void parallel_rows(int64_t n, const std::function<void(int64_t, int64_t)>& body) {
  int nt = static_cast<int>(std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), n));
  if (nt <= 1) {
    body(0, n);
    return;
  }
  std::vector<std::thread> ts;
  for (int t = 0; t < nt; ++t) ts.emplace_back([&, t] { body(n * t / nt, n * (t + 1) / nt); });
  for (auto& t : ts) t.join();
}

// Compares a result buffer with the reference. map(i, &ri) gives the reference index of buffer
// element i, or false for padding (which must still hold the sentinel); where(i) names element i.
bool compare(const char* what, DType dt, const std::vector<float>& got, const std::vector<double>& ref,
             const std::function<bool(size_t, size_t*)>& map, const std::function<std::string(size_t)>& where) {
  const Tol t = tol_for(dt);
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    size_t ri = 0;
    if (map(i, &ri)) {
      const double r = ref[ri], g = got[i];
      const double err = std::fabs(g - r);
      const double lim = t.atol + t.rtol * std::fabs(r);
      if (!(err <= lim)) {
        if (bad < 5)
          std::printf("    MISMATCH %s at %s: got %.6g want %.6g (|err| %.3g > %.3g)\n", what, where(i).c_str(), g, r,
                      err, lim);
        ++bad;
      }
    } else if (got[i] != kSentinel) {
      if (bad < 5) std::printf("    CLOBBERED %s padding at buffer index %zu: %.6g\n", what, i, got[i]);
      ++bad;
    }
  }
  ++g_checks;
  if (bad) {
    ++g_failures;
    std::printf("  FAIL %s: %d bad elements\n", what, bad);
    return false;
  }
  return true;
}

// ------------------------------------------------------------------ gemm checks
struct GemmCase {
  int batch;
  bool tA, tB;
  int M, N, K;
  int padA, padB, padC;  // extra elements per row (leading dim = cols + pad)
  bool bcastA, bcastB;   // stride 0 between batch items
  float alpha, beta;
  bool bias, res;
  int offA;  // base pointer offset in elements (misaligned when odd)
};

std::string case_str(const GemmCase& c) {
  char s[256];
  std::snprintf(s, sizeof s, "b%d %c%c M%d N%d K%d pad%d/%d/%d%s%s a%.2g b%.2g%s%s%s", c.batch, c.tA ? 'T' : 'N',
                c.tB ? 'T' : 'N', c.M, c.N, c.K, c.padA, c.padB, c.padC, c.bcastA ? " bcastA" : "",
                c.bcastB ? " bcastB" : "", c.alpha, c.beta, c.bias ? " bias" : "", c.res ? " res" : "",
                c.offA ? " offA" : "");
  return s;
}

void check_gemm_case(const GemmCase& c, const std::vector<Variant>& paths16, uint32_t seed) {
  std::mt19937 rng(seed);
  const int rowsA = c.tA ? c.K : c.M, colsA = c.tA ? c.M : c.K;
  const int rowsB = c.tB ? c.N : c.K, colsB = c.tB ? c.K : c.N;
  const int64_t lda = colsA + c.padA, ldb = colsB + c.padB, ldc = c.N + c.padC, ldr = ldc;
  const int64_t sA = c.bcastA ? 0 : rowsA * lda + 8, sB = c.bcastB ? 0 : rowsB * ldb + 8;
  const int64_t sC = c.M * ldc + 8, sR = c.M * ldr + 8;
  const int nA = c.bcastA ? 1 : c.batch, nB = c.bcastB ? 1 : c.batch;
  std::vector<float> A(std::max<int64_t>(1, (nA - 1) * sA + rowsA * lda)), B(std::max<int64_t>(1, (nB - 1) * sB + rowsB * ldb));
  for (auto& v : A) v = quarter(rng);
  for (auto& v : B) v = quarter(rng);
  std::vector<float> bias(c.N), res((c.batch - 1) * sR + c.M * ldr, kSentinel), C0((c.batch - 1) * sC + c.M * ldc, kSentinel);
  for (auto& v : bias) v = quarter(rng);
  for (int b = 0; b < c.batch; ++b)
    for (int m = 0; m < c.M; ++m)
      for (int n = 0; n < c.N; ++n) {
        res[b * sR + m * ldr + n] = quarter(rng);
        C0[b * sC + m * ldc + n] = c.beta != 0.f ? quarter(rng) : NAN;
      }
  // reference [batch][M][N]
  std::vector<double> ref(static_cast<size_t>(c.batch) * c.M * c.N);
  parallel_rows(static_cast<int64_t>(c.batch) * c.M, [&](int64_t lo, int64_t hi) {
    for (int64_t bm = lo; bm < hi; ++bm) {
      const int b = static_cast<int>(bm / c.M), m = static_cast<int>(bm % c.M);
      const float* Ab = A.data() + (c.bcastA ? 0 : b * sA);
      const float* Bb = B.data() + (c.bcastB ? 0 : b * sB);
      for (int n = 0; n < c.N; ++n) {
        double s = 0;
        for (int k = 0; k < c.K; ++k) {
          const double a = c.tA ? Ab[k * lda + m] : Ab[m * lda + k];
          const double bb = c.tB ? Bb[n * ldb + k] : Bb[k * ldb + n];
          s += a * bb;
        }
        double o = c.alpha * s;
        if (c.beta != 0.f) o += c.beta * static_cast<double>(C0[b * sC + m * ldc + n]);
        if (c.bias) o += bias[n];
        if (c.res) o += res[b * sR + m * ldr + n];
        ref[bm * c.N + n] = o;
      }
    }
  });
  auto map = [&](size_t i, size_t* ri) {
    const int64_t b = static_cast<int64_t>(i) / sC, r = static_cast<int64_t>(i) % sC;
    const int64_t m = r / ldc, n = r % ldc;
    if (m >= c.M || n >= c.N) return false;
    *ri = (b * c.M + m) * c.N + n;
    return true;
  };
  auto where = [&](size_t i) {
    const int64_t b = static_cast<int64_t>(i) / sC, r = static_cast<int64_t>(i) % sC;
    char s[96];
    std::snprintf(s, sizeof s, "[b%lld m%lld n%lld]", (long long)b, (long long)(r / ldc), (long long)(r % ldc));
    return std::string(s);
  };
  const std::string name = case_str(c);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    DevTensor dA(dt, A, c.offA), dB(dt, B), dBias(dt, bias), dRes(dt, res);
    const std::vector<Variant> paths = dt == DType::F32 ? std::vector<Variant>{kAuto} : paths16;
    for (const Variant& path : paths) {
      DevTensor dC(dt, C0);
      use_variant(path);
      dk::cuda::GemmEpilogue ep;
      ep.bias = c.bias ? static_cast<const float*>(dBias.ptr()) : nullptr;
      ep.residual = c.res ? static_cast<const float*>(dRes.ptr()) : nullptr;
      ep.ldr = ldr;
      ep.stride_residual = sR;
      std::string plan;
      try {
        dk::cuda::gemm(g_dev, dt, c.batch, c.tA, c.tB, c.M, c.N, c.K, c.alpha, dA.ptr(), lda, sA, dB.ptr(), ldb, sB,
                       c.beta, dC.ptr(), ldc, sC, ep);
        plan = dk::cuda::gemm_last_plan();
        dk::cuda::synchronize(g_dev);
      } catch (const std::exception& e) {
        std::printf("  FAIL gemm %s %s %s: threw %s\n", name.c_str(), dk::dtype_name(dt), path.name, e.what());
        ++g_failures;
        ++g_checks;
        continue;
      }
      const std::string what = "gemm " + name + " " + dk::dtype_name(dt) + " path=" + path.name + " [" + plan + "]";
      if (compare(what.c_str(), dt, dC.read(), ref, map, where) && std::getenv("LAB_VERBOSE")) std::printf("  ok %s\n", what.c_str());
    }
  }
  use_variant(kAuto);
}

// ------------------------------------------------------------------ conv checks
struct ConvCase {
  int N, H, W, C, K, R, S, sh, sw, ph, pw, dh, dw;
  bool bias, res;
};

void check_conv_case(const ConvCase& cc, const std::vector<Variant>& paths16, uint32_t seed) {
  std::mt19937 rng(seed);
  dk::cuda::Conv2dParams p;
  p.N = cc.N; p.H = cc.H; p.W = cc.W; p.C = cc.C; p.K = cc.K; p.R = cc.R; p.S = cc.S;
  p.stride_h = cc.sh; p.stride_w = cc.sw; p.pad_h = cc.ph; p.pad_w = cc.pw; p.dil_h = cc.dh; p.dil_w = cc.dw;
  p.P = (cc.H + 2 * cc.ph - cc.dh * (cc.R - 1) - 1) / cc.sh + 1;
  p.Q = (cc.W + 2 * cc.pw - cc.dw * (cc.S - 1) - 1) / cc.sw + 1;
  std::vector<float> x(static_cast<size_t>(cc.N) * cc.H * cc.W * cc.C), w(static_cast<size_t>(cc.K) * cc.R * cc.S * cc.C);
  for (auto& v : x) v = quarter(rng);
  for (auto& v : w) v = quarter(rng);
  const size_t ny = static_cast<size_t>(p.N) * p.P * p.Q * p.K;
  std::vector<float> bias(cc.K), res(ny), y0(ny, NAN);
  for (auto& v : bias) v = quarter(rng);
  for (auto& v : res) v = quarter(rng);
  std::vector<double> ref(ny);
  parallel_rows(static_cast<int64_t>(p.N) * p.P * p.Q, [&](int64_t lo, int64_t hi) {
    for (int64_t pix = lo; pix < hi; ++pix) {
      const int64_t q = pix % p.Q, pp = (pix / p.Q) % p.P, n = pix / (p.Q * p.P);
      for (int k = 0; k < cc.K; ++k) {
        double s = 0;
        for (int r = 0; r < cc.R; ++r)
          for (int t = 0; t < cc.S; ++t) {
            const int64_t ih = pp * cc.sh - cc.ph + r * cc.dh, iw = q * cc.sw - cc.pw + t * cc.dw;
            if (ih < 0 || ih >= cc.H || iw < 0 || iw >= cc.W) continue;
            const float* xp = &x[((n * cc.H + ih) * cc.W + iw) * cc.C];
            const float* wp = &w[((static_cast<int64_t>(k) * cc.R + r) * cc.S + t) * cc.C];
            for (int c = 0; c < cc.C; ++c) s += static_cast<double>(xp[c]) * wp[c];
          }
        if (cc.bias) s += bias[k];
        if (cc.res) s += res[pix * cc.K + k];
        ref[pix * cc.K + k] = s;
      }
    }
  });
  char nm[200];
  std::snprintf(nm, sizeof nm, "conv N%d %dx%dx%d->%d k%dx%d s%d,%d p%d,%d d%d,%d%s%s", cc.N, cc.H, cc.W, cc.C, cc.K, cc.R,
                cc.S, cc.sh, cc.sw, cc.ph, cc.pw, cc.dh, cc.dw, cc.bias ? " bias" : "", cc.res ? " res" : "");
  auto map = [](size_t i, size_t* ri) {
    *ri = i;
    return true;
  };
  auto where = [&](size_t i) {
    char s[96];
    std::snprintf(s, sizeof s, "[pixel %zu k %zu]", i / cc.K, i % cc.K);
    return std::string(s);
  };
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    DevTensor dx(dt, x), dw(dt, w), db(dt, bias), dr(dt, res);
    const std::vector<Variant> paths = dt == DType::F32 ? std::vector<Variant>{kAuto} : paths16;
    for (const Variant& path : paths) {
      DevTensor dy(dt, y0);
      use_variant(path);
      std::string plan;
      try {
        dk::cuda::conv2d_nhwc(g_dev, dt, p, dx.ptr(), dw.ptr(), cc.bias ? db.ptr() : nullptr, cc.res ? dr.ptr() : nullptr,
                              dy.ptr());
        plan = dk::cuda::gemm_last_plan();
        dk::cuda::synchronize(g_dev);
      } catch (const std::exception& e) {
        std::printf("  FAIL %s %s %s: threw %s\n", nm, dk::dtype_name(dt), path.name, e.what());
        ++g_failures;
        ++g_checks;
        continue;
      }
      const std::string what = std::string(nm) + " " + dk::dtype_name(dt) + " path=" + path.name + " [" + plan + "]";
      if (compare(what.c_str(), dt, dy.read(), ref, map, where) && std::getenv("LAB_VERBOSE")) std::printf("  ok %s\n", what.c_str());
    }
  }
  use_variant(kAuto);
}

// ------------------------------------------------------------------ timing
#ifndef LAB_HOST_MOCK
struct Timing {
  double eager_ms = 0;  // back-to-back launches from the host, as the addon's queue issues them
  double graph_ms = 0;  // the same calls captured in a CUDA graph: kernel time without host gaps
};

// Average time per call of f (which enqueues work on the device's stream).
Timing time_call(const std::function<void()>& f) {
  cudaStream_t st = dk::cuda::stream(g_dev);
  cudaEvent_t e0, e1;
  LAB_CUDA(cudaEventCreate(&e0));
  LAB_CUDA(cudaEventCreate(&e1));
  f();  // warm: device caps, kernel attributes, split-K workspace in the pool
  LAB_CUDA(cudaStreamSynchronize(st));
  LAB_CUDA(cudaEventRecord(e0, st));
  f();
  LAB_CUDA(cudaEventRecord(e1, st));
  LAB_CUDA(cudaEventSynchronize(e1));
  float one = 0;
  LAB_CUDA(cudaEventElapsedTime(&one, e0, e1));
  const int iters = std::max(20, std::min(400, static_cast<int>(10.0 / std::max(one, 1e-3f))));
  Timing t;
  for (int i = 0; i < 3; ++i) f();
  LAB_CUDA(cudaEventRecord(e0, st));
  for (int i = 0; i < iters; ++i) f();
  LAB_CUDA(cudaEventRecord(e1, st));
  LAB_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  LAB_CUDA(cudaEventElapsedTime(&ms, e0, e1));
  t.eager_ms = ms / iters;

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool ok = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (ok) {
    try {
      for (int i = 0; i < iters; ++i) f();
    } catch (const std::exception& e) {
      std::printf("    (graph capture: %s)\n", e.what());
      ok = false;
    }
    ok = cudaStreamEndCapture(st, &graph) == cudaSuccess && ok;
  }
  if (ok) ok = cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  if (ok) {
    LAB_CUDA(cudaGraphLaunch(exec, st));
    LAB_CUDA(cudaEventRecord(e0, st));
    LAB_CUDA(cudaGraphLaunch(exec, st));
    LAB_CUDA(cudaEventRecord(e1, st));
    LAB_CUDA(cudaEventSynchronize(e1));
    LAB_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    t.graph_ms = ms / iters;
  } else {
    cudaGetLastError();
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return t;
}

std::vector<float> random_uniform(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

void print_header() {
  std::printf("  %-30s %-8s %-7s %10s %10s %9s %7s  %s\n", "shape", "dtype", "path", "eager us", "graph us",
              "TFLOP/s", "%peak", "plan (TFLOP/s and %peak from the graph time)");
}

void print_row(const char* what, const char* dt, const char* path, const Timing& t, double flop, double peak,
               const std::string& plan) {
  const double ms = t.graph_ms > 0 ? t.graph_ms : t.eager_ms;
  const double tf = flop / (ms * 1e-3) / 1e12;
  std::printf("  %-30s %-8s %-7s %10.2f %10.2f %9.1f %6.1f%%  %s\n", what, dt, path, t.eager_ms * 1e3, t.graph_ms * 1e3,
              tf, 100.0 * tf / peak, plan.c_str());
}

std::vector<Variant> bench_variants(bool have_wgmma) {
  std::vector<Variant> v;
  if (!g_paths.empty()) {
    for (const Variant& p : g_paths)
      if (have_wgmma || p.path != GemmPath::Wgmma) v.push_back(p);
    return v;
  }
  if (have_wgmma) return {kMma, kWg3, kWg4, kAuto};  // mma first: a faulting wgmma kernel cannot hide its numbers
  return {kAuto};
}

void bench(double peak, bool have_wgmma) {
  struct G {
    int M, N, K;
    const char* note;
  };
  // SD 1.x U-Net linear layers (A = activations [M,K], B = nn.Linear weight [N,K]).
  const G gemms[] = {{8192, 320, 320, "attn proj 64x64 (K320 N320)"},
                     {8192, 1280, 320, "64x64 K320 N1280"},
                     {8192, 320, 1280, "ff out 64x64 (K1280 N320)"},
                     {2048, 640, 640, "attn proj 32x32 (K640 N640)"},
                     {512, 1280, 1280, "attn proj 16x16 (K1280 N1280)"},
                     {8192, 2560, 320, "geglu 64x64 (K320 N2560)"}};
  std::printf("\nGEMM timings (C[M,N] = A[M,K] @ B[N,K]^T, peak %.1f TFLOP/s; inputs stay L2-warm)\n", peak);
  print_header();
#ifdef DK_LAB_CUBLAS
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
    std::printf("cublasCreate failed\n");
    std::exit(1);
  }
  cublasSetStream(h, dk::cuda::stream(g_dev));
#endif
  for (const G& g : gemms) {
    for (DType dt : {DType::F16, DType::BF16}) {
      DevTensor A(dt, random_uniform(static_cast<size_t>(g.M) * g.K, 1)), B(dt, random_uniform(static_cast<size_t>(g.N) * g.K, 2));
      DevBuf C(static_cast<size_t>(g.M) * g.N * 2);
      const double flop = 2.0 * g.M * g.N * g.K;
      char what[96];
      std::snprintf(what, sizeof what, "%dx%dx%d", g.M, g.N, g.K);
      for (const Variant& path : bench_variants(have_wgmma)) {
        use_variant(path);
        auto f = [&] {
          dk::cuda::gemm(g_dev, dt, 1, false, true, g.M, g.N, g.K, 1.f, A.ptr(), g.K, 0, B.ptr(), g.K, 0, 0.f, C.p, g.N,
                         0, dk::cuda::GemmEpilogue());
        };
        const Timing t = time_call(f);
        print_row(what, dk::dtype_name(dt), path.name, t, flop, peak, dk::cuda::gemm_last_plan());
      }
      use_variant(kAuto);
#ifdef DK_LAB_CUBLAS
      const float one = 1.f, zero = 0.f;
      const cudaDataType ty = dt == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
      auto fc = [&] {
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, g.N, g.M, g.K, &one, B.ptr(), ty, g.K, A.ptr(), ty, g.K, &zero, C.p, ty,
                     g.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      };
      print_row(what, dk::dtype_name(dt), "cublas", time_call(fc), flop, peak, "");
#endif
    }
  }
#ifdef DK_LAB_CUBLAS
  cublasDestroy(h);
#endif

  struct Cv {
    int N, H, W, C, K;
  };
  const Cv convs[] = {{2, 64, 64, 320, 320}, {2, 32, 32, 640, 640}, {2, 16, 16, 1280, 1280}, {2, 8, 8, 1280, 1280}};
  std::printf("\nConv 3x3 pad 1 timings (NHWC x OHWI, bias fused)\n");
  print_header();
  for (const Cv& c : convs) {
    for (DType dt : {DType::F16, DType::BF16}) {
      dk::cuda::Conv2dParams p;
      p.N = c.N; p.H = c.H; p.W = c.W; p.C = c.C; p.K = c.K; p.R = 3; p.S = 3;
      p.stride_h = p.stride_w = 1; p.pad_h = p.pad_w = 1; p.dil_h = p.dil_w = 1; p.P = c.H; p.Q = c.W;
      DevTensor x(dt, random_uniform(static_cast<size_t>(c.N) * c.H * c.W * c.C, 3));
      DevTensor w(dt, random_uniform(static_cast<size_t>(c.K) * 9 * c.C, 4));
      DevTensor b(dt, random_uniform(c.K, 5));
      DevBuf y(static_cast<size_t>(c.N) * c.H * c.W * c.K * 2);
      const double flop = 2.0 * c.N * c.H * c.W * c.K * 9.0 * c.C;
      char what[96];
      std::snprintf(what, sizeof what, "%dx%dx%dx%d->%d", c.N, c.H, c.W, c.C, c.K);
      for (const Variant& path : bench_variants(have_wgmma)) {
        use_variant(path);
        auto f = [&] { dk::cuda::conv2d_nhwc(g_dev, dt, p, x.ptr(), w.ptr(), b.ptr(), nullptr, y.p); };
        const Timing t = time_call(f);
        print_row(what, dk::dtype_name(dt), path.name, t, flop, peak, dk::cuda::gemm_last_plan());
      }
      use_variant(kAuto);
    }
  }
}

#endif  // LAB_HOST_MOCK

}  // namespace

int main(int argc, char** argv) {
  double peak = 989.4;
  bool quick = false, do_bench = true, do_check = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--peak" && i + 1 < argc) peak = std::atof(argv[++i]);
    else if (a == "--quick") { quick = true; do_bench = false; }
    else if (a == "--no-bench") do_bench = false;
    else if (a == "--no-check") do_check = false;
    else if (a == "--device" && i + 1 < argc) g_dev = std::atoi(argv[++i]);
    else if (a == "--paths" && i + 1 < argc) {
      if (!parse_paths(argv[++i])) return 2;
    }
    else {
      std::fprintf(stderr, "usage: %s [--peak TFLOPS] [--quick] [--no-bench] [--no-check] [--paths LIST] [--device N]\n", argv[0]);
      return 2;
    }
  }
  if (dk::cuda::device_count() <= g_dev) {
    std::fprintf(stderr, "no CUDA device %d\n", g_dev);
    return 1;
  }
  try {
    dk::cuda::bind_thread_to_device(g_dev);
    const dk::cuda::DeviceInfo info = dk::cuda::device_info(g_dev);
    const bool wg = dk::cuda::gemm_wgmma_available(g_dev);
    std::printf("device %d: %s, sm_%d%d, %d SMs; wgmma kernels: %s\n", g_dev, info.name.c_str(), info.major, info.minor,
                info.multiprocessors, wg ? "yes" : "no");
    std::vector<Variant> paths16;
    if (g_paths.empty()) {
      paths16 = {kAuto, kMma, kSimt};
      if (wg) {
        paths16.push_back(kWg3);
        paths16.push_back(kWg4);
      }
    } else {
      for (const Variant& v : g_paths) {
        if (v.path == GemmPath::Wgmma && !wg) std::printf("note: %s requested but this build/GPU has no wgmma kernels; skipped\n", v.name);
        else paths16.push_back(v);
      }
    }
    std::printf("float16/bfloat16 paths checked:");
    for (const Variant& v : paths16) std::printf(" %s", v.name);
    std::printf("\n");

    if (do_check) {
      std::vector<GemmCase> gc = {
          // batch tA tB M N K padA padB padC bcastA bcastB alpha beta bias res offA
          {1, false, true, 1, 1, 1, 0, 0, 0, false, false, 1.f, 0.f, false, false, 0},
          {1, false, true, 3, 5, 7, 1, 1, 1, false, false, 1.f, 0.f, true, false, 0},  // K tail, odd ldc
          {1, false, true, 19, 23, 9, 0, 0, 0, false, false, 1.f, 0.f, true, true, 0},  // lda 9: simt fallback
          {1, false, true, 17, 33, 9, 7, 7, 3, false, false, 0.5f, 0.f, true, true, 0},
          {1, false, true, 128, 160, 64, 0, 0, 0, false, false, 1.f, 0.f, false, false, 0},
          {1, false, true, 127, 329, 200, 0, 0, 0, false, false, 1.f, 0.25f, true, true, 0},
          {1, false, true, 130, 330, 100, 4, 4, 8, false, false, 0.5f, 0.f, true, true, 0},  // K tail in-chunk
          {1, false, true, 77, 768, 96, 0, 0, 0, false, false, 1.f, 0.f, true, false, 0},
          {1, false, true, 64, 320, 2048, 0, 0, 0, false, false, 1.f, 0.f, true, true, 0},  // split-K
          {1, false, true, 200, 1280, 1280, 0, 0, 0, false, false, 1.f, 0.5f, true, true, 0},
          {3, false, true, 65, 96, 72, 0, 0, 0, false, true, 1.f, 0.f, true, true, 0},   // broadcast weights
          {1, false, true, 33, 40, 48, 0, 0, 0, false, false, 1.f, 0.f, false, false, 1},  // misaligned base
          {1, false, true, 40, 41, 24, 0, 0, 1, false, false, 1.f, 0.f, true, true, 0},   // odd ldc: scalar epilogue
          {1, false, true, 5, 7, 0, 0, 0, 0, false, false, 1.f, 0.5f, true, false, 0},    // K = 0
          {1, false, false, 130, 200, 72, 0, 0, 0, false, false, 1.f, 0.f, true, false, 0},
          {1, true, true, 130, 200, 72, 0, 0, 0, false, false, 1.f, 0.f, false, true, 0},
          {1, true, false, 130, 200, 72, 0, 0, 0, false, false, 0.5f, 0.25f, false, false, 0},
          {1, false, false, 17, 9, 33, 0, 0, 0, false, false, 1.f, 0.f, false, false, 0},
          {1, true, false, 9, 21, 13, 3, 5, 0, false, false, 1.f, 0.f, false, false, 0},
          {2, true, true, 257, 129, 300, 0, 0, 0, true, false, 1.f, 0.f, true, false, 0},  // broadcast A
          {2, false, false, 96, 1280, 1024, 8, 8, 0, false, false, 1.f, 0.f, true, true, 0},  // split-K, NN
          {2, false, true, 100, 320, 1536, 0, 0, 8, false, true, 1.f, 0.25f, true, true, 0},  // split-K, batch
          {4, true, false, 77, 77, 64, 3, 3, 3, false, false, 0.125f, 0.f, false, false, 0},  // both MN-major
          {2, false, false, 77, 64, 77, 1, 0, 0, false, false, 1.f, 0.f, false, false, 0},  // lda 78: simt
      };
      std::vector<ConvCase> cv = {
          {1, 5, 7, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, true, true},
          {2, 9, 9, 16, 24, 3, 3, 2, 2, 1, 1, 1, 1, true, false},
          {1, 6, 6, 3, 5, 3, 3, 1, 1, 1, 1, 1, 1, true, false},
          {2, 7, 5, 4, 13, 3, 3, 1, 1, 1, 1, 1, 1, true, true},
          {1, 11, 13, 32, 40, 3, 3, 1, 1, 2, 2, 2, 2, false, true},
          {2, 8, 8, 64, 72, 1, 1, 1, 1, 0, 0, 1, 1, true, true},
          {1, 9, 9, 16, 8, 1, 1, 2, 2, 0, 0, 1, 1, true, false},
          {1, 10, 10, 24, 48, 5, 5, 1, 1, 2, 2, 1, 1, true, false},
          {1, 7, 9, 16, 16, 3, 5, 1, 2, 1, 2, 1, 1, true, true},
          {1, 4, 4, 8, 4, 3, 3, 1, 1, 0, 0, 1, 1, false, false},
          {3, 5, 5, 8, 9, 2, 2, 1, 1, 0, 0, 1, 1, true, false},
          {2, 16, 16, 320, 320, 3, 3, 1, 1, 1, 1, 1, 1, true, true},
          {1, 8, 8, 1280, 1280, 3, 3, 1, 1, 1, 1, 1, 1, true, false},
          {1, 20, 20, 64, 96, 3, 3, 2, 2, 1, 1, 1, 1, true, false},
      };
      if (quick) {
        gc.erase(std::remove_if(gc.begin(), gc.end(), [](const GemmCase& c) { return int64_t(c.M) * c.N * c.K > 4000000; }), gc.end());
        cv.erase(std::remove_if(cv.begin(), cv.end(), [](const ConvCase& c) { return c.C >= 320; }), cv.end());
      }
      std::printf("\ngemm checks (%zu cases x dtypes x paths)\n", gc.size());
      uint32_t seed = 1234;
      for (const GemmCase& c : gc) check_gemm_case(c, paths16, seed++);
      std::printf("conv2d checks (%zu cases x dtypes x paths)\n", cv.size());
      for (const ConvCase& c : cv) check_conv_case(c, paths16, seed++);
      std::printf("\n%d checks, %d failed\n", g_checks, g_failures);
    }
#ifndef LAB_HOST_MOCK
    if (do_bench) bench(peak, wg);
#else
    (void)peak;
#endif
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  if (g_failures) {
    std::printf("RESULT: FAIL (%d of %d checks)\n", g_failures, g_checks);
    return 1;
  }
  std::printf("RESULT: PASS (%d checks)\n", g_checks);
  return 0;
}
