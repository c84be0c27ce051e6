// Training entries: the backward kernels of native/cpu/backward.h, the attention forward that
// keeps the logsumexp, and the in-place optimiser updates. Validated like the forward ops
// (TypeError/RangeError naming the op and argument). Float32 on the CPU and, in a CUDA build, on
// a GPU (native/cuda/backward.h); every tensor of one call must be on the same device.
// lib/autograd calls these; they never record onto the tape.
#include <array>
#include <cmath>
#include <cstring>

#include "../cpu/backward.h"
#include "../cpu/kernels.h"
#include "common.h"
#ifdef DK_WITH_CUDA
#include "../cuda/backward.h"
#endif

namespace dk::binding {
namespace {

using cpu::BinaryOp;
using cpu::UnaryOp;

constexpr std::array<const char*, 7> kBinaryNames = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
constexpr std::array<const char*, 16> kUnaryNames = {"neg", "exp", "log", "sqrt", "rsqrt", "abs", "sigmoid", "tanh",
                                                     "silu", "gelu", "gelu_tanh", "quick_gelu", "square", "sin",
                                                     "cos", "reciprocal"};

template <size_t N>
int parse_name(const std::string& s, const std::array<const char*, N>& names, const char* op, const char* what) {
  for (size_t i = 0; i < N; i++)
    if (s == names[i]) return static_cast<int>(i);
  std::string allowed;
  for (size_t i = 0; i < N; i++) allowed += (i ? ", " : "") + std::string(names[i]);
  throw_range(std::string(op) + ": unknown " + what + " \"" + s + "\"; expected one of " + allowed);
}

// Backward kernels take float32 (on the CPU, or on a GPU in a CUDA build).
void grad_f32(const char* op, const char* name, const Tensor& t) {
  if (t.dtype != DType::F32)
    throw_type(std::string(op) + ": " + name + " must be float32, got " + std::string(dtype_name(t.dtype)));
}

Tensor f32_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Tensor t = contiguous(tensor_arg(info, i, op, name));
  grad_f32(op, name, t);
  return t;
}

std::optional<Tensor> opt_f32_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  std::optional<Tensor> t = opt_tensor_arg(info, i, op, name);
  if (!t) return t;
  grad_f32(op, name, *t);
  return contiguous(*t);
}

void expect_shape(const char* op, const char* name, const Tensor& t, const Shape& want) {
  if (t.shape != want)
    throw_range(std::string(op) + ": " + name + " must have shape " + shape_str(want) + ", got " + shape_str(t.shape));
}

// A tensor updated in place: float32 on cpu, contiguous (it is written through its own pointer).
void check_inplace(const char* op, const char* name, const Tensor& t) {
  grad_f32(op, name, t);
  if (!t.is_contiguous()) throw_range(std::string(op) + ": " + name + " must be contiguous (it is updated in place)");
}

// Every tensor of a call on `ref`'s device (and float32 like it): a clear TypeError, not a
// kernel reading another device's memory.
void same_device(const char* op, const char* name, const Tensor& ref, const Tensor& t) { check_same(op, name, ref, t); }
void same_device(const char* op, const char* name, const Tensor& ref, const std::vector<Tensor>& ts) {
  for (size_t k = 0; k < ts.size(); k++)
    check_same(op, (std::string(name) + "[" + std::to_string(k) + "]").c_str(), ref, ts[k]);
}

// The CUDA ordinal of a tensor's device (only called on the CUDA path).
[[maybe_unused]] int dev(const Tensor& t) { return t.device().index; }

Napi::Value wrap_or_null(Napi::Env env, const std::optional<Tensor>& t) {
  return t ? NativeTensor::Wrap(env, *t) : env.Null();
}

Napi::Value array_of(Napi::Env env, std::initializer_list<std::optional<Tensor>> ts) {
  Napi::Array a = Napi::Array::New(env, ts.size());
  uint32_t i = 0;
  for (const auto& t : ts) a.Set(i++, wrap_or_null(env, t));
  return a;
}

std::optional<Tensor> maybe_new(bool want, const Tensor& ref, const Shape& shape) {
  if (!want) return std::nullopt;
  return new_like(ref, shape);
}

float* fptr(const std::optional<Tensor>& t) { return t ? t->ptr<float>() : nullptr; }

// ---------------------------------------------------------------- conv2d

// conv2dBackward(dy [N,P,Q,K], x [N,H,W,C], w [K,R,S,C], stride[2], padding[2], dilation[2],
//                needInput, needWeight, needBias) -> [dx | null, dw | null, db | null]
Napi::Value Conv2dBackward(const Napi::CallbackInfo& info) {
  const char* op = "conv2dBackward";
  Tensor dy = f32_arg(info, 0, op, "dy");
  Tensor x = f32_arg(info, 1, op, "input");
  Tensor w = f32_arg(info, 2, op, "weight");
  std::vector<int64_t> stride = int_list_arg(info, 3, op, "stride");
  std::vector<int64_t> pad = int_list_arg(info, 4, op, "padding");
  std::vector<int64_t> dil = int_list_arg(info, 5, op, "dilation");
  bool need_x = bool_arg(info, 6, op, "needInput");
  bool need_w = bool_arg(info, 7, op, "needWeight");
  bool need_b = bool_arg(info, 8, op, "needBias");
  check_same(op, "dy", x, dy);
  check_same(op, "weight", x, w);
  check_rank(op, "input", x, 4, 4);
  check_rank(op, "weight", w, 4, 4);
  if (stride.size() != 2 || pad.size() != 2 || dil.size() != 2)
    throw_range("conv2dBackward: stride, padding and dilation need 2 values each");
  if (stride[0] < 1 || stride[1] < 1 || dil[0] < 1 || dil[1] < 1 || pad[0] < 0 || pad[1] < 0)
    throw_range("conv2dBackward: stride and dilation must be >= 1 and padding >= 0");
  cpu::Conv2dParams p{};
  p.N = x.shape[0]; p.H = x.shape[1]; p.W = x.shape[2]; p.C = x.shape[3];
  p.K = w.shape[0]; p.R = w.shape[1]; p.S = w.shape[2];
  if (w.shape[3] != p.C)
    throw_range("conv2dBackward: weight " + shape_str(w.shape) + " (OHWI) does not match input " + shape_str(x.shape) + " (NHWC)");
  p.stride_h = stride[0]; p.stride_w = stride[1]; p.pad_h = pad[0]; p.pad_w = pad[1]; p.dil_h = dil[0]; p.dil_w = dil[1];
  const int64_t eff_r = dil[0] * (p.R - 1) + 1, eff_s = dil[1] * (p.S - 1) + 1;
  if (p.H + 2 * p.pad_h < eff_r || p.W + 2 * p.pad_w < eff_s)
    throw_range("conv2dBackward: kernel is larger than the padded input " + shape_str(x.shape));
  p.P = (p.H + 2 * p.pad_h - eff_r) / p.stride_h + 1;
  p.Q = (p.W + 2 * p.pad_w - eff_s) / p.stride_w + 1;
  expect_shape(op, "dy", dy, {p.N, p.P, p.Q, p.K});
  auto dx = maybe_new(need_x, x, x.shape);
  auto dw = maybe_new(need_w, w, w.shape);
  auto db = maybe_new(need_b, w, {p.K});
  std::vector<Tensor> outs;
  for (auto* t : {&dx, &dw, &db})
    if (*t) outs.push_back(**t);
  if (outs.empty()) return array_of(info.Env(), {dx, dw, db});
  float *dxp = fptr(dx), *dwp = fptr(dw), *dbp = fptr(db);
  run_op(op, x.device(), {dy, x, w}, outs,
         [=] {
           if (dxp) cpu::conv2d_backward_input(p, dy.ptr<float>(), w.ptr<float>(), dxp);
           if (dwp) cpu::conv2d_backward_weight(p, dy.ptr<float>(), x.ptr<float>(), dwp);
           if (dbp) cpu::column_sum(dy.ptr<float>(), p.N * p.P * p.Q, p.K, dbp);
         },
         [=] {
           DK_CUDA_ONLY({
             const int dev = x.device().index;
             if (dxp) cuda::conv2d_backward_input(dev, p, dy.ptr<float>(), w.ptr<float>(), dxp);
             if (dwp) cuda::conv2d_backward_weight(dev, p, dy.ptr<float>(), x.ptr<float>(), dwp);
             if (dbp) cuda::column_sum(dev, dy.ptr<float>(), p.N * p.P * p.Q, p.K, dbp);
           });
         });
  return array_of(info.Env(), {dx, dw, db});
}

// ---------------------------------------------------------------- norms

// groupNormBackward(dy, x [N, ..., C], groups, gamma | null, beta | null, eps, silu,
//                   needInput, needGamma, needBeta) -> [dx | null, dgamma | null, dbeta | null]
Napi::Value GroupNormBackward(const Napi::CallbackInfo& info) {
  const char* op = "groupNormBackward";
  Tensor dy = f32_arg(info, 0, op, "dy");
  Tensor x = f32_arg(info, 1, op, "input");
  check_rank(op, "input", x, 2, 8);
  int64_t G = int_arg(info, 2, op, "groups");
  const int64_t N = x.shape[0], C = x.shape.back(), L = (N && C) ? x.numel() / (N * C) : 0;
  if (G < 1 || C % G) throw_range("groupNormBackward: groups (" + std::to_string(G) + ") must divide the channels (" + std::to_string(C) + ")");
  auto gamma = opt_f32_arg(info, 3, op, "gamma");
  auto beta = opt_f32_arg(info, 4, op, "beta");
  if (gamma) expect_shape(op, "gamma", *gamma, {C});
  if (beta) expect_shape(op, "beta", *beta, {C});
  same_device(op, "dy", x, dy);
  if (gamma) same_device(op, "gamma", x, *gamma);
  if (beta) same_device(op, "beta", x, *beta);
  float eps = static_cast<float>(number_arg(info, 5, op, "eps"));
  bool silu = bool_arg(info, 6, op, "silu");
  bool need_x = bool_arg(info, 7, op, "needInput");
  bool need_g = bool_arg(info, 8, op, "needGamma");
  bool need_b = bool_arg(info, 9, op, "needBeta");
  expect_shape(op, "dy", dy, x.shape);
  auto dx = maybe_new(need_x, x, x.shape);
  auto dg = maybe_new(need_g, x, {C});
  auto db = maybe_new(need_b, x, {C});
  std::vector<Tensor> ins = {dy, x}, outs;
  if (gamma) ins.push_back(*gamma);
  if (beta) ins.push_back(*beta);
  for (auto* t : {&dx, &dg, &db})
    if (*t) outs.push_back(**t);
  if (outs.empty()) return array_of(info.Env(), {dx, dg, db});
  const float* gp = gamma ? gamma->ptr<float>() : nullptr;
  const float* bp = beta ? beta->ptr<float>() : nullptr;
  float *dxp = fptr(dx), *dgp = fptr(dg), *dbp = fptr(db);
  run_op(op, x.device(), ins, outs,
         [=] { cpu::group_norm_backward(x.ptr<float>(), dy.ptr<float>(), N, L, C, G, gp, bp, eps, silu, dxp, dgp, dbp); },
         [=] {
           DK_CUDA_ONLY(cuda::group_norm_backward(dev(x), x.ptr<float>(), dy.ptr<float>(), N, L, C, G, gp, bp, eps, silu,
                                                  dxp, dgp, dbp));
         });
  return array_of(info.Env(), {dx, dg, db});
}

// layerNormBackward(dy, x [..., C], gamma | null, eps, needInput, needGamma, needBeta) -> [dx, dgamma, dbeta]
Napi::Value LayerNormBackward(const Napi::CallbackInfo& info) {
  const char* op = "layerNormBackward";
  Tensor dy = f32_arg(info, 0, op, "dy");
  Tensor x = f32_arg(info, 1, op, "input");
  check_rank(op, "input", x, 1, 8);
  const int64_t C = x.shape.back(), rows = C ? x.numel() / C : 0;
  auto gamma = opt_f32_arg(info, 2, op, "gamma");
  if (gamma) expect_shape(op, "gamma", *gamma, {C});
  same_device(op, "dy", x, dy);
  if (gamma) same_device(op, "gamma", x, *gamma);
  float eps = static_cast<float>(number_arg(info, 3, op, "eps"));
  bool need_x = bool_arg(info, 4, op, "needInput");
  bool need_g = bool_arg(info, 5, op, "needGamma");
  bool need_b = bool_arg(info, 6, op, "needBeta");
  expect_shape(op, "dy", dy, x.shape);
  auto dx = maybe_new(need_x, x, x.shape);
  auto dg = maybe_new(need_g, x, {C});
  auto db = maybe_new(need_b, x, {C});
  std::vector<Tensor> ins = {dy, x}, outs;
  if (gamma) ins.push_back(*gamma);
  for (auto* t : {&dx, &dg, &db})
    if (*t) outs.push_back(**t);
  if (outs.empty()) return array_of(info.Env(), {dx, dg, db});
  const float* gp = gamma ? gamma->ptr<float>() : nullptr;
  float *dxp = fptr(dx), *dgp = fptr(dg), *dbp = fptr(db);
  run_op(op, x.device(), ins, outs,
         [=] { cpu::layer_norm_backward(x.ptr<float>(), dy.ptr<float>(), rows, C, gp, eps, dxp, dgp, dbp); },
         [=] { DK_CUDA_ONLY(cuda::layer_norm_backward(dev(x), x.ptr<float>(), dy.ptr<float>(), rows, C, gp, eps, dxp, dgp, dbp)); });
  return array_of(info.Env(), {dx, dg, db});
}

// ---------------------------------------------------------------- attention

struct AttnArgs {
  Tensor q, k, v;
  std::optional<Tensor> mask;
  cpu::AttentionParams p{};
};

// Reads (q, k, v, heads, scale, causal, mask) starting at argument `i0`, as attention() does.
AttnArgs attention_args(const Napi::CallbackInfo& info, size_t i0, const char* op) {
  AttnArgs a;
  a.q = tensor_arg(info, i0, op, "q");
  a.k = tensor_arg(info, i0 + 1, op, "k");
  a.v = tensor_arg(info, i0 + 2, op, "v");
  int64_t heads = int_arg(info, i0 + 3, op, "heads");
  float scale = static_cast<float>(number_arg(info, i0 + 4, op, "scale"));
  bool causal = bool_arg(info, i0 + 5, op, "causal");
  std::optional<Tensor> mask = opt_tensor_arg(info, i0 + 6, op, "mask");
  Tensor* qkv[3] = {&a.q, &a.k, &a.v};
  const char* names[3] = {"q", "k", "v"};
  for (int i = 0; i < 3; i++) {
    Tensor* t = qkv[i];
    const char* name = names[i];
    grad_f32(op, name, *t);
    if (i > 0) check_same(op, name, a.q, *t);
    check_rank(op, name, *t, 3, 3);
    if (t->strides[2] != 1 && t->shape[2] > 1) *t = contiguous(*t);
  }
  const int64_t B = a.q.shape[0], Nq = a.q.shape[1], Nk = a.k.shape[1];
  if (a.k.shape[0] != B || a.v.shape[0] != B) throw_range(std::string(op) + ": q, k, v must have the same batch size");
  if (a.v.shape[1] != Nk) throw_range(std::string(op) + ": k and v must have the same number of tokens");
  if (heads < 1 || a.q.shape[2] % heads || a.v.shape[2] % heads)
    throw_range(std::string(op) + ": heads (" + std::to_string(heads) + ") must divide the channels of q and v");
  if (a.k.shape[2] != a.q.shape[2]) throw_range(std::string(op) + ": q and k must have the same channels");
  cpu::AttentionParams& p = a.p;
  p.B = B; p.Nq = Nq; p.Nk = Nk; p.heads = heads; p.D = a.q.shape[2] / heads; p.Dv = a.v.shape[2] / heads;
  p.scale = scale;
  p.causal = causal;
  p.q_batch = a.q.strides[0]; p.q_row = a.q.strides[1];
  p.k_batch = a.k.strides[0]; p.k_row = a.k.strides[1];
  p.v_batch = a.v.strides[0]; p.v_row = a.v.strides[1];
  p.o_batch = Nq * heads * p.Dv; p.o_row = heads * p.Dv;
  if (mask) {
    grad_f32(op, "mask", *mask);
    check_same(op, "mask", a.q, *mask);
    Tensor m = contiguous(*mask);
    if (m.ndim() < 1 || m.ndim() > 4) throw_range(std::string(op) + ": mask must have 1 to 4 dims, broadcastable to [B, heads, Nq, Nk]");
    Shape full = {B, heads, Nq, Nk};
    int64_t st[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < m.ndim(); i++) {
      int64_t fd = 4 - m.ndim() + i;
      if (m.shape[i] != 1 && m.shape[i] != full[fd])
        throw_range(std::string(op) + ": mask shape " + shape_str(m.shape) + " does not broadcast to " + shape_str(full));
      st[fd] = m.shape[i] == 1 ? 0 : m.strides[i];
    }
    if (st[3] != 1 && Nk > 1) throw_range(std::string(op) + ": mask must span all Nk keys in its last dim");
    p.mask = m.ptr<float>();
    p.mask_b = st[0]; p.mask_h = st[1]; p.mask_q = st[2];
    a.mask = m;
  }
  return a;
}

// attentionForward(q, k, v, heads, scale, causal, mask | null) -> [out [B,Nq,H*Dv], lse [B,H,Nq]]
Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  const char* op = "attentionForward";
  AttnArgs a = attention_args(info, 0, op);
  const cpu::AttentionParams p = a.p;
  Tensor out = new_like(a.q, {p.B, p.Nq, p.heads * p.Dv});
  Tensor lse = new_like(a.q, {p.B, p.heads, p.Nq});
  std::vector<Tensor> ins = {a.q, a.k, a.v};
  if (a.mask) ins.push_back(*a.mask);
  Tensor q = a.q, k = a.k, v = a.v;
  run_op(op, q.device(), ins, {out, lse},
         [=] { cpu::attention_forward_lse(p, q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), out.ptr<float>(), lse.ptr<float>()); },
         [=] {
           DK_CUDA_ONLY(cuda::attention_forward_lse(q.device().index, p, q.ptr<float>(), k.ptr<float>(), v.ptr<float>(),
                                                    out.ptr<float>(), lse.ptr<float>()));
         });
  return array_of(info.Env(), {out, lse});
}

// attentionBackward(dout, out, lse, q, k, v, heads, scale, causal, mask | null) -> [dq, dk, dv] (contiguous)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  const char* op = "attentionBackward";
  Tensor dout = f32_arg(info, 0, op, "dout");
  Tensor out = f32_arg(info, 1, op, "out");
  Tensor lse = f32_arg(info, 2, op, "lse");
  AttnArgs a = attention_args(info, 3, op);
  const cpu::AttentionParams p = a.p;
  check_same(op, "dout", a.q, dout);
  check_same(op, "out", a.q, out);
  check_same(op, "lse", a.q, lse);
  expect_shape(op, "out", out, {p.B, p.Nq, p.heads * p.Dv});
  expect_shape(op, "dout", dout, {p.B, p.Nq, p.heads * p.Dv});
  expect_shape(op, "lse", lse, {p.B, p.heads, p.Nq});
  Tensor dq = new_like(a.q, {p.B, p.Nq, p.heads * p.D});
  Tensor dk = new_like(a.q, {p.B, p.Nk, p.heads * p.D});
  Tensor dv = new_like(a.q, {p.B, p.Nk, p.heads * p.Dv});
  std::vector<Tensor> ins = {dout, out, lse, a.q, a.k, a.v};
  if (a.mask) ins.push_back(*a.mask);
  Tensor q = a.q, k = a.k, v = a.v;
  run_op(op, q.device(), ins, {dq, dk, dv},
         [=] {
           cpu::attention_backward(p, q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), out.ptr<float>(), lse.ptr<float>(),
                                   dout.ptr<float>(), dq.ptr<float>(), dk.ptr<float>(), dv.ptr<float>());
         },
         [=] {
           DK_CUDA_ONLY(cuda::attention_backward(q.device().index, p, q.ptr<float>(), k.ptr<float>(), v.ptr<float>(),
                                                 out.ptr<float>(), lse.ptr<float>(), dout.ptr<float>(), dq.ptr<float>(),
                                                 dk.ptr<float>(), dv.ptr<float>()));
         });
  return array_of(info.Env(), {dq, dk, dv});
}

// ---------------------------------------------------------------- elementwise

// unaryBackward(op, x, dy) -> dx
Napi::Value UnaryBackward(const Napi::CallbackInfo& info) {
  const char* op = "unaryBackward";
  UnaryOp uop = static_cast<UnaryOp>(parse_name(string_arg(info, 0, op, "op"), kUnaryNames, op, "op"));
  Tensor x = f32_arg(info, 1, op, "input");
  Tensor dy = f32_arg(info, 2, op, "dy");
  expect_shape(op, "dy", dy, x.shape);
  same_device(op, "dy", x, dy);
  Tensor dx = new_like(x, x.shape);
  run_op(op, x.device(), {x, dy}, {dx}, [=] { cpu::unary_backward(uop, x.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), x.numel()); },
         [=] { DK_CUDA_ONLY(cuda::unary_backward(dev(x), uop, x.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), x.numel())); });
  return NativeTensor::Wrap(info.Env(), dx);
}

// binaryBackward(op, a, b, dy, which) -> gradient of a (which 0) or b (1) over the broadcast
// output shape (the caller sums it down to the operand's shape).
Napi::Value BinaryBackward(const Napi::CallbackInfo& info) {
  const char* op = "binaryBackward";
  BinaryOp bop = static_cast<BinaryOp>(parse_name(string_arg(info, 0, op, "op"), kBinaryNames, op, "op"));
  const Tensor& a = tensor_arg(info, 1, op, "a");
  const Tensor& b = tensor_arg(info, 2, op, "b");
  Tensor dy = f32_arg(info, 3, op, "dy");
  int64_t which = int_arg(info, 4, op, "which");
  grad_f32(op, "a", a);
  grad_f32(op, "b", b);
  if (which != 0 && which != 1) throw_range("binaryBackward: which must be 0 or 1");
  const int64_t nd = std::max(a.ndim(), b.ndim());
  Shape shape(nd), sa(nd), sb(nd);
  for (int64_t i = 0; i < nd; i++) {
    int64_t ia = i - (nd - a.ndim()), ib = i - (nd - b.ndim());
    int64_t da = ia >= 0 ? a.shape[ia] : 1, db = ib >= 0 ? b.shape[ib] : 1;
    if (da != db && da != 1 && db != 1)
      throw_range("binaryBackward: shapes " + shape_str(a.shape) + " and " + shape_str(b.shape) + " cannot be broadcast together");
    shape[i] = (da == 0 || db == 0) ? 0 : std::max(da, db);
    sa[i] = (ia >= 0 && da != 1) ? a.strides[ia] : 0;
    sb[i] = (ib >= 0 && db != 1) ? b.strides[ib] : 0;
  }
  expect_shape(op, "dy", dy, shape);
  same_device(op, "a", dy, a);
  same_device(op, "b", dy, b);
  Tensor out = new_like(dy, shape);
  Tensor ta = a, tb = b;
  run_op(op, dy.device(), {a, b, dy}, {out},
         [=] {
           cpu::binary_backward(bop, static_cast<int>(which), static_cast<int>(nd), shape.data(), ta.ptr<float>(), sa.data(),
                                tb.ptr<float>(), sb.data(), dy.ptr<float>(), out.ptr<float>());
         },
         [=] {
           DK_CUDA_ONLY(cuda::binary_backward(dev(dy), bop, static_cast<int>(which), static_cast<int>(nd), shape.data(),
                                              ta.ptr<float>(), sa.data(), tb.ptr<float>(), sb.data(), dy.ptr<float>(),
                                              out.ptr<float>()));
         });
  return NativeTensor::Wrap(info.Env(), out);
}

// binaryScalarBackward(op, a, scalar, scalarFirst, dy) -> da
Napi::Value BinaryScalarBackward(const Napi::CallbackInfo& info) {
  const char* op = "binaryScalarBackward";
  BinaryOp bop = static_cast<BinaryOp>(parse_name(string_arg(info, 0, op, "op"), kBinaryNames, op, "op"));
  Tensor a = f32_arg(info, 1, op, "a");
  float s = static_cast<float>(number_arg(info, 2, op, "scalar"));
  bool first = bool_arg(info, 3, op, "scalarFirst");
  Tensor dy = f32_arg(info, 4, op, "dy");
  expect_shape(op, "dy", dy, a.shape);
  same_device(op, "dy", a, dy);
  Tensor dx = new_like(a, a.shape);
  run_op(op, a.device(), {a, dy}, {dx},
         [=] { cpu::binary_scalar_backward(bop, a.ptr<float>(), s, first, dy.ptr<float>(), dx.ptr<float>(), a.numel()); },
         [=] {
           DK_CUDA_ONLY(cuda::binary_scalar_backward(dev(a), bop, a.ptr<float>(), s, first, dy.ptr<float>(), dx.ptr<float>(),
                                                     a.numel()));
         });
  return NativeTensor::Wrap(info.Env(), dx);
}

// clampBackward(x, min, max, dy) -> dx
Napi::Value ClampBackward(const Napi::CallbackInfo& info) {
  const char* op = "clampBackward";
  Tensor x = f32_arg(info, 0, op, "input");
  float lo = static_cast<float>(number_arg(info, 1, op, "min"));
  float hi = static_cast<float>(number_arg(info, 2, op, "max"));
  Tensor dy = f32_arg(info, 3, op, "dy");
  expect_shape(op, "dy", dy, x.shape);
  same_device(op, "dy", x, dy);
  Tensor dx = new_like(x, x.shape);
  run_op(op, x.device(), {x, dy}, {dx}, [=] { cpu::clamp_backward(x.ptr<float>(), lo, hi, dy.ptr<float>(), dx.ptr<float>(), x.numel()); },
         [=] { DK_CUDA_ONLY(cuda::clamp_backward(dev(x), x.ptr<float>(), lo, hi, dy.ptr<float>(), dx.ptr<float>(), x.numel())); });
  return NativeTensor::Wrap(info.Env(), dx);
}

// gegluBackward(x [..., 2C], dy [..., C]) -> dx [..., 2C]
Napi::Value GegluBackward(const Napi::CallbackInfo& info) {
  const char* op = "gegluBackward";
  Tensor x = f32_arg(info, 0, op, "input");
  Tensor dy = f32_arg(info, 1, op, "dy");
  check_rank(op, "input", x, 1, 8);
  const int64_t last = x.shape.back();
  if (last % 2) throw_range("gegluBackward: last dim must be even, got " + std::to_string(last));
  Shape half = x.shape;
  half.back() = last / 2;
  expect_shape(op, "dy", dy, half);
  same_device(op, "dy", x, dy);
  const int64_t rows = last ? x.numel() / last : 0, C = last / 2;
  Tensor dx = new_like(x, x.shape);
  run_op(op, x.device(), {x, dy}, {dx}, [=] { cpu::geglu_backward(x.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), rows, C); },
         [=] { DK_CUDA_ONLY(cuda::geglu_backward(dev(x), x.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), rows, C)); });
  return NativeTensor::Wrap(info.Env(), dx);
}

// softmaxBackward(y, dy) -> dx (softmax over the last dim)
Napi::Value SoftmaxBackward(const Napi::CallbackInfo& info) {
  const char* op = "softmaxBackward";
  Tensor y = f32_arg(info, 0, op, "output");
  Tensor dy = f32_arg(info, 1, op, "dy");
  check_rank(op, "output", y, 1, 8);
  expect_shape(op, "dy", dy, y.shape);
  same_device(op, "dy", y, dy);
  const int64_t C = y.shape.back(), rows = C ? y.numel() / C : 0;
  Tensor dx = new_like(y, y.shape);
  run_op(op, y.device(), {y, dy}, {dx}, [=] { cpu::softmax_backward(y.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), rows, C); },
         [=] { DK_CUDA_ONLY(cuda::softmax_backward(dev(y), y.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), rows, C)); });
  return NativeTensor::Wrap(info.Env(), dx);
}

// maxBackward(x, y, dy, dim) -> dx; y/dy hold the max over `dim` (kept or dropped: same data)
Napi::Value MaxBackward(const Napi::CallbackInfo& info) {
  const char* op = "maxBackward";
  Tensor x = f32_arg(info, 0, op, "input");
  Tensor y = f32_arg(info, 1, op, "output");
  Tensor dy = f32_arg(info, 2, op, "dy");
  int64_t dim = normalize_dim(op, int_arg(info, 3, op, "dim"), x.ndim());
  int64_t outer = 1, inner = 1, n = x.shape[dim];
  for (int64_t d = 0; d < dim; d++) outer *= x.shape[d];
  for (int64_t d = dim + 1; d < x.ndim(); d++) inner *= x.shape[d];
  if (y.numel() != outer * inner || dy.numel() != outer * inner)
    throw_range("maxBackward: output and dy must hold " + std::to_string(outer * inner) + " values");
  same_device(op, "output", x, y);
  same_device(op, "dy", x, dy);
  Tensor dx = new_like(x, x.shape);
  run_op(op, x.device(), {x, y, dy}, {dx},
         [=] { cpu::max_backward(x.ptr<float>(), y.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), outer, n, inner); },
         [=] {
           DK_CUDA_ONLY(cuda::max_backward(dev(x), x.ptr<float>(), y.ptr<float>(), dy.ptr<float>(), dx.ptr<float>(), outer, n,
                                           inner));
         });
  return NativeTensor::Wrap(info.Env(), dx);
}

// upsampleNearest2xBackward(dy [N,2H,2W,C]) -> dx [N,H,W,C]
Napi::Value UpsampleNearest2xBackward(const Napi::CallbackInfo& info) {
  const char* op = "upsampleNearest2xBackward";
  Tensor dy = f32_arg(info, 0, op, "dy");
  check_rank(op, "dy", dy, 4, 4);
  if (dy.shape[1] % 2 || dy.shape[2] % 2) throw_range("upsampleNearest2xBackward: dy height and width must be even, got " + shape_str(dy.shape));
  const int64_t N = dy.shape[0], H = dy.shape[1] / 2, W = dy.shape[2] / 2, C = dy.shape[3];
  Tensor dx = new_like(dy, {N, H, W, C});
  run_op(op, dy.device(), {dy}, {dx}, [=] { cpu::upsample_nearest2x_backward(dy.ptr<float>(), dx.ptr<float>(), N, H, W, C); },
         [=] { DK_CUDA_ONLY(cuda::upsample_nearest2x_backward(dev(dy), dy.ptr<float>(), dx.ptr<float>(), N, H, W, C)); });
  return NativeTensor::Wrap(info.Env(), dx);
}

// embeddingBackward(ids int32|int64 [...], dy [..., D], rows V) -> dtable [V, D]
// ids on the cpu (checked on the host, then copied to dy's GPU when dy is on one; this is what
// autograd saves from embedding(), whose ids are cpu ids) or on dy's device (a GPU: checked on
// the device before the scatter; that check waits for the GPU). A bad id fails the output with
// a RangeError, synchronously when the ids are already on the host.
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBackward";
  Tensor ids = contiguous(tensor_arg(info, 0, op, "ids"));
  Tensor dy = f32_arg(info, 1, op, "dy");
  int64_t V = int_arg(info, 2, op, "rows");
  if (ids.dtype != DType::I32 && ids.dtype != DType::I64) throw_type("embeddingBackward: ids must be int32 or int64, got " + std::string(dtype_name(ids.dtype)));
  if (!ids.device().is_cpu() && ids.device() != dy.device())
    throw_type("embeddingBackward: ids must be on cpu or on dy's device (" + dy.device().str() + "), got " + ids.device().str());
  if (V < 1) throw_range("embeddingBackward: rows must be >= 1");
  const int64_t n = ids.numel();
  Shape want = ids.shape;
  if (dy.ndim() != ids.ndim() + 1) throw_range("embeddingBackward: dy must have the ids' shape plus a feature dim, got " + shape_str(dy.shape));
  const int64_t D = dy.shape.back();
  want.push_back(D);
  expect_shape(op, "dy", dy, want);
  const bool is64 = ids.dtype == DType::I64;
  auto bad = [V](int64_t id, int64_t i) {
    throw_range("embeddingBackward: id " + std::to_string(id) + " at position " + std::to_string(i) +
                " is outside the table of " + std::to_string(V) + " rows");
  };
  auto check_host = [ids, is64, n, V, bad]() {  // ids on the cpu
    for (int64_t i = 0; i < n; i++) {
      int64_t id = is64 ? ids.ptr<int64_t>()[i] : ids.ptr<int32_t>()[i];
      if (id < 0 || id >= V) bad(id, i);
    }
  };
  // Ids written at creation are checked now (a synchronous RangeError); ids computed by queued
  // ops are checked when the op runs.
  if (ids.device().is_cpu() && ids.storage->host_ready) check_host();
  Tensor out = new_like(dy, {V, D});
  if (dy.device().is_cpu()) {
    run_op(op, dy.device(), {ids, dy}, {out},
           [=] {
             check_host();
             cpu::embedding_backward(ids.data(), is64, n, dy.ptr<float>(), D, V, out.ptr<float>());
           },
           nullptr);
    return NativeTensor::Wrap(info.Env(), out);
  }
  Tensor dev_ids = ids;
  if (ids.device().is_cpu()) {  // stage the checked host ids on dy's device, in queue order
    dev_ids = empty_tensor(ids.shape, ids.dtype, dy.device());
    auto wait = wait_for_queue(ids.device());
    enqueue(dy.device(), op, {ids}, {dev_ids}, [=] {
      wait();
      check_host();
      DK_CUDA_ONLY(cuda::copy_h2d(dev_ids.device().index, dev_ids.data(), ids.data(), ids.nbytes()));
    });
  }
  [[maybe_unused]] const bool check_device = !ids.device().is_cpu();
  run_op(op, dy.device(), {dev_ids, dy}, {out}, nullptr, [=] {
    DK_CUDA_ONLY({
      if (check_device) {
        int64_t id = 0;
        const int64_t pos = cuda::embedding_first_bad_id(dev(dy), dev_ids.data(), is64, n, V, &id);
        if (pos >= 0) bad(id, pos);
      }
      cuda::embedding_backward(dev(dy), dev_ids.data(), is64, n, dy.ptr<float>(), D, V, out.ptr<float>());
    });
  });
  return NativeTensor::Wrap(info.Env(), out);
}

// sliceBackward(dy, inputShape, dim, start, step) -> dx [inputShape], zero outside the slice
Napi::Value SliceBackward(const Napi::CallbackInfo& info) {
  const char* op = "sliceBackward";
  Tensor dy = f32_arg(info, 0, op, "dy");
  Shape shape = shape_arg(info, 1, op, "inputShape");
  if (static_cast<int64_t>(shape.size()) != dy.ndim()) throw_range("sliceBackward: inputShape must have dy's rank");
  int64_t dim = normalize_dim(op, int_arg(info, 2, op, "dim"), dy.ndim());
  int64_t start = int_arg(info, 3, op, "start"), step = int_arg(info, 4, op, "step");
  const int64_t count = dy.shape[dim], size = shape[dim];
  if (step < 1 || start < 0 || (count > 0 && start + (count - 1) * step >= size))
    throw_range("sliceBackward: the slice does not fit dim " + std::to_string(dim) + " of " + shape_str(shape));
  for (int64_t d = 0; d < dy.ndim(); d++)
    if (d != dim && dy.shape[d] != shape[d]) throw_range("sliceBackward: dy " + shape_str(dy.shape) + " does not match " + shape_str(shape) + " outside dim " + std::to_string(dim));
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; d++) outer *= shape[d];
  for (int64_t d = dim + 1; d < dy.ndim(); d++) inner *= shape[d];
  Tensor dx = new_like(dy, shape);
  run_op(op, dy.device(), {dy}, {dx}, [=] { cpu::slice_backward(dy.ptr<float>(), dx.ptr<float>(), outer, size, count, inner, start, step); },
         [=] { DK_CUDA_ONLY(cuda::slice_backward(dev(dy), dy.ptr<float>(), dx.ptr<float>(), outer, size, count, inner, start, step)); });
  return NativeTensor::Wrap(info.Env(), dx);
}

// broadcastTo(x, shape) -> a contiguous copy of x expanded to `shape` (numpy rules)
Napi::Value BroadcastTo(const Napi::CallbackInfo& info) {
  const char* op = "broadcastTo";
  const Tensor& x = tensor_arg(info, 0, op, "input");
  Shape shape = shape_arg(info, 1, op, "shape");
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (x.ndim() > nd) throw_range("broadcastTo: cannot broadcast " + shape_str(x.shape) + " to " + shape_str(shape));
  Shape strides(nd, 0);
  for (int64_t i = 0; i < nd; i++) {
    int64_t ix = i - (nd - x.ndim());
    if (ix < 0) continue;
    if (x.shape[ix] == shape[i]) strides[i] = x.strides[ix];
    else if (x.shape[ix] != 1) throw_range("broadcastTo: cannot broadcast " + shape_str(x.shape) + " to " + shape_str(shape));
  }
  Tensor out = new_like(x, shape);
  const size_t elem = dtype_size(x.dtype);
  Tensor src = x;
  run_op(op, x.device(), {x}, {out},
         [=] { cpu::strided_copy(static_cast<int>(nd), shape.data(), src.data(), strides.data(), elem, out.data()); },
         [=] { DK_CUDA_ONLY(cuda::strided_copy(out.device().index, static_cast<int>(nd), shape.data(), src.data(), strides.data(), elem, out.data())); });
  return NativeTensor::Wrap(info.Env(), out);
}

// clone(x) -> a new contiguous tensor with x's values (never shares storage)
Napi::Value Clone(const Napi::CallbackInfo& info) {
  const char* op = "clone";
  const Tensor& x = tensor_arg(info, 0, op, "input");
  Tensor out = new_like(x, x.shape);
  const int nd = static_cast<int>(x.ndim());
  const size_t elem = dtype_size(x.dtype);
  Tensor src = x;
  run_op(op, x.device(), {x}, {out},
         [=] { cpu::strided_copy(nd, src.shape.data(), src.data(), src.strides.data(), elem, out.data()); },
         [=] { DK_CUDA_ONLY(cuda::strided_copy(out.device().index, nd, src.shape.data(), src.data(), src.strides.data(), elem, out.data())); });
  return NativeTensor::Wrap(info.Env(), out);
}

// ---------------------------------------------------------------- optimiser (in place)

// addInPlace(dst, src): dst += src (gradient accumulation)
Napi::Value AddInPlace(const Napi::CallbackInfo& info) {
  const char* op = "addInPlace";
  const Tensor& dst = tensor_arg(info, 0, op, "dst");
  Tensor src = f32_arg(info, 1, op, "src");
  check_inplace(op, "dst", dst);
  expect_shape(op, "src", src, dst.shape);
  same_device(op, "src", dst, src);
  Tensor d = dst;
  run_op(op, d.device(), {d, src}, {d}, [=] { cpu::add_inplace(d.ptr<float>(), src.ptr<float>(), d.numel()); },
         [=] { DK_CUDA_ONLY(cuda::add_inplace(dev(d), d.ptr<float>(), src.ptr<float>(), d.numel())); });
  return info.Env().Undefined();
}

// copyInPlace(dst, src): dst <- src (EMA weights swapped into a model)
Napi::Value CopyInPlace(const Napi::CallbackInfo& info) {
  const char* op = "copyInPlace";
  const Tensor& dst = tensor_arg(info, 0, op, "dst");
  Tensor src = f32_arg(info, 1, op, "src");
  check_inplace(op, "dst", dst);
  expect_shape(op, "src", src, dst.shape);
  same_device(op, "src", dst, src);
  Tensor d = dst;
  [[maybe_unused]] const int64_t bytes = static_cast<int64_t>(d.nbytes());
  // on a GPU: one row of a stream-ordered 2-D copy (copy_d2d would wait for the device)
  run_op(op, d.device(), {d, src}, {d}, [=] { std::memcpy(d.data(), src.data(), d.nbytes()); },
         [=] { DK_CUDA_ONLY(cuda::copy_2d(dev(d), d.data(), bytes, src.data(), bytes, bytes, 1)); });
  return info.Env().Undefined();
}

std::vector<Tensor> inplace_list(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  std::vector<Tensor> ts = tensor_list_arg(info, i, op, name);
  for (const Tensor& t : ts) check_inplace(op, name, t);
  return ts;
}

void same_shapes(const char* op, const char* name, const std::vector<Tensor>& ref, const std::vector<Tensor>& ts) {
  if (ts.size() != ref.size())
    throw_range(std::string(op) + ": " + name + " must list " + std::to_string(ref.size()) + " tensors, got " + std::to_string(ts.size()));
  for (size_t k = 0; k < ts.size(); k++)
    if (ts[k].shape != ref[k].shape)
      throw_range(std::string(op) + ": " + name + "[" + std::to_string(k) + "] has shape " + shape_str(ts[k].shape) +
                  ", expected " + shape_str(ref[k].shape));
}

// adamwStep(params[], grads[], expAvgs[], expAvgSqs[], lr, beta1, beta2, eps, weightDecay, step):
// one AdamW step on every tensor, in place on params and both moments.
Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  const char* op = "adamwStep";
  std::vector<Tensor> ps = inplace_list(info, 0, op, "params");
  std::vector<Tensor> gs = tensor_list_arg(info, 1, op, "grads");
  std::vector<Tensor> ms = inplace_list(info, 2, op, "expAvgs");
  std::vector<Tensor> vs = inplace_list(info, 3, op, "expAvgSqs");
  same_shapes(op, "grads", ps, gs);
  same_shapes(op, "expAvgs", ps, ms);
  same_shapes(op, "expAvgSqs", ps, vs);
  for (Tensor& g : gs) {
    grad_f32(op, "grads", g);
    g = contiguous(g);
  }
  const double lr = number_arg(info, 4, op, "lr"), b1 = number_arg(info, 5, op, "beta1"), b2 = number_arg(info, 6, op, "beta2");
  const double eps = number_arg(info, 7, op, "eps"), wd = number_arg(info, 8, op, "weightDecay");
  const int64_t step = int_arg(info, 9, op, "step");
  if (!(lr >= 0)) throw_range("adamwStep: lr must be >= 0");
  if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) throw_range("adamwStep: betas must be in [0, 1)");
  if (!(eps >= 0) || !(wd >= 0)) throw_range("adamwStep: eps and weightDecay must be >= 0");
  if (step < 1) throw_range("adamwStep: step must be >= 1 (the count after this update)");
  cpu::AdamWScalars s;
  s.decay = static_cast<float>(1.0 - lr * wd);
  s.beta1 = static_cast<float>(b1);
  s.one_minus_beta1 = static_cast<float>(1.0 - b1);
  s.beta2 = static_cast<float>(b2);
  s.one_minus_beta2 = static_cast<float>(1.0 - b2);
  s.sqrt_bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(b2, static_cast<double>(step))));
  s.eps = static_cast<float>(eps);
  s.neg_step_size = static_cast<float>(-lr / (1.0 - std::pow(b1, static_cast<double>(step))));
  std::vector<Tensor> ins = gs, outs;
  for (auto* list : {&ps, &ms, &vs}) outs.insert(outs.end(), list->begin(), list->end());
  if (outs.empty()) return info.Env().Undefined();
  same_device(op, "params", ps[0], ps);
  same_device(op, "grads", ps[0], gs);
  same_device(op, "expAvgs", ps[0], ms);
  same_device(op, "expAvgSqs", ps[0], vs);
  run_op(op, ps[0].device(), ins, outs,
         [=] {
           for (size_t k = 0; k < ps.size(); k++)
             cpu::adamw_step(ps[k].ptr<float>(), gs[k].ptr<float>(), ms[k].ptr<float>(), vs[k].ptr<float>(), ps[k].numel(), s);
         },
         [=] {
           DK_CUDA_ONLY(for (size_t k = 0; k < ps.size(); k++) cuda::adamw_step(
               dev(ps[k]), ps[k].ptr<float>(), gs[k].ptr<float>(), ms[k].ptr<float>(), vs[k].ptr<float>(), ps[k].numel(), s));
         });
  return info.Env().Undefined();
}

// emaUpdate(shadows[], params[], decay): shadow <- shadow - (1 - decay) * (shadow - param)
Napi::Value EmaUpdate(const Napi::CallbackInfo& info) {
  const char* op = "emaUpdate";
  std::vector<Tensor> ss = inplace_list(info, 0, op, "shadows");
  std::vector<Tensor> ps = tensor_list_arg(info, 1, op, "params");
  same_shapes(op, "params", ss, ps);
  for (Tensor& p : ps) {
    grad_f32(op, "params", p);
    p = contiguous(p);
  }
  const double decay = number_arg(info, 2, op, "decay");
  if (!(decay >= 0 && decay <= 1)) throw_range("emaUpdate: decay must be in [0, 1]");
  const float omd = static_cast<float>(1.0 - decay);
  if (ss.empty()) return info.Env().Undefined();
  same_device(op, "shadows", ss[0], ss);
  same_device(op, "params", ss[0], ps);
  run_op(op, ss[0].device(), ps, ss,
         [=] {
           for (size_t k = 0; k < ss.size(); k++) cpu::ema_update(ss[k].ptr<float>(), ps[k].ptr<float>(), ss[k].numel(), omd);
         },
         [=] {
           DK_CUDA_ONLY(for (size_t k = 0; k < ss.size(); k++)
                            cuda::ema_update(dev(ss[k]), ss[k].ptr<float>(), ps[k].ptr<float>(), ss[k].numel(), omd));
         });
  return info.Env().Undefined();
}

std::vector<Tensor> f32_list(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  std::vector<Tensor> ts = tensor_list_arg(info, i, op, name);
  for (Tensor& t : ts) {
    grad_f32(op, name, t);
    t = contiguous(t);
  }
  return ts;
}

// gradNorms(tensors[]) -> float32 [n]: the L2 norm of each (accumulated in double)
Napi::Value GradNorms(const Napi::CallbackInfo& info) {
  const char* op = "gradNorms";
  std::vector<Tensor> ts = f32_list(info, 0, op, "tensors");
  if (!ts.empty()) same_device(op, "tensors", ts[0], ts);
  // on the tensors' device (cpu for an empty list): reading it back is the caller's choice
  Tensor out = empty_tensor({static_cast<int64_t>(ts.size())}, DType::F32, ts.empty() ? Device{} : ts[0].device());
  run_op(op, out.device(), ts, {out},
         [=] {
           for (size_t k = 0; k < ts.size(); k++)
             out.ptr<float>()[k] = static_cast<float>(std::sqrt(cpu::sum_squares(ts[k].ptr<float>(), ts[k].numel())));
         },
         [=] {
           std::vector<const float*> xs;
           std::vector<int64_t> ns;
           for (const Tensor& t : ts) {
             xs.push_back(t.ptr<float>());
             ns.push_back(t.numel());
           }
           DK_CUDA_ONLY(cuda::l2_norms(dev(out), xs.data(), ns.data(), static_cast<int>(xs.size()), out.ptr<float>()));
         });
  return NativeTensor::Wrap(info.Env(), out);
}

// clipGradNorm(grads[], maxNorm) -> float32 [1], the total norm before clipping, as
// torch.nn.utils.clip_grad_norm_: total = ||(||g_i||)_i||, coef = min(maxNorm / (total + 1e-6), 1)
// in float32, and every gradient is multiplied by coef in place.
Napi::Value ClipGradNorm(const Napi::CallbackInfo& info) {
  const char* op = "clipGradNorm";
  std::vector<Tensor> gs = inplace_list(info, 0, op, "grads");
  const double max_norm = number_arg(info, 1, op, "maxNorm");
  if (!(max_norm > 0)) throw_range("clipGradNorm: maxNorm must be > 0");
  if (!gs.empty()) same_device(op, "grads", gs[0], gs);
  // on the gradients' device: the coefficient never leaves it (no host round trip)
  Tensor total = empty_tensor({1}, DType::F32, gs.empty() ? Device{} : gs[0].device());
  std::vector<Tensor> outs = gs;
  outs.push_back(total);
  const float maxf = static_cast<float>(max_norm);
  run_op(op, total.device(), gs, outs,
         [=] {
           double sq = 0;
           for (const Tensor& g : gs) {
             const float n = static_cast<float>(std::sqrt(cpu::sum_squares(g.ptr<float>(), g.numel())));
             sq += static_cast<double>(n) * n;
           }
           const float tn = static_cast<float>(std::sqrt(sq));
           total.ptr<float>()[0] = tn;
           float coef = maxf / (tn + 1e-6f);
           if (coef > 1.f) coef = 1.f;
           for (const Tensor& g : gs) cpu::scale_inplace(g.ptr<float>(), g.numel(), coef);
         },
         [=] {
           std::vector<float*> ptrs;
           std::vector<int64_t> ns;
           for (const Tensor& g : gs) {
             ptrs.push_back(g.ptr<float>());
             ns.push_back(g.numel());
           }
           DK_CUDA_ONLY(cuda::clip_grad_norm(dev(total), ptrs.data(), ns.data(), static_cast<int>(ptrs.size()), maxf,
                                             total.ptr<float>()));
         });
  return NativeTensor::Wrap(info.Env(), total);
}

// scaleInPlace(tensors[], s): every tensor *= s
Napi::Value ScaleInPlace(const Napi::CallbackInfo& info) {
  const char* op = "scaleInPlace";
  std::vector<Tensor> ts = inplace_list(info, 0, op, "tensors");
  const float s = static_cast<float>(number_arg(info, 1, op, "scale"));
  if (ts.empty()) return info.Env().Undefined();
  same_device(op, "tensors", ts[0], ts);
  run_op(op, ts[0].device(), ts, ts,
         [=] {
           for (const Tensor& t : ts) cpu::scale_inplace(t.ptr<float>(), t.numel(), s);
         },
         [=] {
           DK_CUDA_ONLY(for (const Tensor& t : ts) cuda::scale_inplace(dev(t), t.ptr<float>(), t.numel(), s));
         });
  return info.Env().Undefined();
}

}  // namespace

void register_grad_ops(Napi::Env env, Napi::Object exports) {
  DK_EXPORT(exports, "conv2dBackward", Conv2dBackward);
  DK_EXPORT(exports, "groupNormBackward", GroupNormBackward);
  DK_EXPORT(exports, "layerNormBackward", LayerNormBackward);
  DK_EXPORT(exports, "attentionForward", AttentionForward);
  DK_EXPORT(exports, "attentionBackward", AttentionBackward);
  DK_EXPORT(exports, "unaryBackward", UnaryBackward);
  DK_EXPORT(exports, "binaryBackward", BinaryBackward);
  DK_EXPORT(exports, "binaryScalarBackward", BinaryScalarBackward);
  DK_EXPORT(exports, "clampBackward", ClampBackward);
  DK_EXPORT(exports, "gegluBackward", GegluBackward);
  DK_EXPORT(exports, "softmaxBackward", SoftmaxBackward);
  DK_EXPORT(exports, "maxBackward", MaxBackward);
  DK_EXPORT(exports, "upsampleNearest2xBackward", UpsampleNearest2xBackward);
  DK_EXPORT(exports, "embeddingBackward", EmbeddingBackward);
  DK_EXPORT(exports, "sliceBackward", SliceBackward);
  DK_EXPORT(exports, "broadcastTo", BroadcastTo);
  DK_EXPORT(exports, "clone", Clone);
  DK_EXPORT(exports, "addInPlace", AddInPlace);
  DK_EXPORT(exports, "copyInPlace", CopyInPlace);
  DK_EXPORT(exports, "adamwStep", AdamwStep);
  DK_EXPORT(exports, "emaUpdate", EmaUpdate);
  DK_EXPORT(exports, "gradNorms", GradNorms);
  DK_EXPORT(exports, "clipGradNorm", ClipGradNorm);
  DK_EXPORT(exports, "scaleInPlace", ScaleInPlace);
}

}  // namespace dk::binding
