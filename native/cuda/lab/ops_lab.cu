// ops_lab: checks every non-GEMM CUDA kernel of diffusekit (attention, norm, elementwise,
// copy, reduce, random) for float32 / float16 / bfloat16 against plain double-precision host
// references on random shapes (odd sizes, misaligned views, broadcasts), then times attention
// and group norm at Stable Diffusion shapes. Not part of the addon.
//
// Build from the repository root (or run native/cuda/lab/build_ops_lab.sh):
//   nvcc -std=c++17 -O3 -arch=sm_90 -I native native/cuda/lab/ops_lab.cu native/cuda/runtime.cu -o build/ops_lab
// Run:  build/ops_lab [--check-only | --bench-only] [--seed N]
// Exit status: 0 when every check passed, 1 otherwise (the timings do not affect it).
#include <algorithm>
#include <chrono>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../core/half.h"
#include "../attention.cu"
#include "../copy.cu"
#include "../elementwise.cu"
#include "../norm.cu"
#include "../random.cu"
#include "../reduce.cu"

using namespace dk;
using dk::cuda::BinaryOp;
using dk::cuda::ReduceOp;
using dk::cuda::UnaryOp;

namespace {

constexpr int kDev = 0;
std::mt19937_64 g_rng(1234);
int g_failures = 0, g_checks = 0;

// ---------------------------------------------------------------- host storage helpers
const DType kFloatTypes[] = {DType::F32, DType::F16, DType::BF16};

float quant(float x, DType dt) {
  switch (dt) {
    case DType::F16: return f16_to_f32(f32_to_f16(x));
    case DType::BF16: return bf16_to_f32(f32_to_bf16(x));
    default: return x;
  }
}

std::vector<uint8_t> to_bytes(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> b(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); i++) {
    if (dt == DType::F32) std::memcpy(&b[i * 4], &v[i], 4);
    else {
      uint16_t h = dt == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}

std::vector<float> from_bytes(const std::vector<uint8_t>& b, DType dt, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) {
    if (dt == DType::F32) std::memcpy(&v[i], &b[i * 4], 4);
    else {
      uint16_t h;
      std::memcpy(&h, &b[i * 2], 2);
      v[i] = dt == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return v;
}

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

void sync() { ck(cudaStreamSynchronize(cuda::stream(kDev)), "sync"); }

// A device buffer; `poison` fills it with 0xFF bytes (NaN in every float format).
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t n) : bytes(n) { ck(cudaMalloc(&p, std::max<size_t>(n, 16) + 64), "cudaMalloc"); }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  void poison() { ck(cudaMemsetAsync(p, 0xFF, bytes + 64, cuda::stream(kDev)), "memset"); }
  template <typename P = void> P* at(size_t byte_off = 0) const {
    return reinterpret_cast<P*>(static_cast<char*>(p) + byte_off);
  }
};

void upload(const Buf& b, const void* src, size_t bytes, size_t off = 0) {
  cuda::copy_h2d(kDev, b.at<char>(off), src, bytes);
}
std::vector<uint8_t> download(const Buf& b, size_t bytes, size_t off = 0) {
  sync();
  std::vector<uint8_t> h(bytes);
  cuda::copy_d2h(kDev, h.data(), b.at<char>(off), bytes);
  return h;
}

// Uploads v as dtype dt at byte offset `off` (to test misaligned views) and returns the
// values actually stored (rounded to dt), which is what references must use.
std::vector<float> put(const Buf& b, std::vector<float> v, DType dt, size_t off = 0) {
  for (auto& x : v) x = quant(x, dt);
  auto bytes = to_bytes(v, dt);
  upload(b, bytes.data(), bytes.size(), off);
  return v;
}
std::vector<float> get(const Buf& b, DType dt, size_t n, size_t off = 0) {
  return from_bytes(download(b, n * dtype_size(dt), off), dt, n);
}

std::vector<float> randu(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g_rng);
  return v;
}
std::vector<float> randn(size_t n, float mean = 0.f, float sd = 1.f) {
  std::normal_distribution<float> d(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g_rng);
  return v;
}
int64_t irand(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(g_rng); }

struct Tol {
  double atol, rtol;
};
// Output rounding of the storage type plus float32 math.
Tol tol_for(DType dt, double scale = 1.0) {
  switch (dt) {
    case DType::F16: return {1e-3 * scale, 2e-3 * scale};
    case DType::BF16: return {8e-3 * scale, 1.6e-2 * scale};
    default: return {1e-5 * scale, 1e-5 * scale};
  }
}

// |got - ref| <= atol + rtol*|ref| everywhere (NaN matches only NaN); prints the first mismatches.
bool compare(const std::string& name, const std::vector<float>& got, const std::vector<double>& ref, Tol t) {
  g_checks++;
  size_t bad = 0;
  double max_err = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < ref.size(); i++) {
    const double r = ref[i], gv = got[i];
    bool ok;
    if (std::isnan(r)) ok = std::isnan(gv);
    else if (std::isinf(r)) ok = gv == r;
    else {
      const double e = std::fabs(gv - r);
      ok = e <= t.atol + t.rtol * std::fabs(r);  // false for NaN
      if (!std::isnan(e)) max_err = std::max(max_err, e);
      max_ref = std::max(max_ref, std::fabs(r));
    }
    if (!ok) {
      if (bad < 5)
        std::printf("    mismatch %s [%zu]: got %.7g want %.7g (|d|=%.3g)\n", name.c_str(), i, gv, r,
                    std::fabs(gv - r));
      bad++;
    }
  }
  if (bad) {
    g_failures++;
    std::printf("FAIL %-58s %zu/%zu bad, max|err| %.3g (max|ref| %.3g)\n", name.c_str(), bad, ref.size(), max_err,
                max_ref);
    return false;
  }
  std::printf("ok   %-58s n=%-9zu max|err| %.3g\n", name.c_str(), ref.size(), max_err);
  return true;
}

void expect_true(const std::string& name, bool ok, const std::string& detail = "") {
  g_checks++;
  if (!ok) {
    g_failures++;
    std::printf("FAIL %s %s\n", name.c_str(), detail.c_str());
  } else {
    std::printf("ok   %s %s\n", name.c_str(), detail.c_str());
  }
}

std::string dn(DType dt) { return dtype_name(dt); }

// Runs fn, catching dk::Error so one broken op does not stop the lab.
void guarded(const std::string& name, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    g_checks++;
    g_failures++;
    std::printf("FAIL %s threw: %s\n", name.c_str(), e.what());
    cudaGetLastError();
  }
}

// ================================================================ elementwise
double uref(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return 1.0 / std::sqrt(x);
    case UnaryOp::Abs: return std::fabs(x);
    case UnaryOp::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Silu: return x / (1.0 + std::exp(-x));
    case UnaryOp::Gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case UnaryOp::GeluTanh:
      return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case UnaryOp::QuickGelu: return x / (1.0 + std::exp(-1.702 * x));
    case UnaryOp::Square: return x * x;
    case UnaryOp::Sin: return std::sin(x);
    case UnaryOp::Cos: return std::cos(x);
    case UnaryOp::Reciprocal: return 1.0 / x;
  }
  return 0;
}
const char* uname(UnaryOp op) {
  static const char* n[] = {"neg", "exp", "log", "sqrt", "rsqrt", "abs", "sigmoid", "tanh",
                            "silu", "gelu", "gelu_tanh", "quick_gelu", "square", "sin", "cos", "reciprocal"};
  return n[static_cast<int>(op)];
}
double bref(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::Maximum: return std::max(a, b);
    case BinaryOp::Minimum: return std::min(a, b);
  }
  return 0;
}
const char* bname(BinaryOp op) {
  static const char* n[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
  return n[static_cast<int>(op)];
}
// Operands that keep each op well conditioned.
std::vector<float> operand_for(BinaryOp op, size_t n, bool second) {
  if (op == BinaryOp::Pow) return second ? randu(n, -2.f, 2.f) : randu(n, 0.2f, 3.f);
  if (op == BinaryOp::Div && second) {
    auto v = randu(n, 0.5f, 2.f);
    for (auto& x : v)
      if (irand(0, 1)) x = -x;
    return v;
  }
  return randn(n);
}

void test_elementwise() {
  std::printf("-- elementwise\n");
  for (DType dt : kFloatTypes) {
    const size_t es = dtype_size(dt);
    // unary, aligned and misaligned by one element
    for (int op = 0; op <= static_cast<int>(UnaryOp::Reciprocal); op++) {
      const UnaryOp u = static_cast<UnaryOp>(op);
      for (int mis = 0; mis < 2; mis++) {
        const int64_t n = irand(1, 5000) * (mis ? 1 : 8) + irand(0, 7);
        std::vector<float> x;
        if (u == UnaryOp::Log || u == UnaryOp::Sqrt || u == UnaryOp::Rsqrt) x = randu(n, 0.05f, 4.f);
        else if (u == UnaryOp::Reciprocal) x = operand_for(BinaryOp::Div, n, true);
        else if (u == UnaryOp::Sin || u == UnaryOp::Cos) x = randu(n, -10.f, 10.f);
        else x = randn(n, 0.f, 2.f);
        Buf bx(n * es), by(n * es);
        const size_t off = mis ? es : 0;
        x = put(bx, x, dt, off);
        by.poison();
        guarded("unary", [&] { cuda::unary(kDev, dt, u, bx.at(off), by.at(off), n); });
        std::vector<double> ref(n);
        for (int64_t i = 0; i < n; i++) ref[i] = quant(static_cast<float>(uref(u, x[i])), dt);
        Tol t = tol_for(dt);
        if (dt == DType::F32) t = {2e-6, 4e-6};
        compare(std::string("unary ") + uname(u) + (mis ? " misaligned " : " ") + dn(dt), get(by, dt, n, off), ref, t);
      }
    }
    // binary with broadcasts and a transposed operand
    for (int op = 0; op <= static_cast<int>(BinaryOp::Minimum); op++) {
      const BinaryOp bo = static_cast<BinaryOp>(op);
      for (int variant = 0; variant < 4; variant++) {
        int64_t shape[3] = {irand(1, 9), irand(1, 33), irand(1, 9) * (variant == 3 ? 8 : 1)};
        if (variant == 0) shape[2] = 8 * irand(1, 40);
        const int64_t n = shape[0] * shape[1] * shape[2];
        // a: contiguous (or transposed over dims 1,2 in variant 2); b: broadcast over a random subset
        int64_t sa[3], sb[3];
        if (variant == 2) {
          sa[0] = shape[1] * shape[2];
          sa[1] = 1;
          sa[2] = shape[1];
        } else {
          sa[0] = shape[1] * shape[2];
          sa[1] = shape[2];
          sa[2] = 1;
        }
        const int bmask = variant == 1 ? 0 : static_cast<int>(irand(0, 7));  // bit d set: b broadcasts dim d
        int64_t bshape[3], bn = 1;
        for (int d = 0; d < 3; d++) bshape[d] = (bmask >> d & 1) ? 1 : shape[d];
        for (int d = 2; d >= 0; d--) {
          sb[d] = (bmask >> d & 1) ? 0 : bn;
          bn *= bshape[d];
        }
        Buf ba(n * es), bb(bn * es), bo_(n * es);
        auto a = put(ba, operand_for(bo, n, false), dt);
        auto b = put(bb, operand_for(bo, bn, true), dt);
        bo_.poison();
        guarded("binary", [&] { cuda::binary(kDev, dt, bo, 3, shape, ba.at(), sa, bb.at(), sb, bo_.at()); });
        std::vector<double> ref(n);
        for (int64_t i0 = 0, e = 0; i0 < shape[0]; i0++)
          for (int64_t i1 = 0; i1 < shape[1]; i1++)
            for (int64_t i2 = 0; i2 < shape[2]; i2++, e++)
              ref[e] = quant(static_cast<float>(bref(bo, a[i0 * sa[0] + i1 * sa[1] + i2 * sa[2]],
                                                     b[i0 * sb[0] + i1 * sb[1] + i2 * sb[2]])),
                             dt);
        Tol t = tol_for(dt);
        if (dt == DType::F32) t = {1e-6, 4e-6};
        char nm[128];
        std::snprintf(nm, sizeof nm, "binary %s [%lld,%lld,%lld] bmask=%d v%d %s", bname(bo), (long long)shape[0],
                      (long long)shape[1], (long long)shape[2], bmask, variant, dn(dt).c_str());
        compare(nm, get(bo_, dt, n), ref, t);
      }
      // binary_scalar, both orders
      for (int first = 0; first < 2; first++) {
        const int64_t n = irand(1, 3000);
        Buf ba(n * es), bo_(n * es);
        auto a = put(ba, operand_for(bo, n, first == 1), dt);
        const float sc = operand_for(bo, 1, first == 0)[0];
        bo_.poison();
        guarded("binary_scalar", [&] { cuda::binary_scalar(kDev, dt, bo, ba.at(), sc, first, bo_.at(), n); });
        std::vector<double> ref(n);
        for (int64_t i = 0; i < n; i++)
          ref[i] = quant(static_cast<float>(first ? bref(bo, sc, a[i]) : bref(bo, a[i], sc)), dt);
        Tol t = tol_for(dt);
        if (dt == DType::F32) t = {1e-6, 4e-6};
        compare(std::string("binary_scalar ") + bname(bo) + (first ? " s-first " : " ") + dn(dt), get(bo_, dt, n),
                ref, t);
      }
    }
    {  // clamp
      const int64_t n = irand(100, 9000);
      Buf ba(n * es), bo_(n * es);
      auto a = put(ba, randn(n, 0, 2), dt);
      bo_.poison();
      guarded("clamp", [&] { cuda::clamp(kDev, dt, ba.at(), -0.75f, 1.25f, bo_.at(), n); });
      std::vector<double> ref(n);
      for (int64_t i = 0; i < n; i++) ref[i] = quant(std::min(1.25f, std::max(-0.75f, a[i])), dt);
      compare("clamp " + dn(dt), get(bo_, dt, n), ref, {0, 0});
    }
    for (int terms = 1; terms <= 4; terms++) {  // axpby: x; x,y; x,y,z; x,z
      const int64_t n = irand(100, 9000);
      Buf bx(n * es), by(n * es), bz(n * es), bo_(n * es);
      auto x = put(bx, randn(n), dt), y = put(by, randn(n), dt), z = put(bz, randn(n), dt);
      const bool hy = terms == 2 || terms == 3, hz = terms >= 3;
      bo_.poison();
      guarded("axpby", [&] {
        cuda::axpby(kDev, dt, n, 0.7f, bx.at(), -1.3f, hy ? by.at() : nullptr, 0.25f, hz ? bz.at() : nullptr,
                    bo_.at());
      });
      std::vector<double> ref(n);
      for (int64_t i = 0; i < n; i++)
        ref[i] = quant(static_cast<float>(0.7 * x[i] + (hy ? -1.3 * y[i] : 0.0) + (hz ? 0.25 * z[i] : 0.0)), dt);
      compare("axpby terms=" + std::to_string(terms) + " " + dn(dt), get(bo_, dt, n), ref, tol_for(dt, 2));
    }
    for (int64_t C : {int64_t(5), int64_t(64), int64_t(1280), int64_t(irand(1, 300))}) {  // geglu
      const int64_t rows = irand(1, 70);
      Buf bx(rows * 2 * C * es), bo_(rows * C * es);
      auto x = put(bx, randn(rows * 2 * C), dt);
      bo_.poison();
      guarded("geglu", [&] { cuda::geglu(kDev, dt, bx.at(), bo_.at(), rows, C); });
      std::vector<double> ref(rows * C);
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < C; c++)
          ref[r * C + c] = quant(
              static_cast<float>(x[r * 2 * C + c] * uref(UnaryOp::Gelu, x[r * 2 * C + C + c])), dt);
      compare("geglu rows=" + std::to_string(rows) + " C=" + std::to_string(C) + " " + dn(dt), get(bo_, dt, rows * C),
              ref, tol_for(dt, 2));
    }
  }
}

// ================================================================ copy
void test_copy() {
  std::printf("-- copy\n");
  // strided_copy: permuted / sliced views of raw elements of 1, 2, 4, 6, 8 bytes
  for (size_t elem : {size_t(1), size_t(2), size_t(4), size_t(6), size_t(8)}) {
    for (int variant = 0; variant < 3; variant++) {
      int64_t full[4] = {irand(1, 5), irand(1, 9), irand(1, 17), irand(1, 33)};
      if (variant == 2) full[3] = 16 * irand(1, 4);
      int64_t fst[4];
      fst[3] = 1;
      for (int d = 2; d >= 0; d--) fst[d] = fst[d + 1] * full[d + 1];
      const int64_t total = full[0] * fst[0];
      // view: variant 0 permutes (0,2,1,3); variant 1 slices dim 3 to its first half and reverses dims;
      // variant 2 slices rows (contiguous inner runs)
      int64_t shape[4], st[4];
      if (variant == 0) {
        const int perm[4] = {0, 2, 1, 3};
        for (int d = 0; d < 4; d++) shape[d] = full[perm[d]], st[d] = fst[perm[d]];
      } else if (variant == 1) {
        for (int d = 0; d < 4; d++) shape[d] = full[3 - d], st[d] = fst[3 - d];
        shape[0] = (full[3] + 1) / 2;
      } else {
        for (int d = 0; d < 4; d++) shape[d] = full[d], st[d] = fst[d];
        shape[2] = (full[2] + 1) / 2;
      }
      int64_t n = 1;
      for (int d = 0; d < 4; d++) n *= shape[d];
      std::vector<uint8_t> src(total * elem);
      for (auto& b : src) b = static_cast<uint8_t>(irand(0, 255));
      Buf bs(src.size()), bd(n * elem);
      upload(bs, src.data(), src.size());
      bd.poison();
      guarded("strided_copy", [&] { cuda::strided_copy(kDev, 4, shape, bs.at(), st, elem, bd.at()); });
      auto got = download(bd, n * elem);
      size_t bad = 0;
      int64_t e = 0;
      for (int64_t i0 = 0; i0 < shape[0]; i0++)
        for (int64_t i1 = 0; i1 < shape[1]; i1++)
          for (int64_t i2 = 0; i2 < shape[2]; i2++)
            for (int64_t i3 = 0; i3 < shape[3]; i3++, e++) {
              const int64_t so = i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3];
              if (std::memcmp(&got[e * elem], &src[so * elem], elem) != 0) bad++;
            }
      expect_true("strided_copy elem=" + std::to_string(elem) + " v" + std::to_string(variant),
                  bad == 0, "(" + std::to_string(bad) + " of " + std::to_string(n) + " wrong)");
    }
  }
  // cast: every ordered pair of dtypes
  const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::U8};
  for (DType s : all)
    for (DType d : all) {
      const int64_t n = irand(1, 3000);
      // values exactly representable in the source type; integers stay in range of every target
      std::vector<double> vals(n);
      for (auto& v : vals) {
        if (s == DType::U8) v = static_cast<double>(irand(0, 255));
        else if (s == DType::I32 || s == DType::I64) v = static_cast<double>(irand(d == DType::U8 ? 0 : -70000, 70000));
        else v = (d == DType::U8) ? std::uniform_real_distribution<double>(0.0, 255.9)(g_rng)
                                  : std::uniform_real_distribution<double>(-3000.0, 3000.0)(g_rng);
      }
      std::vector<uint8_t> sb(n * dtype_size(s));
      for (int64_t i = 0; i < n; i++) {
        switch (s) {
          case DType::F32: { float f = static_cast<float>(vals[i]); std::memcpy(&sb[i * 4], &f, 4); vals[i] = f; } break;
          case DType::F16: { uint16_t h = f32_to_f16(static_cast<float>(vals[i])); std::memcpy(&sb[i * 2], &h, 2); vals[i] = f16_to_f32(h); } break;
          case DType::BF16: { uint16_t h = f32_to_bf16(static_cast<float>(vals[i])); std::memcpy(&sb[i * 2], &h, 2); vals[i] = bf16_to_f32(h); } break;
          case DType::I32: { int32_t x = static_cast<int32_t>(vals[i]); std::memcpy(&sb[i * 4], &x, 4); } break;
          case DType::I64: { int64_t x = static_cast<int64_t>(vals[i]); std::memcpy(&sb[i * 8], &x, 8); } break;
          case DType::U8: sb[i] = static_cast<uint8_t>(vals[i]); break;
          default: break;
        }
      }
      Buf bsrc(sb.size()), bdst(n * dtype_size(d));
      upload(bsrc, sb.data(), sb.size());
      bdst.poison();
      guarded("cast", [&] { cuda::cast(kDev, s, bsrc.at(), d, bdst.at(), n); });
      auto got = download(bdst, n * dtype_size(d));
      size_t bad = 0;
      std::string first;
      for (int64_t i = 0; i < n; i++) {
        // expected bits: round-to-nearest-even for float targets, C truncation for integer targets
        std::vector<uint8_t> want(dtype_size(d));
        const double v = vals[i];
        switch (d) {
          case DType::F32: { float f = static_cast<float>(v); std::memcpy(want.data(), &f, 4); } break;
          case DType::F16: { uint16_t h = f32_to_f16(static_cast<float>(v)); std::memcpy(want.data(), &h, 2); } break;
          case DType::BF16: { uint16_t h = f32_to_bf16(static_cast<float>(v)); std::memcpy(want.data(), &h, 2); } break;
          case DType::I32: { int32_t x = static_cast<int32_t>(v); std::memcpy(want.data(), &x, 4); } break;
          case DType::I64: { int64_t x = static_cast<int64_t>(v); std::memcpy(want.data(), &x, 8); } break;
          case DType::U8: want[0] = static_cast<uint8_t>(static_cast<int32_t>(v)); break;
          default: break;
        }
        if (std::memcmp(want.data(), &got[i * dtype_size(d)], dtype_size(d)) != 0) {
          if (bad == 0) first = " first at " + std::to_string(i) + " value " + std::to_string(v);
          bad++;
        }
      }
      expect_true(std::string("cast ") + dtype_name(s) + " -> " + dtype_name(d), bad == 0,
                  "(" + std::to_string(bad) + "/" + std::to_string(n) + " wrong" + first + ")");
    }
  for (DType dt : kFloatTypes) {
    const size_t es = dtype_size(dt);
    for (int64_t C : {int64_t(3), int64_t(8), int64_t(irand(1, 130)), int64_t(320)}) {  // upsample
      const int64_t N = irand(1, 2), H = irand(1, 9), W = irand(1, 9);
      Buf bx(N * H * W * C * es), by(N * 4 * H * W * C * es);
      auto x = put(bx, randn(N * H * W * C), dt);
      by.poison();
      guarded("upsample", [&] { cuda::upsample_nearest2x_nhwc(kDev, dt, bx.at(), by.at(), N, H, W, C); });
      std::vector<double> ref(N * 4 * H * W * C);
      for (int64_t n = 0; n < N; n++)
        for (int64_t y = 0; y < 2 * H; y++)
          for (int64_t xx = 0; xx < 2 * W; xx++)
            for (int64_t c = 0; c < C; c++)
              ref[((n * 2 * H + y) * 2 * W + xx) * C + c] = x[((n * H + y / 2) * W + xx / 2) * C + c];
      compare("upsample_nearest2x C=" + std::to_string(C) + " " + dn(dt), get(by, dt, ref.size()), ref, {0, 0});
    }
    for (int ids64 = 0; ids64 < 2; ids64++) {  // embedding
      const int64_t V = irand(2, 500), D = ids64 ? 768 : irand(1, 77), n = irand(1, 200);
      Buf bt(V * D * es), bo(n * D * es), bi(n * 8);
      auto table = put(bt, randn(V * D), dt);
      std::vector<int64_t> ids(n);
      for (auto& i : ids) i = irand(0, V - 1);
      if (ids64) upload(bi, ids.data(), n * 8);
      else {
        std::vector<int32_t> i32(ids.begin(), ids.end());
        upload(bi, i32.data(), n * 4);
      }
      bo.poison();
      guarded("embedding", [&] { cuda::embedding(kDev, dt, bi.at(), ids64, n, bt.at(), D, bo.at()); });
      std::vector<double> ref(n * D);
      for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < D; d++) ref[i * D + d] = table[ids[i] * D + d];
      compare("embedding ids" + std::string(ids64 ? "64" : "32") + " D=" + std::to_string(D) + " " + dn(dt),
              get(bo, dt, n * D), ref, {0, 0});
    }
    for (int variant = 0; variant < 3; variant++) {  // timestep embedding
      const int64_t B = irand(1, 4), dim = variant == 0 ? 320 : (variant == 1 ? 7 : 256);
      const bool flip = variant != 1;
      const float shift = variant == 2 ? 0.f : 1.f, scale = variant == 2 ? 2.f : 1.f, maxp = 10000.f;
      Buf bt(B * 4), bo(B * dim * es);
      std::vector<float> t(B);
      for (auto& x : t) x = static_cast<float>(irand(0, 999));
      upload(bt, t.data(), B * 4);
      bo.poison();
      guarded("timestep_embedding", [&] {
        cuda::timestep_embedding(kDev, dt, bt.at<float>(), B, dim, flip, shift, scale, maxp, bo.at());
      });
      const int64_t half = dim / 2;
      std::vector<double> ref(B * dim, 0.0);
      for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < half; i++) {
          // float32 pipeline as the kernel (and torch) compute it; only sin/cos in double
          const float e = static_cast<float>(-std::log(static_cast<double>(maxp))) * static_cast<float>(i) /
                          static_cast<float>(static_cast<double>(half) - shift);
          const double arg = static_cast<float>(scale * (t[b] * std::exp(e)));
          const double sn = std::sin(arg), cs = std::cos(arg);
          ref[b * dim + i] = quant(static_cast<float>(flip ? cs : sn), dt);
          ref[b * dim + half + i] = quant(static_cast<float>(flip ? sn : cs), dt);
        }
      // arguments reach ~2000 rad: one ulp of expf or of the argument (~1.2e-4 rad) moves sin/cos by as much
      Tol t2 = tol_for(dt);
      t2.atol = std::max(t2.atol, 1e-3);
      compare("timestep_embedding dim=" + std::to_string(dim) + " " + dn(dt), get(bo, dt, B * dim), ref, t2);
    }
  }
}

// ================================================================ reduce
void test_reduce() {
  std::printf("-- reduce\n");
  struct Shape {
    int64_t outer, n, inner;
  };
  const Shape shapes[] = {{37, 129, 1},   {3, 100000, 1}, {5, 77, 3},     {2, 50000, 7}, {4, 33, 100},
                          {1, 200000, 64}, {300, 4, 1},   {2, 1, 5},      {3, 0, 4},     {1, 5000, 1}};
  for (DType dt : kFloatTypes)
    for (const Shape& s : shapes)
      for (int op = 0; op < 3; op++) {
        const ReduceOp ro = static_cast<ReduceOp>(op);
        const size_t es = dtype_size(dt);
        const int64_t nin = s.outer * s.n * s.inner, nout = s.outer * s.inner;
        Buf bx(nin * es), bo(nout * es);
        auto x = put(bx, randn(nin, 0.3f, 1.f), dt);
        bo.poison();
        guarded("reduce", [&] { cuda::reduce(kDev, dt, ro, bx.at(), bo.at(), s.outer, s.n, s.inner); });
        std::vector<double> ref(nout);
        for (int64_t o = 0; o < s.outer; o++)
          for (int64_t i = 0; i < s.inner; i++) {
            double a = ro == ReduceOp::Max ? -INFINITY : 0.0;
            for (int64_t k = 0; k < s.n; k++) {
              const double v = x[(o * s.n + k) * s.inner + i];
              a = ro == ReduceOp::Max ? std::max(a, v) : a + v;
            }
            if (ro == ReduceOp::Mean) a = s.n ? a / s.n : NAN;
            ref[o * s.inner + i] = quant(static_cast<float>(a), dt);
          }
        // float32 sums of up to 2e5 terms: allow sqrt(n)-scaled rounding
        Tol t = tol_for(dt);
        const double sn = std::sqrt(static_cast<double>(std::max<int64_t>(s.n, 1)));
        if (ro == ReduceOp::Sum) t.atol += 2e-7 * sn * sn / 50 + 1e-6 * sn;
        else if (ro == ReduceOp::Mean) t.atol += 1e-6;
        static const char* on[] = {"sum", "mean", "max"};
        char nm[128];
        std::snprintf(nm, sizeof nm, "reduce %s [%lld,%lld,%lld] %s", on[op], (long long)s.outer, (long long)s.n,
                      (long long)s.inner, dn(dt).c_str());
        compare(nm, get(bo, dt, nout), ref, t);
      }
}

// ================================================================ norm
void ref_group_norm(const std::vector<float>& x, std::vector<double>& y, int64_t N, int64_t L, int64_t C, int64_t G,
                    const std::vector<float>* gamma, const std::vector<float>* beta, double eps, bool silu, DType dt) {
  const int64_t Cg = C / G;
  y.assign(N * L * C, 0.0);
  for (int64_t n = 0; n < N; n++)
    for (int64_t g = 0; g < G; g++) {
      double s = 0, ss = 0;
      for (int64_t l = 0; l < L; l++)
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) s += x[(n * L + l) * C + c];
      const double mean = s / (L * Cg);
      for (int64_t l = 0; l < L; l++)
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
          const double d = x[(n * L + l) * C + c] - mean;
          ss += d * d;
        }
      const double rstd = 1.0 / std::sqrt(ss / (L * Cg) + eps);
      for (int64_t l = 0; l < L; l++)
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
          double v = (x[(n * L + l) * C + c] - mean) * rstd * (gamma ? (*gamma)[c] : 1.0) + (beta ? (*beta)[c] : 0.0);
          if (silu) v = v / (1.0 + std::exp(-v));
          y[(n * L + l) * C + c] = quant(static_cast<float>(v), dt);
        }
    }
}

void test_norm() {
  std::printf("-- norm\n");
  struct GN {
    int64_t N, L, C, G;
    float offset;
  };
  const GN gns[] = {{2, 4096, 320, 32, 0.f}, {1, 37, 60, 3, 50.f}, {2, 100, 12, 4, 0.f}, {1, 1000, 1280, 32, 3.f},
                    {1, 7, 16384, 16384, 0.f}, {3, 333, 96, 32, 0.f}, {1, 4096, 128, 32, 200.f}};
  for (DType dt : kFloatTypes)
    for (const GN& s : gns)
      for (int silu = 0; silu < 2; silu++) {
        const size_t es = dtype_size(dt);
        const int64_t n = s.N * s.L * s.C;
        Buf bx(n * es), by(n * es), bg(s.C * es), bb(s.C * es);
        auto x = put(bx, randn(n, s.offset, 1.5f), dt);
        auto gm = put(bg, randn(s.C, 1.f, 0.3f), dt), bt = put(bb, randn(s.C, 0.f, 0.3f), dt);
        const bool affine = silu == 0 || s.C != 60;
        by.poison();
        guarded("group_norm", [&] {
          cuda::group_norm(kDev, dt, bx.at(), by.at(), s.N, s.L, s.C, s.G, affine ? bg.at() : nullptr,
                           affine ? bb.at() : nullptr, 1e-5f, silu);
        });
        std::vector<double> ref;
        ref_group_norm(x, ref, s.N, s.L, s.C, s.G, affine ? &gm : nullptr, affine ? &bt : nullptr, 1e-5, silu, dt);
        char nm[128];
        std::snprintf(nm, sizeof nm, "group_norm [%lld,%lld,%lld] G=%lld off=%g%s %s", (long long)s.N,
                      (long long)s.L, (long long)s.C, (long long)s.G, s.offset, silu ? " silu" : "", dn(dt).c_str());
        // with a large mean the input itself is rounded to |offset| * eps(dt): scale the tolerance
        compare(nm, get(by, dt, n), ref, tol_for(dt, dt == DType::F32 ? 20 : 2));
      }
  struct LN {
    int64_t rows, C;
    int mis;
  };
  const LN lns[] = {{77, 768, 0}, {33, 7, 0}, {5, 5000, 0}, {64, 320, 1}, {1, 1, 0}, {300, 1280, 0}};
  for (DType dt : kFloatTypes) {
    const size_t es = dtype_size(dt);
    for (const LN& s : lns) {
      const int64_t n = s.rows * s.C;
      const size_t off = s.mis ? es : 0;
      Buf bx(n * es), by(n * es), bg(s.C * es), bb(s.C * es);
      auto x = put(bx, randn(n, 2.f, 1.f), dt, off);
      auto gm = put(bg, randn(s.C, 1.f, 0.3f), dt), bt = put(bb, randn(s.C, 0.f, 0.3f), dt);
      by.poison();
      guarded("layer_norm", [&] {
        cuda::layer_norm(kDev, dt, bx.at(off), by.at(off), s.rows, s.C, bg.at(), bb.at(), 1e-5f);
      });
      std::vector<double> ref(n);
      for (int64_t r = 0; r < s.rows; r++) {
        double m = 0, v = 0;
        for (int64_t c = 0; c < s.C; c++) m += x[r * s.C + c];
        m /= s.C;
        for (int64_t c = 0; c < s.C; c++) v += (x[r * s.C + c] - m) * (x[r * s.C + c] - m);
        const double rstd = 1.0 / std::sqrt(v / s.C + 1e-5);
        for (int64_t c = 0; c < s.C; c++)
          ref[r * s.C + c] = quant(static_cast<float>((x[r * s.C + c] - m) * rstd * gm[c] + bt[c]), dt);
      }
      compare("layer_norm [" + std::to_string(s.rows) + "," + std::to_string(s.C) + "]" + (s.mis ? " misaligned " : " ") +
                  dn(dt),
              get(by, dt, n, off), ref, tol_for(dt, dt == DType::F32 ? 20 : 2));
    }
    for (const LN& s : lns) {  // softmax, with some -inf entries
      const int64_t n = s.rows * s.C;
      const size_t off = s.mis ? es : 0;
      Buf bx(n * es), by(n * es);
      auto xv = randn(n, 0.f, 3.f);
      for (int64_t i = 0; i < n; i++)
        if (s.C > 1 && i % s.C != 0 && irand(0, 9) == 0) xv[i] = -INFINITY;
      auto x = put(bx, xv, dt, off);
      by.poison();
      guarded("softmax", [&] { cuda::softmax_lastdim(kDev, dt, bx.at(off), by.at(off), s.rows, s.C); });
      std::vector<double> ref(n);
      for (int64_t r = 0; r < s.rows; r++) {
        double m = -INFINITY, sum = 0;
        for (int64_t c = 0; c < s.C; c++) m = std::max(m, static_cast<double>(x[r * s.C + c]));
        for (int64_t c = 0; c < s.C; c++) sum += std::exp(x[r * s.C + c] - m);
        for (int64_t c = 0; c < s.C; c++) ref[r * s.C + c] = quant(static_cast<float>(std::exp(x[r * s.C + c] - m) / sum), dt);
      }
      compare("softmax [" + std::to_string(s.rows) + "," + std::to_string(s.C) + "]" + (s.mis ? " misaligned " : " ") +
                  dn(dt),
              get(by, dt, n, off), ref, tol_for(dt, 2));
    }
  }
}

// ================================================================ random
void philox_host(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; r++) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0], p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = static_cast<uint32_t>(p1);
    c[2] = n2;
    c[3] = static_cast<uint32_t>(p0);
  }
}

std::vector<double> randn_host(uint64_t seed, uint64_t offset, int64_t n) {
  std::vector<double> out(n);
  for (int64_t g = 0; 4 * g < n; g++) {
    const uint64_t ctr = offset + static_cast<uint64_t>(g);
    uint32_t c[4] = {static_cast<uint32_t>(ctr), static_cast<uint32_t>(ctr >> 32), 0, 0};
    philox_host(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    float v[4];
    for (int p = 0; p < 2; p++) {
      const float u0 = (static_cast<float>(c[2 * p]) + 0.5f) * 2.3283064365386963e-10f;
      const float u1 = (static_cast<float>(c[2 * p + 1]) + 0.5f) * 2.3283064365386963e-10f;
      const float rad = std::sqrt(-2.0f * std::log(u0));
      const float th = 6.2831853f * u1;
      v[2 * p] = rad * std::cos(th);
      v[2 * p + 1] = rad * std::sin(th);
    }
    for (int k = 0; k < 4 && 4 * g + k < n; k++) out[4 * g + k] = v[k];
  }
  return out;
}

void test_random() {
  std::printf("-- random\n");
  {  // Random123 known answers
    uint32_t c0[4] = {0, 0, 0, 0};
    philox_host(c0, 0, 0);
    uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    philox_host(c1, 0xffffffffu, 0xffffffffu);
    const bool ok = c0[0] == 0x6627e8d5u && c0[1] == 0xe169c58du && c0[2] == 0xbc57ac4cu && c0[3] == 0x9b00dbd8u &&
                    c1[0] == 0x408f276du && c1[1] == 0x41c83b0eu && c1[2] == 0xa20bc7c6u && c1[3] == 0x6d5451fdu;
    expect_true("philox4x32-10 host known answers", ok);
  }
  for (DType dt : kFloatTypes) {
    for (int variant = 0; variant < 3; variant++) {
      const uint64_t seed = variant == 2 ? 0x123456789abcdefULL : static_cast<uint64_t>(irand(0, 1 << 30));
      const uint64_t offset = variant == 1 ? 12345 : (variant == 2 ? 0xfffffffffffffffeULL : 0);
      const int64_t n = variant == 0 ? 1000003 : irand(1, 5000);
      const size_t es = dtype_size(dt);
      Buf bo(n * es);
      bo.poison();
      guarded("randn", [&] { cuda::randn_philox(kDev, dt, seed, offset, bo.at(), n); });
      auto ref = randn_host(seed, offset, n);
      for (auto& r : ref) r = quant(static_cast<float>(r), dt);
      auto got = get(bo, dt, n);
      // libm and CUDA logf/sinf/cosf differ by a few ulp; radii reach ~5.5
      Tol t = dt == DType::F32 ? Tol{2e-5, 2e-6} : tol_for(dt);
      compare("randn_philox n=" + std::to_string(n) + " offset=" + std::to_string(offset) + " " + dn(dt), got, ref, t);
      if (variant == 0) {
        double s = 0, ss = 0;
        for (float v : got) s += v, ss += static_cast<double>(v) * v;
        const double mean = s / n, var = ss / n - mean * mean;
        expect_true("randn_philox moments " + dn(dt), std::fabs(mean) < 0.01 && std::fabs(var - 1) < 0.01,
                    "(mean " + std::to_string(mean) + ", var " + std::to_string(var) + ")");
      }
    }
  }
}

// ================================================================ attention
struct AttnCase {
  int64_t B, Nq, Nk, H, D, Dv;
  bool causal;
  int mask;    // 0 none, 1 [Nq,Nk] broadcast over b and h, 2 [B,1,Nq,Nk] with -inf rows
  int layout;  // 0 [B,N,H*D]; 1 packed qkv rows (q_row = 3*H*D); 2 batch-major heads [B,H,N,D] via strides? (see below)
};

// Host reference in double on the rounded inputs. q/k/v/out use the same element strides as the device.
void ref_attention(const cuda::AttentionParams& p, const std::vector<float>& q, const std::vector<float>& k,
                   const std::vector<float>& v, const std::vector<float>& mask, std::vector<double>& out,
                   int64_t out_elems) {
  out.assign(out_elems, std::nan(""));
  std::vector<double> sc(p.Nk);
  for (int64_t b = 0; b < p.B; b++)
    for (int64_t h = 0; h < p.heads; h++)
      for (int64_t i = 0; i < p.Nq; i++) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < p.Nk; j++) {
          double s = 0;
          for (int64_t d = 0; d < p.D; d++)
            s += static_cast<double>(q[b * p.q_batch + i * p.q_row + h * p.D + d]) *
                 k[b * p.k_batch + j * p.k_row + h * p.D + d];
          s *= p.scale;
          if (p.mask) {
            // mask floored at -FLT_MAX in the log2 domain: fully masked keys tie at "-huge"
            const double mv = mask[b * p.mask_b + h * p.mask_h + i * p.mask_q + j];
            s = mv * 1.4426950408889634 < -static_cast<double>(FLT_MAX) ? -1e300 : s + mv;
          }
          if (p.causal && j > i + (p.Nk - p.Nq)) s = -INFINITY;
          sc[j] = s;
          mx = std::max(mx, s);
        }
        double sum = 0;
        for (int64_t j = 0; j < p.Nk; j++) {
          sc[j] = mx == -INFINITY ? 0.0 : std::exp(sc[j] - mx);
          sum += sc[j];
        }
        for (int64_t d = 0; d < p.Dv; d++) {
          double acc = 0;
          for (int64_t j = 0; j < p.Nk; j++) acc += sc[j] * v[b * p.v_batch + j * p.v_row + h * p.Dv + d];
          out[b * p.o_batch + i * p.o_row + h * p.Dv + d] = sum > 0 ? acc / sum : 0.0;
        }
      }
}

// Fills p's strides for a layout and returns element counts of q, k, v, out.
void attn_layout(cuda::AttentionParams& p, int layout, int64_t& nq, int64_t& nk, int64_t& nv, int64_t& no) {
  const int64_t HD = p.heads * p.D, HDv = p.heads * p.Dv;
  if (layout == 1 && p.D == p.Dv && p.Nq == p.Nk) {  // q, k, v interleaved in one [B, N, 3*H*D] buffer
    p.q_row = p.k_row = p.v_row = 3 * HD;
    p.q_batch = p.k_batch = p.v_batch = p.Nq * 3 * HD;
    nq = nk = nv = p.B * p.Nq * 3 * HD;
  } else if (layout == 2) {  // padded rows: row pitch larger than H*D (a slice of a wider tensor)
    p.q_row = HD + 8;
    p.k_row = HD + 16;
    p.v_row = HDv + 8;
    p.q_batch = p.Nq * p.q_row;
    p.k_batch = p.Nk * p.k_row;
    p.v_batch = p.Nk * p.v_row;
    nq = p.B * p.q_batch;
    nk = p.B * p.k_batch;
    nv = p.B * p.v_batch;
  } else {
    p.q_row = HD;
    p.k_row = HD;
    p.v_row = HDv;
    p.q_batch = p.Nq * HD;
    p.k_batch = p.Nk * HD;
    p.v_batch = p.Nk * HDv;
    nq = p.B * p.q_batch;
    nk = p.B * p.k_batch;
    nv = p.B * p.v_batch;
  }
  p.o_row = HDv;
  p.o_batch = p.Nq * HDv;
  no = p.B * p.o_batch;
}

using AttnFn = std::function<void(DType, const cuda::AttentionParams&, const void*, const void*, const void*, void*)>;

void check_attention(const std::string& tag, DType dt, const AttnCase& c, const AttnFn& fn, double tol_scale = 1.0) {
  cuda::AttentionParams p{};
  p.B = c.B;
  p.Nq = c.Nq;
  p.Nk = c.Nk;
  p.heads = c.H;
  p.D = c.D;
  p.Dv = c.Dv;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  p.causal = c.causal;
  int64_t nq, nk, nv, no;
  attn_layout(p, c.layout, nq, nk, nv, no);
  const size_t es = dtype_size(dt);
  const bool packed = c.layout == 1 && c.D == c.Dv && c.Nq == c.Nk;
  Buf bq(nq * es), bk(packed ? 0 : nk * es), bv(packed ? 0 : nv * es), bo(no * es);
  std::vector<float> q, k, v;
  const void *pq, *pk, *pv;
  if (packed) {
    q = put(bq, randn(nq), dt);
    k = v = q;
    pq = bq.at();
    pk = bq.at<char>(c.H * c.D * es);
    pv = bq.at<char>(2 * c.H * c.D * es);
    // the reference indexes k and v from their own starts
    k.erase(k.begin(), k.begin() + c.H * c.D);
    v.erase(v.begin(), v.begin() + 2 * c.H * c.D);
  } else {
    q = put(bq, randn(nq), dt);
    k = put(bk, randn(nk), dt);
    v = put(bv, randn(nv), dt);
    pq = bq.at();
    pk = bk.at();
    pv = bv.at();
  }
  std::vector<float> mask;
  Buf bm(c.mask ? c.B * c.Nq * c.Nk * 4 : 0);
  if (c.mask == 1) {
    mask = randn(c.Nq * c.Nk, 0.f, 1.f);
    for (auto& x : mask)
      if (irand(0, 19) == 0) x = -INFINITY;
    upload(bm, mask.data(), mask.size() * 4);
    p.mask = bm.at<float>();
    p.mask_b = 0;
    p.mask_h = 0;
    p.mask_q = c.Nk;
  } else if (c.mask == 2) {
    mask = randn(c.B * c.Nq * c.Nk, 0.f, 2.f);
    for (int64_t b = 0; b < c.B; b++)  // padding-style mask: keys past a per-batch length, and one dead row
      for (int64_t i = 0; i < c.Nq; i++)
        for (int64_t j = 0; j < c.Nk; j++)
          if (j >= c.Nk - 3 * b || i == c.Nq / 2) mask[(b * c.Nq + i) * c.Nk + j] = -INFINITY;
    upload(bm, mask.data(), mask.size() * 4);
    p.mask = bm.at<float>();
    p.mask_b = c.Nq * c.Nk;
    p.mask_h = 0;
    p.mask_q = c.Nk;
  }
  bo.poison();
  guarded("attention " + tag, [&] { fn(dt, p, pq, pk, pv, bo.at()); });
  std::vector<double> ref;
  ref_attention(p, q, k, v, mask, ref, no);
  for (auto& r : ref) r = quant(static_cast<float>(r), dt);
  Tol t = dt == DType::F32 ? Tol{3e-5, 1e-4} : (dt == DType::F16 ? Tol{2e-3, 8e-3} : Tol{1.2e-2, 3e-2});
  t.atol *= tol_scale;
  t.rtol *= tol_scale;
  char nm[160];
  std::snprintf(nm, sizeof nm, "attention %s B%lld Nq%lld Nk%lld H%lld D%lld/%lld%s%s L%d %s", tag.c_str(),
                (long long)c.B, (long long)c.Nq, (long long)c.Nk, (long long)c.H, (long long)c.D, (long long)c.Dv,
                c.causal ? " causal" : "", c.mask ? (c.mask == 1 ? " mask" : " bmask") : "", c.layout, dn(dt).c_str());
  compare(nm, get(bo, dt, no), ref, t);
}

// force: 0 choose, 1 tensor cores only, 2 SIMT only; sel: -1 DK_ATTN_VARIANT, 0 old dispatch,
// 1 PIPE dispatch (the default), 2 PIPE wide, 3 PIPE 2 (DK_ATTN_VARIANT=sched).
AttnFn forced(int force, int sel = -1) {
  return [force, sel](DType dt, const cuda::AttentionParams& p, const void* q, const void* k, const void* v, void* o) {
    cuda::attn::attention_forced(kDev, dt, p, q, k, v, o, force, sel);
  };
}

// A specific tensor-core configuration (float16 / bfloat16 only).
// NW warps per block, PIPE (double-buffered K/V + folded scale), MINB blocks/SM in __launch_bounds__.
template <int DK, int DV, int MT, int BN, bool E, int NW = 4, int PIPE = 0, int MINB = 2> AttnFn tc_variant() {
  return [](DType dt, const cuda::AttentionParams& p, const void* q, const void* k, const void* v, void* o) {
    cuda::attn::Args a = cuda::attn::make_args(p, q, k, v, o);
    if (dt == DType::F16)
      cuda::attn::launch_tc<__half, DK, DV, MT, BN, E, NW, PIPE, MINB>(kDev, a, cuda::stream(kDev));
    else if constexpr (!E)
      cuda::attn::launch_tc<__nv_bfloat16, DK, DV, MT, BN, E, NW, PIPE, MINB>(kDev, a, cuda::stream(kDev));
  };
}

struct Variant {
  const char* name;
  int dk, dv;
  bool f16_only;
  AttnFn fn;
};
std::vector<Variant> attention_variants() {
  return {
      {"v1 48x40 mt2 bn64", 48, 40, false, tc_variant<48, 40, 2, 64, false>()},
      {"v2 48x40 mt2 bn32", 48, 40, false, tc_variant<48, 40, 2, 32, false>()},
      {"v3 48x40 mt1 bn64", 48, 40, false, tc_variant<48, 40, 1, 64, false>()},
      {"v4 48x40 mt1 bn128", 48, 40, false, tc_variant<48, 40, 1, 128, false>()},
      {"v5 48x40 mt2 bn64 exp16", 48, 40, true, tc_variant<48, 40, 2, 64, true>()},
      {"v6 64x64 mt2 bn64", 64, 64, false, tc_variant<64, 64, 2, 64, false>()},
      {"v7 64x64 mt2 bn32", 64, 64, false, tc_variant<64, 64, 2, 32, false>()},
      {"v8 64x64 mt1 bn64", 64, 64, false, tc_variant<64, 64, 1, 64, false>()},
      {"v9 64x64 mt1 bn128", 64, 64, false, tc_variant<64, 64, 1, 128, false>()},
      {"v10 64x64 mt2 bn64 exp16", 64, 64, true, tc_variant<64, 64, 2, 64, true>()},
      {"v11 80x80 mt2 bn32", 80, 80, false, tc_variant<80, 80, 2, 32, false>()},
      {"v12 80x80 mt1 bn64", 80, 80, false, tc_variant<80, 80, 1, 64, false>()},
      {"v13 80x80 mt2 bn32 exp16", 80, 80, true, tc_variant<80, 80, 2, 32, true>()},
      // PIPE: double-buffered K/V, one barrier per tile, scale folded into the exponent FFMA.
      {"v14 48x40 mt2 bn64 pipe", 48, 40, false, tc_variant<48, 40, 2, 64, false, 4, 1, 2>()},
      {"v15 48x40 w8 mt2 bn64 pipe", 48, 40, false, tc_variant<48, 40, 2, 64, false, 8, 1, 1>()},
      {"v16 48x40 w8 mt1 bn64 pipe", 48, 40, false, tc_variant<48, 40, 1, 64, false, 8, 1, 2>()},
      {"v17 48x40 mt2 bn128 pipe", 48, 40, false, tc_variant<48, 40, 2, 128, false, 4, 1, 1>()},
      {"v18 64x64 mt2 bn64 pipe", 64, 64, false, tc_variant<64, 64, 2, 64, false, 4, 1, 2>()},
      {"v19 64x64 w8 mt2 bn64 pipe", 64, 64, false, tc_variant<64, 64, 2, 64, false, 8, 1, 1>()},
      {"v20 64x64 w8 mt1 bn64 pipe", 64, 64, false, tc_variant<64, 64, 1, 64, false, 8, 1, 2>()},
      {"v21 80x80 mt1 bn64 pipe", 80, 80, false, tc_variant<80, 80, 1, 64, false, 4, 1, 2>()},
      {"v22 80x80 w8 mt1 bn64 pipe", 80, 80, false, tc_variant<80, 80, 1, 64, false, 8, 1, 1>()},
      {"v23 80x80 w2 mt1 bn64 pipe", 80, 80, false, tc_variant<80, 80, 1, 64, false, 2, 1, 4>()},
      {"v24 160x160 mt1 bn32 (old)", 160, 160, false, tc_variant<160, 160, 1, 32, false>()},
      {"v25 160x160 w2 mt1 bn32 pipe", 160, 160, false, tc_variant<160, 160, 1, 32, false, 2, 1, 4>()},
      {"v26 160x160 mt1 bn32 pipe", 160, 160, false, tc_variant<160, 160, 1, 32, false, 4, 1, 2>()},
      // pipe2: pipe + plain tiles compiled as one branch-free body (DK_ATTN_VARIANT=sched)
      {"v27 48x40 mt2 bn64 pipe2", 48, 40, false, tc_variant<48, 40, 2, 64, false, 4, 2, 2>()},
      {"v28 64x64 mt2 bn64 pipe2", 64, 64, false, tc_variant<64, 64, 2, 64, false, 4, 2, 2>()},
      {"v29 80x80 mt1 bn64 pipe2", 80, 80, false, tc_variant<80, 80, 1, 64, false, 4, 2, 2>()},
      {"v30 160x160 w2 mt1 bn32 pipe2", 160, 160, false, tc_variant<160, 160, 1, 32, false, 2, 2, 4>()},
  };
}

void test_attention() {
  std::printf("-- attention\n");
  const AttnCase cases[] = {
      {2, 130, 77, 3, 40, 40, false, 0, 0},  {1, 77, 77, 2, 64, 64, true, 0, 1},   {2, 200, 300, 2, 80, 80, false, 1, 0},
      {1, 150, 150, 2, 160, 160, false, 0, 2}, {2, 65, 129, 1, 32, 32, true, 2, 0},  {1, 257, 64, 2, 128, 128, false, 0, 0},
      {2, 33, 70, 2, 64, 40, false, 0, 0},  {1, 40, 50, 1, 40, 80, true, 0, 0},    {1, 90, 17, 2, 3, 3, false, 1, 0},
      {1, 70, 90, 2, 17, 17, true, 0, 0},   {1, 33, 40, 1, 256, 256, false, 0, 0}, {1, 20, 30, 1, 16, 300, false, 0, 0},
      {2, 100, 60, 2, 40, 40, true, 0, 0},  {1, 1, 1, 1, 64, 64, false, 0, 0},     {1, 129, 1, 3, 48, 48, false, 2, 2},
      {1, 300, 200, 1, 64, 64, true, 0, 2},
  };
  for (DType dt : kFloatTypes)
    for (const AttnCase& c : cases) {
      check_attention("auto", dt, c, forced(0));
      if (dt != DType::F32) {
        check_attention("simt", dt, c, forced(2));
        // every dispatch table, whatever DK_ATTN_VARIANT says
        check_attention("auto-old", dt, c, forced(0, 0));
        check_attention("auto-pipe", dt, c, forced(0, 1));
        check_attention("auto-wide", dt, c, forced(0, 2));
        check_attention("auto-sched", dt, c, forced(0, 3));
      }
    }
  // every timed tensor-core variant must be right too
  const AttnCase vcases[] = {{2, 200, 77, 2, 40, 40, false, 0, 0}, {1, 190, 300, 2, 40, 40, true, 1, 0},
                             {2, 150, 200, 2, 64, 64, false, 2, 0}, {1, 140, 140, 2, 64, 64, true, 0, 1},
                             {1, 130, 100, 2, 80, 80, true, 1, 0},
                             // several 256-query blocks, odd sizes, packed / padded rows, masks
                             {1, 530, 301, 2, 64, 64, true, 0, 0},  {1, 300, 531, 1, 40, 40, false, 1, 2},
                             {1, 150, 150, 2, 40, 40, false, 0, 1}, {2, 77, 333, 1, 64, 64, false, 2, 2},
                             {1, 261, 261, 2, 80, 80, false, 0, 1}, {2, 97, 45, 1, 80, 80, true, 2, 2},
                             {1, 70, 91, 2, 160, 160, true, 1, 2},  {2, 33, 50, 1, 160, 160, false, 2, 0},
                             {1, 129, 129, 1, 160, 160, false, 0, 1}};
  for (const Variant& var : attention_variants())
    for (DType dt : {DType::F16, DType::BF16}) {
      if (var.f16_only && dt != DType::F16) continue;
      for (const AttnCase& c : vcases)
        if (c.D <= var.dk && c.Dv <= var.dv && c.D > var.dk - 16) check_attention(var.name, dt, c, var.fn, 1.5);
    }
}

// ================================================================ timing
float time_ms(const std::function<void()>& fn, int reps = 20) {
  cudaStream_t s = cuda::stream(kDev);
  for (int i = 0; i < 3; i++) fn();
  sync();
  std::vector<float> t;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < reps; i++) {
    cudaEventRecord(e0, s);
    fn();
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    t.push_back(ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void bench_attention() {
  std::printf("-- attention timing (median of 20; layout [B, N, H*D]; TFLOP/s = 2*B*H*Nq*Nk*(D+Dv)/t)\n");
  struct Shape {
    int64_t Nq, Nk, D;
  };
  const Shape shapes[] = {{4096, 4096, 40}, {4096, 4096, 64}, {1024, 1024, 80}, {4096, 77, 40}, {256, 256, 160}};
  const int64_t B = 2, H = 8;
  auto variants = attention_variants();
  for (const Shape& sh : shapes)
    for (DType dt : {DType::F16, DType::BF16, DType::F32}) {
      if (dt == DType::F32 && sh.Nk != 4096) continue;  // one float32 (SIMT) point is enough
      cuda::AttentionParams p{};
      p.B = B;
      p.Nq = sh.Nq;
      p.Nk = sh.Nk;
      p.heads = H;
      p.D = p.Dv = sh.D;
      p.scale = 1.0f / std::sqrt(static_cast<float>(sh.D));
      int64_t nq, nk, nv, no;
      attn_layout(p, 0, nq, nk, nv, no);
      const size_t es = dtype_size(dt);
      Buf bq(nq * es), bk(nk * es), bv(nv * es), bo(no * es);
      put(bq, randn(nq), dt);
      put(bk, randn(nk), dt);
      put(bv, randn(nv), dt);
      const double flops = 2.0 * B * H * sh.Nq * sh.Nk * (sh.D + sh.D);
      auto report = [&](const char* name, const AttnFn& fn) {
        try {
          const float ms = time_ms([&] { fn(dt, p, bq.at(), bk.at(), bv.at(), bo.at()); });
          std::printf("  %-6s Nq=%-5lld Nk=%-5lld D=%-3lld %-28s %8.4f ms %7.1f TFLOP/s\n", dn(dt).c_str(),
                      (long long)sh.Nq, (long long)sh.Nk, (long long)sh.D, name, ms, flops / (ms * 1e-3) / 1e12);
        } catch (const std::exception& e) {
          std::printf("  %s %s failed: %s\n", dn(dt).c_str(), name, e.what());
        }
      };
      report("default", forced(0));
      if (dt == DType::F32) continue;
      // the three dispatch tables side by side (DK_ATTN_VARIANT=old / new / wide)
      report("dispatch old", forced(0, 0));
      report("dispatch new (pipe)", forced(0, 1));
      report("dispatch wide", forced(0, 2));
      report("dispatch sched (pipe2)", forced(0, 3));
      for (const Variant& var : variants) {
        if (var.f16_only && dt != DType::F16) continue;
        if (sh.D > var.dk || sh.D > var.dv || sh.D <= var.dk - 16) continue;
        report(var.name, var.fn);
      }
      if (sh.D == 40) report("simt", forced(2));
    }
}

void bench_norm() {
  std::printf("-- group norm timing (float16 unless noted; GB/s counts x read twice + y written once)\n");
  struct S {
    int64_t N, L, C;
  };
  const S shapes[] = {{2, 4096, 320}, {2, 1024, 640}, {2, 256, 1280}, {2, 64, 1280}, {1, 262144, 128},
                      {1, 65536, 512}, {1, 16384, 512}};
  for (DType dt : {DType::F16, DType::F32})
    for (const S& s : shapes) {
      if (dt == DType::F32 && s.L != 4096) continue;
      const size_t es = dtype_size(dt);
      const int64_t n = s.N * s.L * s.C;
      Buf bx(n * es), by(n * es), bg(s.C * es), bb(s.C * es);
      put(bx, randn(n), dt);
      put(bg, randn(s.C, 1, 0.1f), dt);
      put(bb, randn(s.C, 0, 0.1f), dt);
      const float ms = time_ms([&] {
        cuda::group_norm(kDev, dt, bx.at(), by.at(), s.N, s.L, s.C, 32, bg.at(), bb.at(), 1e-5f, true);
      });
      const double bytes = 3.0 * n * es;
      std::printf("  group_norm+silu %-8s [%lld,%lld,%lld] G=32 %8.4f ms %7.1f GB/s\n", dn(dt).c_str(), (long long)s.N,
                  (long long)s.L, (long long)s.C, ms, bytes / (ms * 1e-3) / 1e9);
    }
  {
    const int64_t rows = 2 * 4096, C = 320;
    Buf bx(rows * C * 2), by(rows * C * 2), bg(C * 2), bb(C * 2);
    put(bx, randn(rows * C), DType::F16);
    put(bg, randn(C), DType::F16);
    put(bb, randn(C), DType::F16);
    float ms = time_ms([&] { cuda::layer_norm(kDev, DType::F16, bx.at(), by.at(), rows, C, bg.at(), bb.at(), 1e-5f); });
    std::printf("  layer_norm float16 [%lld,%lld] %8.4f ms %7.1f GB/s (x read once + y)\n", (long long)rows,
                (long long)C, ms, 2.0 * rows * C * 2 / (ms * 1e-3) / 1e9);
    ms = time_ms([&] { cuda::softmax_lastdim(kDev, DType::F16, bx.at(), by.at(), rows, C); });
    std::printf("  softmax    float16 [%lld,%lld] %8.4f ms %7.1f GB/s (x read once + y)\n", (long long)rows,
                (long long)C, ms, 2.0 * rows * C * 2 / (ms * 1e-3) / 1e9);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool check = true, bench = true;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--check-only")) bench = false;
    else if (!std::strcmp(argv[i], "--bench-only")) check = false;
    else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) g_rng.seed(std::strtoull(argv[++i], nullptr, 10));
  }
  if (cuda::device_count() == 0) {
    std::printf("ops_lab: no CUDA device\n");
    return 2;
  }
  const cuda::DeviceInfo info = cuda::device_info(kDev);
  std::printf("ops_lab on %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.major, info.minor, info.multiprocessors);
  cuda::bind_thread_to_device(kDev);
  const auto t0 = std::chrono::steady_clock::now();
  if (check) {
    test_random();
    test_elementwise();
    test_copy();
    test_reduce();
    test_norm();
    test_attention();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("== checks: %d run, %d failed (%.1f s)\n", g_checks, g_failures, secs);
  }
  if (bench) {
    bench_norm();
    bench_attention();
  }
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    std::printf("CUDA error at exit: %s\n", cudaGetErrorString(e));
    return 1;
  }
  if (check) std::printf("== %s: %d of %d checks failed\n", g_failures ? "FAILED" : "PASSED", g_failures, g_checks);
  return g_failures ? 1 : 0;
}
