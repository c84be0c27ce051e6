// Multi-head scaled-dot-product attention, flash style: per (batch, head, block of queries) the
// keys are visited in blocks with a running max / running sum softmax, so memory is O(tile),
// never Nq x Nk. The tiles themselves are in attention_internal.h; this file splits the work
// over threads, picks the ISA, and holds the portable instantiation.
//
// Edge semantics: a row that sees no key (causal with Nq > Nk, or Nk == 0) is 0. Mask values
// are floored at -FLT_MAX, so a row masked everywhere (by -inf or by finfo.min) averages V like
// PyTorch does for finfo.min masks (PyTorch gives NaN for all -inf rows).
#include <atomic>
#include <vector>

#include "attention_internal.h"
#include "attention_tasks.h"
#include "../core/thread_pool.h"
#include "cpu_features.h"

namespace dk::cpu {
namespace attn {
namespace {

// Portable "vector" of 4 floats; compilers map the loops onto SSE / NEON.
struct VGeneric {
  struct V {
    float x[4];
  };
  static constexpr int W = 4;
  static V zero() { return V{{0.f, 0.f, 0.f, 0.f}}; }
  static V load(const float* p) {
    V r;
    for (int i = 0; i < W; ++i) r.x[i] = p[i];
    return r;
  }
  static void store(float* p, V v) {
    for (int i = 0; i < W; ++i) p[i] = v.x[i];
  }
  static V set1(float x) { return V{{x, x, x, x}}; }
  static V bcast(const float* p) { return set1(*p); }
  static V fma(V a, V b, V c) {
    for (int i = 0; i < W; ++i) c.x[i] += a.x[i] * b.x[i];
    return c;
  }
  static V add(V a, V b) {
    for (int i = 0; i < W; ++i) a.x[i] += b.x[i];
    return a;
  }
  static V sub(V a, V b) {
    for (int i = 0; i < W; ++i) a.x[i] -= b.x[i];
    return a;
  }
  static V mul(V a, V b) {
    for (int i = 0; i < W; ++i) a.x[i] *= b.x[i];
    return a;
  }
  static V max(V a, V b) {
    for (int i = 0; i < W; ++i) a.x[i] = a.x[i] > b.x[i] ? a.x[i] : b.x[i];
    return a;
  }
  static float exp2s(float x) {
    if (!(x > -125.f)) return 0.f;
    if (x > 126.f) x = 126.f;
    const float t = x + 0.5f;
    int n = static_cast<int>(t);
    if (static_cast<float>(n) > t) --n;  // floor(x + 1/2)
    const float f = x - static_cast<float>(n);
    float p = kExp2C6;
    p = p * f + kExp2C5;
    p = p * f + kExp2C4;
    p = p * f + kExp2C3;
    p = p * f + kExp2C2;
    p = p * f + kExp2C1;
    p = p * f + kExp2C0;
    const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
  }
  static void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd, const float* sc, bool per_row) {
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 8; ++j) dst[i * ldd + j] = src[j * lds + i] * (per_row ? sc[i] : sc[0]);
  }
  static V exp2(V a) {
    for (int i = 0; i < W; ++i) a.x[i] = exp2s(a.x[i]);
    return a;
  }
};

using RowsGeneric = FlashRows<VGeneric, 2, 4, 4>;

}  // namespace

Kernel kernel_generic() {
  Kernel k;
  k.mq = RowsGeneric::MQ;
  k.rows = &RowsGeneric::rows;
  k.scratch_floats = &RowsGeneric::scratch_floats;
  k.name = "generic 4x8";
  return k;
}

const Kernel& select_kernel() {
  static const Kernel k = [] {
#if defined(DK_X86)
    switch (cpu_features().isa) {
      case Isa::AVX512: return kernel_avx512();
      case Isa::AVX2: return kernel_avx2();
      default: break;
    }
#endif
    return kernel_generic();
  }();
  return k;
}

void attention_with(const Kernel& kr, const AttentionParams& p, const float* q, const float* k, const float* v,
                    float* out) {
  if (p.B <= 0 || p.heads <= 0 || p.Nq <= 0 || p.Dv <= 0) return;
  if (p.Nk <= 0) {  // softmax over nothing: define the result as 0
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t t = 0; t < p.Nq; ++t)
        for (int64_t hh = 0; hh < p.heads; ++hh) {
          float* o = out + b * p.o_batch + t * p.o_row + hh * p.Dv;
          for (int64_t d = 0; d < p.Dv; ++d) o[d] = 0.f;
        }
    return;
  }

  const Shape s = shape_of(p);
  run_attention_tasks<Head>(p, kr.mq, q, k, v, out, [&](int64_t rows) { return kr.scratch_floats(s, rows); },
                            [&](const Head& h, int64_t q0, int64_t q1, float* sc) { kr.rows(s, h, q0, q1, sc); });
}

}  // namespace attn

void attention(const AttentionParams& p, const float* q, const float* k, const float* v, float* out) {
  attn::attention_with(attn::select_kernel(), p, q, k, v, out);
}

}  // namespace dk::cpu
