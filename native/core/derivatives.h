// Scalar math the CPU and CUDA backward kernels share, so both backends compute the same
// numbers: activation and binary-op derivatives (in double, rounded once by the caller) and
// exp_fast. Plain C++ that nvcc also compiles for the device (DK_HD); the C math functions
// (::exp, ::erf, ...) are the host libm's on the CPU and CUDA's double-precision ones on a GPU.
#pragma once
#include <math.h>

#include <cstdint>
#include <cstring>

#include "../cpu/kernels.h"

#if defined(__CUDACC__)
#define DK_HD __host__ __device__ __forceinline__
#else
#define DK_HD inline
#endif

namespace dk::deriv {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

DK_HD double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }

// gelu with the exact erf, in double.
DK_HD double gelu_erf(double x) { return 0.5 * x * (1 + ::erf(x * kInvSqrt2)); }

// d f(x) / dx
DK_HD double unary_grad(cpu::UnaryOp op, double x) {
  using cpu::UnaryOp;
  switch (op) {
    case UnaryOp::Neg: return -1.0;
    case UnaryOp::Exp: return ::exp(x);
    case UnaryOp::Log: return 1.0 / x;
    case UnaryOp::Sqrt: return 0.5 / ::sqrt(x);
    case UnaryOp::Rsqrt: return -0.5 / (x * ::sqrt(x));
    case UnaryOp::Abs: return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
    case UnaryOp::Sigmoid: { const double s = sigmoid(x); return s * (1 - s); }
    case UnaryOp::Tanh: { const double t = ::tanh(x); return 1 - t * t; }
    case UnaryOp::Silu: { const double s = sigmoid(x); return s * (1 + x * (1 - s)); }
    case UnaryOp::Gelu: return 0.5 * (1 + ::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * ::exp(-0.5 * x * x);
    case UnaryOp::GeluTanh: {
      const double k = 0.7978845608028654, c = 0.044715;
      const double t = ::tanh(k * (x + c * x * x * x));
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x);
    }
    case UnaryOp::QuickGelu: { const double s = sigmoid(1.702 * x); return s + 1.702 * x * s * (1 - s); }
    case UnaryOp::Square: return 2 * x;
    case UnaryOp::Sin: return ::cos(x);
    case UnaryOp::Cos: return -::sin(x);
    case UnaryOp::Reciprocal: return -1.0 / (x * x);
  }
  return 0.0;
}

// d (a op b) / da (which = 0) or / db (which = 1), torch's conventions: maximum/minimum split
// the gradient at ties, pow's exponent gradient is 0 where a == 0 and b >= 0.
DK_HD double binary_grad(cpu::BinaryOp op, int which, double a, double b) {
  using cpu::BinaryOp;
  switch (op) {
    case BinaryOp::Add: return 1.0;
    case BinaryOp::Sub: return which ? -1.0 : 1.0;
    case BinaryOp::Mul: return which ? a : b;
    case BinaryOp::Div: return which ? -a / (b * b) : 1.0 / b;
    case BinaryOp::Pow:
      if (which == 0) return b == 0 ? 0.0 : b * ::pow(a, b - 1);
      return (a == 0 && b >= 0) ? 0.0 : ::pow(a, b) * ::log(a);
    case BinaryOp::Maximum: {
      const double mine = which ? b : a, other = which ? a : b;
      return mine > other ? 1.0 : (mine == other ? 0.5 : 0.0);
    }
    case BinaryOp::Minimum: {
      const double mine = which ? b : a, other = which ? a : b;
      return mine < other ? 1.0 : (mine == other ? 0.5 : 0.0);
    }
  }
  return 0.0;
}

DK_HD float bits_to_float(int32_t b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

// e^x in a form compilers vectorise (no branches, no calls): 2^(x log2 e) = 2^n 2^f with
// f in [-1/2, 1/2] and a degree-6 polynomial (~1 ulp). Exactly 0 below -87 (so -inf gives 0),
// clamped at 88 above, NaN stays NaN.
DK_HD float exp_fast(float x) {
  float xc = x < -87.f ? -87.f : x;
  xc = xc > 88.f ? 88.f : xc;
  const float t = xc * 1.4426950408889634f;
  const int n = static_cast<int>(t + 126.5f) - 126;  // round to nearest: t + 126.5 > 0
  const float f = t - static_cast<float>(n);
  float p = 0.000153457921f;
  p = p * f + 0.00133999297f;
  p = p * f + 0.00961848907f;
  p = p * f + 0.0555032864f;
  p = p * f + 0.240226462f;
  p = p * f + 0.693147182f;
  p = p * f + 1.0f;
  float r = p * bits_to_float((n + 127) << 23);
  r = x < -87.f ? 0.f : r;
  return x != x ? x : r;
}

}  // namespace dk::deriv
