// Attention lab: correctness of every ISA kernel against a naive double-precision reference on
// random shapes (odd head sizes, Nq != Nk, causal, broadcast masks, strided rows), then speed on
// the Stable Diffusion shapes. Not part of the addon.
//
// Build and run from the repository root (ISA files get the flags CMake gives them):
//   F="-std=c++17 -O3 -DDK_X86=1 -Inative"
//   g++ $F -mavx2 -mfma -mf16c -c native/cpu/attention_avx2.cc -o /tmp/attention_avx2.o
//   g++ $F -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16 -mfma -c native/cpu/attention_avx512.cc -o /tmp/attention_avx512.o
//   g++ $F -o /tmp/attention_lab native/cpu/lab/attention_lab.cc native/cpu/attention.cc native/core/thread_pool.cc native/cpu/cpu_features.cc /tmp/attention_avx2.o /tmp/attention_avx512.o -lpthread
//   /tmp/attention_lab            # tests + benchmark;  --quick: tests only;  --bench: benchmark only
// (on arm64: drop -DDK_X86=1 and the two ISA objects). DIFFUSEKIT_THREADS=1 checks the serial path.
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "../../core/thread_pool.h"
#include "../attention_internal.h"
#include "../cpu_features.h"
#include "../kernels.h"

using dk::cpu::AttentionParams;
namespace attn = dk::cpu::attn;

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
  float uniform() { return (next() & 0xFFFFFF) / 16777216.0f * 2.f - 1.f; }  // [-1, 1)
  int range(int lo, int hi) { return lo + static_cast<int>(next() % static_cast<uint32_t>(hi - lo + 1)); }
};

// out (B, Nq, heads, Dv) at the strides of p; reference in double. A row with no visible key
// gives 0; mask values are clamped at -FLT_MAX like the kernel (finfo.min masks average V).
void reference(const AttentionParams& p, const float* q, const float* k, const float* v, std::vector<double>& out,
               std::vector<int64_t>& out_index) {
  out.clear();
  out_index.clear();
  std::vector<double> sc(p.Nk);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.heads; ++h)
      for (int64_t i = 0; i < p.Nq; ++i) {
        const float* qr = q + b * p.q_batch + i * p.q_row + h * p.D;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < p.Nk; ++j) {
          const float* kr = k + b * p.k_batch + j * p.k_row + h * p.D;
          double s = 0;
          for (int64_t d = 0; d < p.D; ++d) s += double(qr[d]) * kr[d];
          s *= p.scale;
          if (p.mask) {
            const double m = p.mask[b * p.mask_b + h * p.mask_h + i * p.mask_q + j];
            const double lim = -3.4028234663852886e38 / 1.4426950408889634;
            // Near -FLT_MAX a float32 add swallows the score (as in PyTorch): emulate that.
            s = m < -1e30 ? double(float(s) + float(m < lim ? lim : m)) : s + m;
          }
          if (p.causal && j > i + p.Nk - p.Nq) s = -std::numeric_limits<double>::infinity();
          sc[j] = s;
          if (s > mx) mx = s;
        }
        double sum = 0;
        for (int64_t j = 0; j < p.Nk; ++j) {
          sc[j] = std::isinf(mx) ? 0 : std::exp(sc[j] - mx);
          sum += sc[j];
        }
        for (int64_t d = 0; d < p.Dv; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < p.Nk; ++j) acc += sc[j] * v[b * p.v_batch + j * p.v_row + h * p.Dv + d];
          out.push_back(sum > 0 ? acc / sum : 0.0);
          out_index.push_back(b * p.o_batch + i * p.o_row + h * p.Dv + d);
        }
      }
}

struct Case {
  int64_t B, heads, Nq, Nk, D, Dv;
  bool causal, fused_qkv;  // fused: q, k, v share rows of 3 heads' worth + padding (Nq == Nk)
  int mask_kind;           // 0 none, 1 full, 2 [B,1,Nq,Nk], 3 [1,H,Nq,Nk], 4 [B,1,1,Nk], 5 [1,1,Nq,Nk]
  float qscale;
};

std::string describe(const Case& c) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "B=%lld H=%lld Nq=%lld Nk=%lld D=%lld Dv=%lld causal=%d fused=%d mask=%d qs=%.1f",
                (long long)c.B, (long long)c.heads, (long long)c.Nq, (long long)c.Nk, (long long)c.D,
                (long long)c.Dv, c.causal, c.fused_qkv, c.mask_kind, c.qscale);
  return buf;
}

// Returns the number of mismatches; prints the first few with their indices.
int run_case(const attn::Kernel& kr, const Case& c, uint64_t seed, double* max_err) {
  Rng rng(seed);
  AttentionParams p{};
  p.B = c.B;
  p.heads = c.heads;
  p.Nq = c.Nq;
  p.Nk = c.Nk;
  p.D = c.D;
  p.Dv = c.Dv;
  p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
  p.causal = c.causal;
  std::vector<float> qbuf, kbuf, vbuf;
  const float *q, *k, *v;
  if (c.fused_qkv) {
    const int64_t row = c.heads * (2 * c.D + c.Dv) + 5;
    p.q_row = p.k_row = p.v_row = row;
    p.q_batch = p.k_batch = p.v_batch = c.Nq * row + 3;
    qbuf.resize(c.B * p.q_batch);
    for (auto& x : qbuf) x = rng.uniform();
    q = qbuf.data();
    k = q + c.heads * c.D;
    v = k + c.heads * c.D;
  } else {
    p.q_row = c.heads * c.D + 7;
    p.k_row = c.heads * c.D + 1;
    p.v_row = c.heads * c.Dv;
    p.q_batch = c.Nq * p.q_row;
    p.k_batch = c.Nk * p.k_row + 11;
    p.v_batch = c.Nk * p.v_row;
    qbuf.resize(c.B * p.q_batch);
    kbuf.resize(c.B * p.k_batch);
    vbuf.resize(c.B * p.v_batch);
    for (auto& x : qbuf) x = rng.uniform() * c.qscale;
    for (auto& x : kbuf) x = rng.uniform();
    for (auto& x : vbuf) x = rng.uniform();
    q = qbuf.data();
    k = kbuf.data();
    v = vbuf.data();
  }
  p.o_row = c.heads * c.Dv + 3;
  p.o_batch = c.Nq * p.o_row + 2;
  std::vector<float> mask;
  if (c.mask_kind) {
    const int64_t nb = (c.mask_kind == 1 || c.mask_kind == 2 || c.mask_kind == 4) ? c.B : 1;
    const int64_t nh = (c.mask_kind == 1 || c.mask_kind == 3) ? c.heads : 1;
    const int64_t nq = c.mask_kind == 4 ? 1 : c.Nq;
    const int64_t mq = c.Nk + 2;  // padded rows
    mask.resize(nb * nh * nq * mq);
    for (auto& x : mask) {
      const int r = rng.range(0, 9);
      x = r == 0 ? -std::numeric_limits<float>::infinity() : r == 1 ? -1e9f : rng.uniform() * 2.f;
    }
    // One row masked everywhere by finfo.min: the result must be the plain average of V.
    for (int64_t j = 0; j < c.Nk; ++j) mask[j] = -std::numeric_limits<float>::max();
    p.mask = mask.data();
    p.mask_q = c.mask_kind == 4 ? 0 : mq;
    p.mask_h = nh > 1 ? nq * mq : 0;
    p.mask_b = nb > 1 ? nh * nq * mq : 0;
  }
  const int64_t out_size = c.B * p.o_batch;
  std::vector<float> out(out_size, 12345.f);
  attn::attention_with(kr, p, q, k, v, out.data());

  std::vector<double> ref;
  std::vector<int64_t> idx;
  reference(p, q, k, v, ref, idx);
  std::vector<char> written(out_size, 0);
  int bad = 0;
  for (size_t n = 0; n < ref.size(); ++n) {
    written[idx[n]] = 1;
    const double got = out[idx[n]], want = ref[n];
    const double err = std::fabs(got - want);
    if (err > *max_err || std::isnan(err)) *max_err = std::isnan(err) ? INFINITY : std::max(*max_err, err);
    if (!(err <= 2e-5 + 2e-4 * std::fabs(want))) {
      if (bad < 4)
        std::printf("  MISMATCH %s [%s] at out[%lld]: got %.7g want %.7g\n", kr.name, describe(c).c_str(),
                    (long long)idx[n], got, want);
      ++bad;
    }
  }
  for (int64_t n = 0; n < out_size; ++n)
    if (!written[n] && out[n] != 12345.f) {
      if (bad < 4) std::printf("  %s [%s] wrote outside its rows at %lld\n", kr.name, describe(c).c_str(), (long long)n);
      ++bad;
    }
  return bad;
}

int run_tests(const std::vector<attn::Kernel>& kernels) {
  std::vector<Case> cases = {
      {1, 1, 1, 1, 1, 1, false, false, 0, 1.f},      {1, 2, 5, 7, 3, 3, false, false, 0, 1.f},
      {2, 3, 33, 17, 17, 17, false, false, 0, 2.f},  {1, 2, 77, 77, 64, 64, false, true, 0, 1.f},
      {2, 2, 130, 300, 40, 40, false, false, 0, 3.f}, {1, 2, 257, 129, 80, 80, false, false, 0, 1.f},
      {1, 1, 65, 200, 160, 160, false, false, 0, 1.f}, {2, 2, 100, 77, 40, 40, false, false, 0, 1.f},
      {1, 2, 37, 37, 8, 24, false, false, 0, 1.f},   {1, 1, 40, 300, 24, 5, false, false, 0, 1.f},
      // causal: square, Nq < Nk (decoding with a cache), Nq > Nk (early rows see nothing)
      {1, 2, 131, 131, 40, 40, true, true, 0, 2.f},  {2, 1, 40, 300, 17, 17, true, false, 0, 1.f},
      {1, 2, 300, 50, 3, 3, true, false, 0, 1.f},    {1, 1, 333, 333, 64, 64, true, false, 0, 1.f},
      // masks with every broadcast pattern
      {2, 2, 45, 70, 40, 40, false, false, 1, 1.f},  {2, 3, 45, 70, 17, 17, false, false, 2, 1.f},
      {2, 3, 45, 140, 80, 80, false, false, 3, 1.f}, {2, 2, 45, 77, 40, 40, false, false, 4, 1.f},
      {2, 2, 50, 50, 64, 64, true, true, 5, 1.f},    {1, 2, 33, 260, 1, 3, true, false, 1, 1.f},
  };
  Rng rng(7);
  for (int n = 0; n < 20; ++n) {  // random shapes
    Case c;
    c.B = rng.range(1, 2);
    c.heads = rng.range(1, 3);
    c.Nq = rng.range(1, 300);
    c.causal = rng.range(0, 3) == 0;
    c.fused_qkv = rng.range(0, 3) == 0;
    c.Nk = c.fused_qkv ? c.Nq : rng.range(1, 300);
    c.D = rng.range(1, 96);
    c.Dv = rng.range(0, 1) ? c.D : rng.range(1, 96);
    c.mask_kind = rng.range(0, 5);
    c.qscale = 1.f + rng.range(0, 3);
    cases.push_back(c);
  }
  int failures = 0;
  for (const auto& kr : kernels) {
    double max_err = 0;
    int bad_cases = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const int bad = run_case(kr, cases[i], 100 + i, &max_err);
      if (bad) ++bad_cases;
    }
    std::printf("%-14s %zu cases, %d failed, max abs err %.2e\n", kr.name, cases.size(), bad_cases, max_err);
    failures += bad_cases;
  }
  return failures;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Benchmark buffer; LAB_HUGE=1 asks for transparent huge pages (to tell TLB misses apart).
struct Buffer {
  float* p;
  size_t n;
  explicit Buffer(size_t count) : n(count) {
    const size_t bytes = (count * sizeof(float) + (2u << 20) - 1) & ~size_t((2u << 20) - 1);
    p = static_cast<float*>(std::aligned_alloc(2u << 20, bytes));
    if (std::getenv("LAB_HUGE")) madvise(p, bytes, MADV_HUGEPAGE);
  }
  ~Buffer() { std::free(p); }
  float* data() { return p; }
  float* begin() { return p; }
  float* end() { return p + n; }
};

double cpu_now() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

void bench(const std::vector<attn::Kernel>& kernels) {
  struct Shape {
    const char* name;
    int64_t B, heads, Nq, Nk, D;
    bool causal;
  };
  const Shape shapes[] = {
      {"self 4096 d40", 2, 8, 4096, 4096, 40, false},
      {"self 1024 d80", 2, 8, 1024, 1024, 80, false},
      {"cross 4096x77 d40", 2, 8, 4096, 77, 40, false},
      {"self 256 d160", 2, 8, 256, 256, 160, false},
      {"causal 1024 d64", 2, 8, 1024, 1024, 64, true},
      {"tune 4096 d40", 1, 2, 4096, 4096, 40, false},  // 1/8 of the first, for quick A/B runs
  };
  std::printf("threads %d, isa %s\n", dk::num_threads(), dk::cpu::isa_description().c_str());
  const char* only = std::getenv("LAB_SHAPE");  // e.g. LAB_SHAPE="self 4096" runs just that one
  for (const auto& sh : shapes) {
    if (only && !std::strstr(sh.name, only)) continue;
    AttentionParams p{};
    p.B = sh.B;
    p.heads = sh.heads;
    p.Nq = sh.Nq;
    p.Nk = sh.Nk;
    p.D = p.Dv = sh.D;
    p.scale = 1.f / std::sqrt(static_cast<float>(sh.D));
    p.causal = sh.causal;
    const int64_t row = sh.heads * sh.D;  // diffusers' [B, N, heads*D] after to_q / to_k / to_v
    p.q_row = p.k_row = p.v_row = p.o_row = row;
    p.q_batch = p.o_batch = sh.Nq * row;
    p.k_batch = p.v_batch = sh.Nk * row;
    Rng rng(1);
    Buffer q(sh.B * sh.Nq * row), k(sh.B * sh.Nk * row), v(sh.B * sh.Nk * row), o(sh.B * sh.Nq * row);
    for (auto& x : q) x = rng.uniform();
    for (auto& x : k) x = rng.uniform();
    for (auto& x : v) x = rng.uniform();
    double flops = 2.0 * sh.B * sh.heads * sh.Nq * sh.Nk * (2 * sh.D);
    if (sh.causal) flops *= 0.5;
    for (const auto& kr : kernels) {
      if (const char* ko = std::getenv("LAB_KERNEL"); ko && !std::strstr(kr.name, ko)) continue;
      // Wall time, and process CPU time (the machine is shared: CPU time says what the kernel
      // would do with the cores to itself). Best of several runs for both.
      double best = 1e30, best_cpu = 1e30;
      const int reps = std::getenv("LAB_REPS") ? std::atoi(std::getenv("LAB_REPS")) : flops > 2e10 ? 3 : 8;
      for (int r = 0; r < reps; ++r) {
        const double t0 = now(), c0 = cpu_now();
        attn::attention_with(kr, p, q.data(), k.data(), v.data(), o.data());
        best = std::min(best, now() - t0);
        best_cpu = std::min(best_cpu, cpu_now() - c0);
      }
      std::printf("%-20s %-14s %9.2f ms  %7.1f GFLOP/s   per core: %6.1f GFLOP/s\n", sh.name, kr.name, best * 1e3,
                  flops / best / 1e9, flops / best_cpu / 1e9);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && !std::strcmp(argv[1], "--quick");
  const bool bench_only = argc > 1 && !std::strcmp(argv[1], "--bench");
  std::vector<attn::Kernel> kernels = {attn::kernel_generic()};
#if defined(DK_X86)
  const dk::cpu::Isa isa = dk::cpu::cpu_features().isa;
  if (isa >= dk::cpu::Isa::AVX2) kernels.push_back(attn::kernel_avx2());
  if (isa >= dk::cpu::Isa::AVX512) kernels.push_back(attn::kernel_avx512());
#endif
  int failures = 0;
  if (!bench_only) {
    failures = run_tests(kernels);
    std::printf("%s\n", failures ? "FAILED" : "all attention tests passed");
  }
  if (!quick) {
    std::vector<attn::Kernel> fast(kernels.begin() + (kernels.size() > 1 ? 1 : 0), kernels.end());
    bench(fast);
  }
  return failures ? 1 : 0;
}
