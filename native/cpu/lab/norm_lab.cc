// Norm lab: group norm (channels-last, +SiLU), layer norm and last-dim softmax for every ISA
// kernel set against naive double-precision references (odd sizes, null gamma/beta, large mean
// offsets, -inf entries), then bandwidth on Stable Diffusion shapes. Not part of the addon.
//
// Build and run from the repository root (ISA files get the flags CMake gives them):
//   F="-std=c++17 -O3 -DDK_X86=1 -Inative"
//   g++ $F -mavx2 -mfma -mf16c -c native/cpu/norm_avx2.cc -o /tmp/norm_avx2.o
//   g++ $F -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16 -mfma -c native/cpu/norm_avx512.cc -o /tmp/norm_avx512.o
//   g++ $F -o /tmp/norm_lab native/cpu/lab/norm_lab.cc native/cpu/norm.cc native/core/thread_pool.cc native/cpu/cpu_features.cc /tmp/norm_avx2.o /tmp/norm_avx512.o -lpthread
//   /tmp/norm_lab            # tests + benchmark;  --quick: tests only;  --bench: benchmark only
// (on arm64: drop -DDK_X86=1 and the two ISA objects). DIFFUSEKIT_THREADS=1 checks the serial path.
// GB/s counts the minimum traffic (x read once, y written once); group norm reads x twice.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../core/thread_pool.h"
#include "../cpu_features.h"
#include "../kernels.h"
#include "../norm_internal.h"

namespace norm = dk::cpu::norm;

namespace {

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<uint32_t>(s >> 11);
  }
  float uniform() { return (next() & 0xFFFFFF) / 16777216.0f * 2.f - 1.f; }
};

// |got - want| <= atol + rtol * |want|; prints the first few mismatches with their index.
int compare(const char* what, const std::string& desc, const float* got, const std::vector<double>& want, double atol,
            double rtol, double* max_err) {
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool both_nan = std::isnan(g) && std::isnan(w);
    const double err = both_nan ? 0 : std::fabs(g - w);
    if (!both_nan && !(err <= atol + rtol * std::fabs(w))) {
      if (bad < 4) std::printf("  MISMATCH %s [%s] at %zu: got %.8g want %.8g\n", what, desc.c_str(), i, g, w);
      ++bad;
    } else if (!both_nan && std::isfinite(err)) {
      *max_err = std::max(*max_err, err / (1.0 + std::fabs(w)));
    }
  }
  return bad;
}

int test_group_norm(const norm::Kernels& k, double* max_err) {
  struct C {
    int64_t N, L, C, G;
    bool affine, silu;
    float offset, spread;
  };
  const C cases[] = {
      {1, 1, 1, 1, false, false, 0.f, 1.f},      {2, 7, 6, 3, true, true, 0.f, 1.f},
      {1, 300, 17, 1, true, false, 0.f, 2.f},    {3, 33, 40, 8, false, true, 0.f, 1.f},
      {2, 4096, 320, 32, true, true, 3.f, 0.5f}, {1, 1000, 128, 32, true, false, 1000.f, 1.f},
      {2, 257, 1280, 32, true, true, 0.f, 4.f},  {1, 70000, 4, 2, true, false, 50.f, 0.1f},
      {2, 5, 96, 32, true, true, -2.f, 1.f},     {1, 1, 640, 32, true, false, 0.f, 1.f},
  };
  int fails = 0;
  for (const C& c : cases) {
    Rng rng(c.N * 1000 + c.L + c.C);
    std::vector<float> x(c.N * c.L * c.C), y(x.size()), gamma(c.C), beta(c.C);
    for (auto& v : x) v = c.offset + c.spread * rng.uniform();
    for (auto& v : gamma) v = 1.f + 0.5f * rng.uniform();
    for (auto& v : beta) v = rng.uniform();
    const float eps = 1e-5f;
    norm::group_norm_with(k, x.data(), y.data(), c.N, c.L, c.C, c.G, c.affine ? gamma.data() : nullptr,
                          c.affine ? beta.data() : nullptr, eps, c.silu);
    // y [N, L, C]; two-pass double reference per (n, g)
    std::vector<double> ref(x.size());
    const int64_t Cg = c.C / c.G;
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t g = 0; g < c.G; ++g) {
        double sum = 0, sq = 0;
        for (int64_t l = 0; l < c.L; ++l)
          for (int64_t ch = g * Cg; ch < (g + 1) * Cg; ++ch) sum += x[(n * c.L + l) * c.C + ch];
        const double mean = sum / (c.L * Cg);
        for (int64_t l = 0; l < c.L; ++l)
          for (int64_t ch = g * Cg; ch < (g + 1) * Cg; ++ch) {
            const double d = x[(n * c.L + l) * c.C + ch] - mean;
            sq += d * d;
          }
        const double rstd = 1.0 / std::sqrt(sq / (c.L * Cg) + eps);
        for (int64_t l = 0; l < c.L; ++l)
          for (int64_t ch = g * Cg; ch < (g + 1) * Cg; ++ch) {
            const int64_t i = (n * c.L + l) * c.C + ch;
            double v = (x[i] - mean) * rstd;
            if (c.affine) v = v * gamma[ch] + beta[ch];
            if (c.silu) v = v / (1.0 + std::exp(-v));
            ref[i] = v;
          }
      }
    char desc[160];
    std::snprintf(desc, sizeof desc, "N=%lld L=%lld C=%lld G=%lld affine=%d silu=%d offset=%g", (long long)c.N,
                  (long long)c.L, (long long)c.C, (long long)c.G, c.affine, c.silu, c.offset);
    if (compare("group_norm", desc, y.data(), ref, 2e-6, 1e-5, max_err)) ++fails;
  }
  return fails;
}

int test_layer_norm(const norm::Kernels& k, double* max_err) {
  const int64_t shapes[][2] = {{1, 1}, {5, 3}, {7, 17}, {77, 768}, {33, 320}, {3, 1000}, {2, 4099}};
  int fails = 0;
  for (const auto& sh : shapes)
    for (int affine = 0; affine < 2; ++affine) {
      const int64_t rows = sh[0], C = sh[1];
      Rng rng(rows * 7 + C);
      std::vector<float> x(rows * C), y(x.size()), gamma(C), beta(C);
      for (int64_t i = 0; i < rows * C; ++i) x[i] = (i / C % 2 ? 100.f : 0.f) + 3.f * rng.uniform();
      for (auto& v : gamma) v = 1.f + 0.5f * rng.uniform();
      for (auto& v : beta) v = rng.uniform();
      const float eps = 1e-5f;
      norm::layer_norm_with(k, x.data(), y.data(), rows, C, affine ? gamma.data() : nullptr,
                            affine ? beta.data() : nullptr, eps);
      std::vector<double> ref(x.size());
      for (int64_t r = 0; r < rows; ++r) {
        double sum = 0, sq = 0;
        for (int64_t c = 0; c < C; ++c) sum += x[r * C + c];
        const double mean = sum / C;
        for (int64_t c = 0; c < C; ++c) sq += (x[r * C + c] - mean) * (x[r * C + c] - mean);
        const double rstd = 1.0 / std::sqrt(sq / C + eps);
        for (int64_t c = 0; c < C; ++c) {
          double v = (x[r * C + c] - mean) * rstd;
          ref[r * C + c] = affine ? v * gamma[c] + beta[c] : v;
        }
      }
      char desc[96];
      std::snprintf(desc, sizeof desc, "rows=%lld C=%lld affine=%d", (long long)rows, (long long)C, affine);
      if (compare("layer_norm", desc, y.data(), ref, 2e-6, 1e-5, max_err)) ++fails;
    }
  return fails;
}

int test_softmax(const norm::Kernels& k, double* max_err) {
  const int64_t shapes[][2] = {{1, 1}, {3, 2}, {5, 17}, {16, 77}, {4, 1000}, {2, 4096}, {3, 4099}};
  int fails = 0;
  for (const auto& sh : shapes) {
    const int64_t rows = sh[0], C = sh[1];
    Rng rng(rows * 13 + C);
    std::vector<float> x(rows * C), y(x.size());
    for (int64_t i = 0; i < rows * C; ++i) {
      const int64_t r = i / C;
      x[i] = (r % 3 == 1 ? 1e4f : 0.f) + (r % 3 == 2 ? 30.f : 3.f) * rng.uniform();
      if (C > 1 && rng.next() % 7 == 0) x[i] = -std::numeric_limits<float>::infinity();
    }
    if (rows > 2)  // a row of -inf: NaN, as in PyTorch
      for (int64_t c = 0; c < C; ++c) x[2 * C + c] = -std::numeric_limits<float>::infinity();
    norm::softmax_with(k, x.data(), y.data(), rows, C);
    std::vector<double> ref(x.size());
    for (int64_t r = 0; r < rows; ++r) {
      double mx = -INFINITY, sum = 0;
      for (int64_t c = 0; c < C; ++c) mx = std::max(mx, double(x[r * C + c]));
      for (int64_t c = 0; c < C; ++c) sum += std::exp(x[r * C + c] - mx);
      for (int64_t c = 0; c < C; ++c) ref[r * C + c] = std::isinf(mx) ? NAN : std::exp(x[r * C + c] - mx) / sum;
    }
    char desc[64];
    std::snprintf(desc, sizeof desc, "rows=%lld C=%lld", (long long)rows, (long long)C);
    if (compare("softmax", desc, y.data(), ref, 1e-7, 2e-6, max_err)) ++fails;
  }
  return fails;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <class F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

void bench(const std::vector<norm::Kernels>& ks) {
  std::printf("threads %d, isa %s\n", dk::num_threads(), dk::cpu::isa_description().c_str());
  const int64_t big = 1 << 25;  // 128 MB of floats
  std::vector<float> x(big), y(big);
  Rng rng(3);
  for (auto& v : x) v = rng.uniform();
  {
    const double t = best_of(5, [&] {
      dk::parallel_for(big, 1 << 16, [&](int64_t lo, int64_t hi) {
        std::memcpy(y.data() + lo, x.data() + lo, (hi - lo) * sizeof(float));
      });
    });
    std::printf("%-34s %-8s %8.2f ms %6.1f GB/s\n", "memcpy 128 MB (reference)", "", t * 1e3, 2.0 * big * 4 / t / 1e9);
  }
  std::vector<float> gamma(2048, 1.1f), beta(2048, 0.1f);
  struct GN {
    const char* name;
    int64_t N, L, C;
  };
  const GN gns[] = {{"gn+silu 2x64x64x320", 2, 4096, 320},   {"gn+silu 2x32x32x640", 2, 1024, 640},
                    {"gn+silu 2x16x16x1280", 2, 256, 1280}, {"gn+silu vae 1x256x256x256", 1, 65536, 256},
                    {"gn vae 1x512x512x128", 1, 262144, 128}};
  for (const auto& g : gns)
    for (const auto& k : ks) {
      const bool silu = g.name[2] == '+';
      const double t = best_of(7, [&] {
        norm::group_norm_with(k, x.data(), y.data(), g.N, g.L, g.C, 32, gamma.data(), beta.data(), 1e-5f, silu);
      });
      const double bytes = 2.0 * g.N * g.L * g.C * 4;
      std::printf("%-34s %-8s %8.3f ms %6.1f GB/s\n", g.name, k.name, t * 1e3, bytes / t / 1e9);
    }
  const int64_t lns[][2] = {{8192, 320}, {2048, 640}, {512, 1280}, {154, 768}};
  for (const auto& s : lns)
    for (const auto& k : ks) {
      const double t = best_of(15, [&] {
        norm::layer_norm_with(k, x.data(), y.data(), s[0], s[1], gamma.data(), beta.data(), 1e-5f);
      });
      std::printf("layer_norm %6lld x %-16lld %-8s %8.3f ms %6.1f GB/s\n", (long long)s[0], (long long)s[1], k.name,
                  t * 1e3, 2.0 * s[0] * s[1] * 4 / t / 1e9);
    }
  const int64_t sms[][2] = {{65536, 77}, {4096, 4096}, {16384, 1024}};
  for (const auto& s : sms)
    for (const auto& k : ks) {
      const double t = best_of(7, [&] { norm::softmax_with(k, x.data(), y.data(), s[0], s[1]); });
      std::printf("softmax %6lld x %-19lld %-8s %8.3f ms %6.1f GB/s\n", (long long)s[0], (long long)s[1], k.name,
                  t * 1e3, 2.0 * s[0] * s[1] * 4 / t / 1e9);
    }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && !std::strcmp(argv[1], "--quick");
  const bool bench_only = argc > 1 && !std::strcmp(argv[1], "--bench");
  std::vector<norm::Kernels> ks = {norm::kernels_generic()};
#if defined(DK_X86)
  const dk::cpu::Isa isa = dk::cpu::cpu_features().isa;
  if (isa >= dk::cpu::Isa::AVX2) ks.push_back(norm::kernels_avx2());
  if (isa >= dk::cpu::Isa::AVX512) ks.push_back(norm::kernels_avx512());
#endif
  int fails = 0;
  if (!bench_only) {
    for (const auto& k : ks) {
      double e1 = 0, e2 = 0, e3 = 0;
      const int f = test_group_norm(k, &e1) + test_layer_norm(k, &e2) + test_softmax(k, &e3);
      std::printf("%-8s %d failed; max err/(1+|ref|): group_norm %.1e layer_norm %.1e softmax %.1e\n", k.name, f, e1,
                  e2, e3);
      fails += f;
    }
    std::printf("%s\n", fails ? "FAILED" : "all norm tests passed");
  }
  if (!quick) bench(ks);
  return fails ? 1 : 0;
}
