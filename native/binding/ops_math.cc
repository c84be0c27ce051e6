// Elementwise math, reductions and softmax: binary (broadcasting), binaryScalar, unary, clamp,
// axpby, geglu, reduce, softmax.
#include <array>
#include <cstring>

#include "../cpu/kernels.h"
#include "common.h"

namespace dk::binding {
namespace {

using cpu::BinaryOp;
using cpu::ReduceOp;
using cpu::UnaryOp;

template <typename E, size_t N>
E parse_enum(const std::string& s, const std::array<const char*, N>& names, const char* op, const char* what) {
  for (size_t i = 0; i < N; i++)
    if (s == names[i]) return static_cast<E>(i);
  std::string allowed;
  for (size_t i = 0; i < N; i++) allowed += (i ? ", " : "") + std::string(names[i]);
  throw_range(std::string(op) + ": unknown " + what + " \"" + s + "\"; expected one of " + allowed);
}

constexpr std::array<const char*, 7> kBinaryNames = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
constexpr std::array<const char*, 16> kUnaryNames = {"neg", "exp", "log", "sqrt", "rsqrt", "abs", "sigmoid", "tanh",
                                                     "silu", "gelu", "gelu_tanh", "quick_gelu", "square", "sin",
                                                     "cos", "reciprocal"};
constexpr std::array<const char*, 3> kReduceNames = {"sum", "mean", "max"};

Napi::Value Binary(const Napi::CallbackInfo& info) {
  BinaryOp bop = parse_enum<BinaryOp>(string_arg(info, 0, "binary", "op"), kBinaryNames, "binary", "op");
  const char* op = kBinaryNames[static_cast<int>(bop)];
  const Tensor& a = tensor_arg(info, 1, op, "a");
  const Tensor& b = tensor_arg(info, 2, op, "b");
  check_compute_dtype(op, "a", a, true);
  check_same(op, "b", a, b);
  // numpy broadcasting: align trailing dims; size-1 (or missing) dims stretch with stride 0.
  const int64_t nd = std::max(a.ndim(), b.ndim());
  Shape shape(nd), sa(nd), sb(nd);
  for (int64_t i = 0; i < nd; i++) {
    int64_t ia = i - (nd - a.ndim()), ib = i - (nd - b.ndim());
    int64_t da = ia >= 0 ? a.shape[ia] : 1, db = ib >= 0 ? b.shape[ib] : 1;
    if (da != db && da != 1 && db != 1)
      throw_range(std::string(op) + ": shapes " + shape_str(a.shape) + " and " +
                  shape_str(b.shape) + " cannot be broadcast together");
    shape[i] = std::max(da, db);
    if (da == 0 || db == 0) shape[i] = 0;
    sa[i] = (ia >= 0 && da != 1) ? a.strides[ia] : 0;
    sb[i] = (ib >= 0 && db != 1) ? b.strides[ib] : 0;
  }
  Tensor out = new_like(a, shape);
  run_op(op, a.device(), {a, b}, {out},
         [=] {
           if (a.dtype == DType::BF16)
             cpu::binary(bop, static_cast<int>(nd), shape.data(), a.ptr<cpu::bf16>(), sa.data(), b.ptr<cpu::bf16>(), sb.data(), out.ptr<cpu::bf16>());
           else
             cpu::binary(bop, static_cast<int>(nd), shape.data(), a.ptr<float>(), sa.data(), b.ptr<float>(), sb.data(), out.ptr<float>());
         },
         [=] { DK_CUDA_ONLY(cuda::binary(a.device().index, a.dtype, bop, static_cast<int>(nd), shape.data(), a.data(), sa.data(), b.data(), sb.data(), out.data())); });
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value BinaryScalar(const Napi::CallbackInfo& info) {
  BinaryOp bop = parse_enum<BinaryOp>(string_arg(info, 0, "binaryScalar", "op"), kBinaryNames, "binaryScalar", "op");
  const char* op = kBinaryNames[static_cast<int>(bop)];
  Tensor a = contiguous(tensor_arg(info, 1, op, "a"));
  float s = static_cast<float>(number_arg(info, 2, op, "scalar"));
  bool first = bool_arg(info, 3, op, "scalarFirst");
  check_compute_dtype(op, "a", a, true);
  Tensor out = new_like(a, a.shape);
  run_op(op, a.device(), {a}, {out},
         [=] {
           if (a.dtype == DType::BF16) cpu::binary_scalar(bop, a.ptr<cpu::bf16>(), s, first, out.ptr<cpu::bf16>(), a.numel());
           else cpu::binary_scalar(bop, a.ptr<float>(), s, first, out.ptr<float>(), a.numel());
         },
         [=] { DK_CUDA_ONLY(cuda::binary_scalar(a.device().index, a.dtype, bop, a.data(), s, first, out.data(), a.numel())); });
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Unary(const Napi::CallbackInfo& info) {
  const char* op = "unary";
  UnaryOp uop = parse_enum<UnaryOp>(string_arg(info, 0, op, "op"), kUnaryNames, op, "op");
  const char* name = kUnaryNames[static_cast<int>(uop)];
  Tensor a = contiguous(tensor_arg(info, 1, name, "input"));
  check_compute_dtype(name, "input", a, true);
  Tensor out = new_like(a, a.shape);
  run_op(name, a.device(), {a}, {out},
         [=] {
           if (a.dtype == DType::BF16) cpu::unary(uop, a.ptr<cpu::bf16>(), out.ptr<cpu::bf16>(), a.numel());
           else cpu::unary(uop, a.ptr<float>(), out.ptr<float>(), a.numel());
         },
         [=] { DK_CUDA_ONLY(cuda::unary(a.device().index, a.dtype, uop, a.data(), out.data(), a.numel())); });
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Clamp(const Napi::CallbackInfo& info) {
  const char* op = "clamp";
  Tensor a = contiguous(tensor_arg(info, 0, op, "input"));
  check_compute_dtype(op, "input", a, true);
  float lo = static_cast<float>(number_arg(info, 1, op, "min"));
  float hi = static_cast<float>(number_arg(info, 2, op, "max"));
  if (lo > hi) throw_range("clamp: min must be <= max");
  Tensor out = new_like(a, a.shape);
  run_op(op, a.device(), {a}, {out},
         [=] {
           if (a.dtype == DType::BF16) cpu::clamp(a.ptr<cpu::bf16>(), lo, hi, out.ptr<cpu::bf16>(), a.numel());
           else cpu::clamp(a.ptr<float>(), lo, hi, out.ptr<float>(), a.numel());
         },
         [=] { DK_CUDA_ONLY(cuda::clamp(a.device().index, a.dtype, a.data(), lo, hi, out.data(), a.numel())); });
  return NativeTensor::Wrap(info.Env(), out);
}

// axpby(x, a, y|null, b, z|null, c) -> a*x + b*y + c*z
Napi::Value Axpby(const Napi::CallbackInfo& info) {
  const char* op = "axpby";
  Tensor x = contiguous(tensor_arg(info, 0, op, "x"));
  float a = static_cast<float>(number_arg(info, 1, op, "a"));
  std::optional<Tensor> y = opt_tensor_arg(info, 2, op, "y");
  float b = static_cast<float>(number_arg(info, 3, op, "b"));
  std::optional<Tensor> z = opt_tensor_arg(info, 4, op, "z");
  float c = static_cast<float>(number_arg(info, 5, op, "c"));
  check_compute_dtype(op, "x", x, true);
  if (z && !y) throw_type("axpby: z given without y");
  std::vector<Tensor> ins = {x};
  for (auto* t : {&y, &z}) {
    if (!*t) continue;
    check_same(op, t == &y ? "y" : "z", x, **t);
    if ((*t)->shape != x.shape)
      throw_range(std::string("axpby: ") + (t == &y ? "y" : "z") + " has shape " + shape_str((*t)->shape) +
                  ", expected " + shape_str(x.shape));
    **t = contiguous(**t);
    ins.push_back(**t);
  }
  Tensor out = new_like(x, x.shape);
  const void* yp = y ? y->data() : nullptr;
  const void* zp = z ? z->data() : nullptr;
  run_op(op, x.device(), ins, {out},
         [=] {
           if (x.dtype == DType::BF16)
             cpu::axpby(x.numel(), a, x.ptr<cpu::bf16>(), b, static_cast<const cpu::bf16*>(yp), c, static_cast<const cpu::bf16*>(zp), out.ptr<cpu::bf16>());
           else
             cpu::axpby(x.numel(), a, x.ptr<float>(), b, static_cast<const float*>(yp), c, static_cast<const float*>(zp), out.ptr<float>());
         },
         [=] { DK_CUDA_ONLY(cuda::axpby(x.device().index, x.dtype, x.numel(), a, x.data(), b, yp, c, zp, out.data())); });
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Geglu(const Napi::CallbackInfo& info) {
  const char* op = "geglu";
  Tensor x = contiguous(tensor_arg(info, 0, op, "input"));
  check_compute_dtype(op, "input", x, true);
  check_rank(op, "input", x, 1, 8);
  const int64_t last = x.shape.back();
  if (last % 2) throw_range("geglu: last dim must be even, got " + std::to_string(last));
  Shape shape = x.shape;
  shape.back() = last / 2;
  Tensor out = new_like(x, shape);
  const int64_t rows = last ? x.numel() / last : 0, C = last / 2;
  run_op(op, x.device(), {x}, {out},
         [=] {
           if (x.dtype == DType::BF16) cpu::geglu(x.ptr<cpu::bf16>(), out.ptr<cpu::bf16>(), rows, C);
           else cpu::geglu(x.ptr<float>(), out.ptr<float>(), rows, C);
         },
         [=] { DK_CUDA_ONLY(cuda::geglu(x.device().index, x.dtype, x.data(), out.data(), rows, C)); });
  return NativeTensor::Wrap(info.Env(), out);
}

// reduce(op, x, dim, keepdim)
Napi::Value Reduce(const Napi::CallbackInfo& info) {
  const char* op = "reduce";
  ReduceOp rop = parse_enum<ReduceOp>(string_arg(info, 0, op, "op"), kReduceNames, op, "op");
  const char* name = kReduceNames[static_cast<int>(rop)];
  Tensor x = contiguous(tensor_arg(info, 1, name, "input"));
  check_compute_dtype(name, "input", x, true);
  int64_t dim = normalize_dim(name, int_arg(info, 2, name, "dim"), x.ndim());
  bool keep = bool_arg(info, 3, name, "keepdim");
  int64_t outer = 1, inner = 1, n = x.shape[dim];
  for (int64_t d = 0; d < dim; d++) outer *= x.shape[d];
  for (int64_t d = dim + 1; d < x.ndim(); d++) inner *= x.shape[d];
  if (n == 0 && rop == ReduceOp::Max) throw_range("max: cannot reduce an empty dimension");
  Shape shape = x.shape;
  if (keep) shape[dim] = 1;
  else shape.erase(shape.begin() + dim);
  Tensor out = new_like(x, shape);
  run_op(name, x.device(), {x}, {out},
         [=] {
           if (x.dtype == DType::BF16) cpu::reduce(rop, x.ptr<cpu::bf16>(), out.ptr<cpu::bf16>(), outer, n, inner);
           else cpu::reduce(rop, x.ptr<float>(), out.ptr<float>(), outer, n, inner);
         },
         [=] { DK_CUDA_ONLY(cuda::reduce(x.device().index, x.dtype, rop, x.data(), out.data(), outer, n, inner)); });
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Softmax(const Napi::CallbackInfo& info) {
  const char* op = "softmax";
  Tensor x = contiguous(tensor_arg(info, 0, op, "input"));
  check_compute_dtype(op, "input", x, true);
  check_rank(op, "input", x, 1, 8);
  const int64_t C = x.shape.back(), rows = C ? x.numel() / C : 0;
  Tensor out = new_like(x, x.shape);
  run_op(op, x.device(), {x}, {out},
         [=] {
           if (x.dtype == DType::BF16) cpu::softmax_lastdim(x.ptr<cpu::bf16>(), out.ptr<cpu::bf16>(), rows, C);
           else cpu::softmax_lastdim(x.ptr<float>(), out.ptr<float>(), rows, C);
         },
         [=] { DK_CUDA_ONLY(cuda::softmax_lastdim(x.device().index, x.dtype, x.data(), out.data(), rows, C)); });
  return NativeTensor::Wrap(info.Env(), out);
}

}  // namespace

void register_math_ops(Napi::Env env, Napi::Object exports) {
  DK_EXPORT(exports, "binary", Binary);
  DK_EXPORT(exports, "binaryScalar", BinaryScalar);
  DK_EXPORT(exports, "unary", Unary);
  DK_EXPORT(exports, "clamp", Clamp);
  DK_EXPORT(exports, "axpby", Axpby);
  DK_EXPORT(exports, "geglu", Geglu);
  DK_EXPORT(exports, "reduce", Reduce);
  DK_EXPORT(exports, "softmax", Softmax);
}

}  // namespace dk::binding
