// Scalar definitions of the elementwise ops, shared by the float32 and bfloat16 kernels.
#pragma once
#include <algorithm>
#include <cmath>

#include "kernels.h"

namespace dk::cpu {
namespace {

// Both operands dense in `shape` (row-major, size-1 dims free): the op is one flat loop.
inline bool dense_operands(int ndim, const int64_t* shape, const int64_t* sa, const int64_t* sb) {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; s *= shape[d], d--)
    if (shape[d] != 1 && (sa[d] != s || sb[d] != s)) return false;
  return true;
}

inline float apply_binary(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::Maximum: return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b);
    case BinaryOp::Minimum: return std::isnan(a) || std::isnan(b) ? NAN : std::min(a, b);
  }
  return 0.f;
}

// x Phi(x) through erfc in double: 1 + erf(x / sqrt 2) would cancel for x < 0 (thousands of ulps
// by x = -5), and x / sqrt 2 rounded to float would cost ~z^2 ulps in the tail.
inline float gelu_erf(float x) {
  return static_cast<float>(0.5 * x * std::erfc(-0.70710678118654752 * static_cast<double>(x)));
}

inline float apply_unary(UnaryOp op, float x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return 1.f / std::sqrt(x);
    case UnaryOp::Abs: return std::fabs(x);
    case UnaryOp::Sigmoid: return 1.f / (1.f + std::exp(-x));
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Silu: return x / (1.f + std::exp(-x));
    case UnaryOp::Gelu: return gelu_erf(x);
    case UnaryOp::GeluTanh: {
      const float k = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * x * (1.f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }
    case UnaryOp::QuickGelu: return x / (1.f + std::exp(-1.702f * x));
    case UnaryOp::Square: return x * x;
    case UnaryOp::Sin: return std::sin(x);
    case UnaryOp::Cos: return std::cos(x);
    case UnaryOp::Reciprocal: return 1.f / x;
  }
  return 0.f;
}

}  // namespace
}  // namespace dk::cpu
