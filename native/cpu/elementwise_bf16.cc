// bfloat16 elementwise kernels: blocks of up to kBlock values are widened into float32 stack
// buffers, computed with the same scalar definitions as the float32 kernels, and rounded back.
// Memory traffic is half of float32's; the conversions stay in L1.
#include <algorithm>

#include "../core/half.h"
#include "../core/thread_pool.h"
#include "cpu_features.h"
#include "elementwise_math.h"
#include "kernels.h"

namespace dk::cpu {

#if defined(DK_X86)
void geglu_rows_avx512(const bf16* x, bf16* out, int64_t r0, int64_t r1, int64_t C);
#endif

namespace {

constexpr int64_t kGrain = 1 << 14;
constexpr int64_t kBlock = 1024;

// dst[i] = src[i * stride] for i < n (stride 0 broadcasts one value).
void gather(const bf16* src, int64_t stride, float* dst, int64_t n) {
  if (stride == 1) {
    widen_bf16(src, dst, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = ::dk::bf16_to_f32(src[i * stride].bits);
  }
}

template <BinaryOp OP>
void binary_block(const float* a, const float* b, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = apply_binary(OP, a[i], b[i]);
}

void binary_any(BinaryOp op, const float* a, const float* b, float* o, int64_t n) {
  switch (op) {
    case BinaryOp::Add: binary_block<BinaryOp::Add>(a, b, o, n); break;
    case BinaryOp::Sub: binary_block<BinaryOp::Sub>(a, b, o, n); break;
    case BinaryOp::Mul: binary_block<BinaryOp::Mul>(a, b, o, n); break;
    case BinaryOp::Div: binary_block<BinaryOp::Div>(a, b, o, n); break;
    default: for (int64_t i = 0; i < n; ++i) o[i] = apply_binary(op, a[i], b[i]);
  }
}

}  // namespace

void binary(BinaryOp op, int ndim, const int64_t* shape, const bf16* a, const int64_t* sa, const bf16* b,
            const int64_t* sb, bf16* out) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  if (n == 0) return;
  // Rows along the last dim (the whole tensor is one row when both operands are dense).
  const bool flat = dense_operands(ndim, shape, sa, sb);
  const int64_t inner = flat ? n : (ndim > 0 ? shape[ndim - 1] : 1);
  const int64_t rows = n / inner;
  const int64_t ia = flat ? 1 : (ndim > 0 ? sa[ndim - 1] : 0), ib = flat ? 1 : (ndim > 0 ? sb[ndim - 1] : 0);
  // Work items are (row, block of the row), so one long row still splits over threads.
  const int64_t bpr = (inner + kBlock - 1) / kBlock;
  parallel_for(rows * bpr, std::max<int64_t>(1, kGrain / kBlock), [&](int64_t lo, int64_t hi) {
    float xa[kBlock], xb[kBlock], xo[kBlock];
    for (int64_t it = lo; it < hi; ++it) {
      const int64_t r = it / bpr, c0 = (it % bpr) * kBlock, m = std::min(kBlock, inner - c0);
      int64_t rem = r, oa = 0, ob = 0;
      for (int d = ndim - 2; d >= 0 && !flat; d--) {
        const int64_t idx = rem % shape[d];
        rem /= shape[d];
        oa += idx * sa[d];
        ob += idx * sb[d];
      }
      gather(a + oa + c0 * ia, ia, xa, m);
      gather(b + ob + c0 * ib, ib, xb, m);
      binary_any(op, xa, xb, xo, m);
      narrow_bf16(xo, out + r * inner + c0, m);
    }
  });
}

void binary_scalar(BinaryOp op, const bf16* a, float s, bool scalar_first, bf16* out, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    float x[kBlock];
    for (int64_t i = lo; i < hi; i += kBlock) {
      const int64_t m = std::min(kBlock, hi - i);
      widen_bf16(a + i, x, m);
      if (scalar_first)
        for (int64_t j = 0; j < m; ++j) x[j] = apply_binary(op, s, x[j]);
      else if (op == BinaryOp::Mul)
        for (int64_t j = 0; j < m; ++j) x[j] *= s;
      else if (op == BinaryOp::Add)
        for (int64_t j = 0; j < m; ++j) x[j] += s;
      else
        for (int64_t j = 0; j < m; ++j) x[j] = apply_binary(op, x[j], s);
      narrow_bf16(x, out + i, m);
    }
  });
}

void unary(UnaryOp op, const bf16* a, bf16* out, int64_t n) {
  parallel_for(n, kGrain / 4, [&](int64_t lo, int64_t hi) {
    float x[kBlock];
    for (int64_t i = lo; i < hi; i += kBlock) {
      const int64_t m = std::min(kBlock, hi - i);
      widen_bf16(a + i, x, m);
      for (int64_t j = 0; j < m; ++j) x[j] = apply_unary(op, x[j]);
      narrow_bf16(x, out + i, m);
    }
  });
}

void clamp(const bf16* a, float lo_v, float hi_v, bf16* out, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    float x[kBlock];
    for (int64_t i = lo; i < hi; i += kBlock) {
      const int64_t m = std::min(kBlock, hi - i);
      widen_bf16(a + i, x, m);
      for (int64_t j = 0; j < m; ++j) x[j] = std::isnan(x[j]) ? x[j] : std::min(std::max(x[j], lo_v), hi_v);
      narrow_bf16(x, out + i, m);
    }
  });
}

void axpby(int64_t n, float a, const bf16* x, float b, const bf16* y, float c, const bf16* z, bf16* out) {
  parallel_for(n, kGrain, [&](int64_t lo, int64_t hi) {
    float bx[kBlock], by[kBlock], bz[kBlock];
    for (int64_t i = lo; i < hi; i += kBlock) {
      const int64_t m = std::min(kBlock, hi - i);
      widen_bf16(x + i, bx, m);
      if (y) widen_bf16(y + i, by, m);
      if (z) widen_bf16(z + i, bz, m);
      if (y && z)
        for (int64_t j = 0; j < m; ++j) bx[j] = a * bx[j] + b * by[j] + c * bz[j];
      else if (y)
        for (int64_t j = 0; j < m; ++j) bx[j] = a * bx[j] + b * by[j];
      else
        for (int64_t j = 0; j < m; ++j) bx[j] = a * bx[j];
      narrow_bf16(bx, out + i, m);
    }
  });
}

void geglu(const bf16* x, bf16* out, int64_t rows, int64_t C) {
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t lo, int64_t hi) {
#if defined(DK_X86)
    // Widened, computed and rounded in registers (elementwise_avx512.cc).
    if (cpu_features().isa == Isa::AVX512) return geglu_rows_avx512(x, out, lo, hi, C);
#endif
    float h[kBlock], g[kBlock];
    for (int64_t r = lo; r < hi; r++)
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t m = std::min(kBlock, C - c0);
        widen_bf16(x + r * 2 * C + c0, h, m);
        widen_bf16(x + r * 2 * C + C + c0, g, m);
        for (int64_t j = 0; j < m; ++j) h[j] *= gelu_erf(g[j]);
        narrow_bf16(h, out + r * C + c0, m);
      }
  });
}

}  // namespace dk::cpu
