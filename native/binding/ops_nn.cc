// Neural-network ops: matmul, linear, conv2d, groupNorm, layerNorm, attention, upsample,
// embedding, timestepEmbedding.
#include <cmath>
#include <vector>

#include "../cpu/kernels.h"
#include "common.h"

namespace dk::binding {
namespace {

// A matrix operand [batch..., rows, cols] as the GEMM sees it: base pointer, leading dim,
// batch stride and whether it is stored transposed (a free transpose view is used as-is).
struct MatOperand {
  Tensor t;
  int64_t rows, cols, ld, batch, bstride;
  bool trans;
};

MatOperand mat_operand(const Tensor& in) {
  auto collapsible_batch = [](const Tensor& t, int64_t* bstride) {
    int64_t nb = t.ndim() - 2, count = 1;
    for (int64_t d = 0; d < nb; d++) count *= t.shape[d];
    if (count <= 1) { *bstride = 0; return true; }
    // batch dims must form one uniform stride
    int64_t s = -1;
    for (int64_t d = nb - 1; d >= 0; d--) {
      if (t.shape[d] == 1) continue;
      if (s < 0) { s = t.strides[d]; *bstride = s; continue; }
      int64_t expect = *bstride;
      for (int64_t e = d + 1; e < nb; e++) expect *= (t.shape[e] == 1 ? 1 : t.shape[e]);
      if (t.strides[d] != expect) return false;
    }
    return true;
  };
  MatOperand m;
  m.t = in;
  const int64_t nd = in.ndim();
  m.rows = in.shape[nd - 2];
  m.cols = in.shape[nd - 1];
  m.batch = 1;
  for (int64_t d = 0; d < nd - 2; d++) m.batch *= in.shape[d];
  int64_t bs = 0;
  bool ok = collapsible_batch(in, &bs);
  if (ok && (in.strides[nd - 1] == 1 || m.cols == 1) && in.strides[nd - 2] >= std::max<int64_t>(m.cols, 1)) {
    m.trans = false;
    m.ld = std::max<int64_t>(in.strides[nd - 2], 1);
  } else if (ok && (in.strides[nd - 2] == 1 || m.rows == 1) && in.strides[nd - 1] >= std::max<int64_t>(m.rows, 1)) {
    m.trans = true;
    m.ld = std::max<int64_t>(in.strides[nd - 1], 1);
  } else {
    m.t = contiguous(in);
    m.trans = false;
    m.ld = std::max<int64_t>(m.cols, 1);
    bs = m.rows * m.cols;
  }
  m.bstride = m.batch > 1 ? bs : 0;
  return m;
}

void launch_gemm(const char* op, const MatOperand& A, const MatOperand& B, const Tensor& C, int64_t batch,
                 int64_t M, int64_t N, int64_t K, const std::optional<Tensor>& bias, const std::optional<Tensor>& residual,
                 std::vector<Tensor> ins) {
  cpu::GemmEpilogue ep;
  if (bias) ep.bias = static_cast<const float*>(bias->data());
  if (residual) {
    ep.residual = static_cast<const float*>(residual->data());
    ep.ldr = N;
    ep.stride_residual = M * N;
  }
  cpu::GemmEpilogueBf16 ep16;  // the same tensors, read as bfloat16 bits
  ep16.bias = static_cast<const uint16_t*>(static_cast<const void*>(ep.bias));
  ep16.residual = static_cast<const uint16_t*>(static_cast<const void*>(ep.residual));
  ep16.ldr = ep.ldr;
  ep16.stride_residual = ep.stride_residual;
  const int64_t bsA = A.bstride, bsB = B.bstride;
  run_op(op, C.device(), std::move(ins), {C},
         [=] {
           if (C.dtype == DType::BF16)
             cpu::gemm_bf16(batch, A.trans, B.trans, M, N, K, 1.f, A.t.ptr<uint16_t>(), A.ld, bsA, B.t.ptr<uint16_t>(),
                            B.ld, bsB, C.ptr<uint16_t>(), N, M * N, ep16);
           else
             cpu::sgemm(batch, A.trans, B.trans, M, N, K, 1.f, A.t.ptr<float>(), A.ld, bsA, B.t.ptr<float>(), B.ld,
                        bsB, 0.f, C.ptr<float>(), N, M * N, ep);
         },
         [=] {
           DK_CUDA_ONLY(cuda::gemm(C.device().index, C.dtype, batch, A.trans, B.trans, M, N, K, 1.f, A.t.data(), A.ld,
                                   bsA, B.t.data(), B.ld, bsB, 0.f, C.data(), N, M * N, ep));
         });
}

// matmul(a [..., M, K], b [..., K, N]) -> [..., M, N]; batch dims equal, or one side unbatched.
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  const char* op = "matmul";
  const Tensor& a = tensor_arg(info, 0, op, "a");
  const Tensor& b = tensor_arg(info, 1, op, "b");
  check_compute_dtype(op, "a", a, /*cpu_bf16=*/true);
  check_same(op, "b", a, b);
  check_rank(op, "a", a, 2, 8);
  check_rank(op, "b", b, 2, 8);
  MatOperand A = mat_operand(a), B = mat_operand(b);
  if (A.cols != B.rows)
    throw_range("matmul: a " + shape_str(a.shape) + " and b " + shape_str(b.shape) + " have mismatched inner dims");
  Shape batch_shape;
  if (A.batch > 1 && B.batch > 1) {
    if (Shape(a.shape.begin(), a.shape.end() - 2) != Shape(b.shape.begin(), b.shape.end() - 2))
      throw_range("matmul: batch dims of a " + shape_str(a.shape) + " and b " + shape_str(b.shape) + " differ");
  }
  const Tensor& lead = A.batch >= B.batch ? a : b;
  batch_shape.assign(lead.shape.begin(), lead.shape.end() - 2);
  int64_t batch = std::max(A.batch, B.batch);
  Shape shape = batch_shape;
  shape.push_back(A.rows);
  shape.push_back(B.cols);
  Tensor out = new_like(a, shape);
  launch_gemm(op, A, B, out, batch, A.rows, B.cols, A.cols, std::nullopt, std::nullopt, {A.t, B.t});
  return NativeTensor::Wrap(info.Env(), out);
}

// linear(x [..., in], weight [out, in], bias [out] | null, residual [..., out] | null)
Napi::Value Linear(const Napi::CallbackInfo& info) {
  const char* op = "linear";
  Tensor x = contiguous(tensor_arg(info, 0, op, "input"));
  const Tensor& w = tensor_arg(info, 1, op, "weight");
  std::optional<Tensor> bias = opt_tensor_arg(info, 2, op, "bias");
  std::optional<Tensor> residual = opt_tensor_arg(info, 3, op, "residual");
  check_compute_dtype(op, "input", x, /*cpu_bf16=*/true);
  check_same(op, "weight", x, w);
  check_rank(op, "input", x, 1, 8);
  check_rank(op, "weight", w, 2, 2);
  const int64_t in = x.shape.back(), outF = w.shape[0];
  if (w.shape[1] != in)
    throw_range("linear: weight " + shape_str(w.shape) + " expects " + std::to_string(w.shape[1]) +
                " input features, input " + shape_str(x.shape) + " has " + std::to_string(in));
  Shape shape = x.shape;
  shape.back() = outF;
  std::vector<Tensor> ins = {x};
  if (bias) {
    check_same(op, "bias", x, *bias);
    if (bias->shape != Shape{outF}) throw_range("linear: bias must have shape [" + std::to_string(outF) + "], got " + shape_str(bias->shape));
    bias = contiguous(*bias);
    ins.push_back(*bias);
  }
  if (residual) {
    check_same(op, "residual", x, *residual);
    if (residual->shape != shape) throw_range("linear: residual must have shape " + shape_str(shape) + ", got " + shape_str(residual->shape));
    residual = contiguous(*residual);
    ins.push_back(*residual);
  }
  MatOperand A{x, in ? x.numel() / in : 0, in, std::max<int64_t>(in, 1), 1, 0, false};
  MatOperand B = mat_operand(w);  // [out, in] -> used transposed
  B.trans = !B.trans;
  std::swap(B.rows, B.cols);
  ins.push_back(B.t);
  Tensor out = new_like(x, shape);
  launch_gemm(op, A, B, out, 1, A.rows, outF, in, bias, residual, ins);
  return NativeTensor::Wrap(info.Env(), out);
}

// conv2d(x [N,H,W,C], w [K,R,S,C], bias [K] | null, residual [N,P,Q,K] | null, stride[2], padding[2], dilation[2])
Napi::Value Conv2d(const Napi::CallbackInfo& info) {
  const char* op = "conv2d";
  Tensor x = contiguous(tensor_arg(info, 0, op, "input"));
  Tensor w = contiguous(tensor_arg(info, 1, op, "weight"));
  std::optional<Tensor> bias = opt_tensor_arg(info, 2, op, "bias");
  std::optional<Tensor> residual = opt_tensor_arg(info, 3, op, "residual");
  std::vector<int64_t> stride = int_list_arg(info, 4, op, "stride");
  std::vector<int64_t> pad = int_list_arg(info, 5, op, "padding");
  std::vector<int64_t> dil = int_list_arg(info, 6, op, "dilation");
  check_compute_dtype(op, "input", x, /*cpu_bf16=*/true);
  check_same(op, "weight", x, w);
  check_rank(op, "input", x, 4, 4);
  check_rank(op, "weight", w, 4, 4);
  if (stride.size() != 2 || pad.size() != 2 || dil.size() != 2) throw_range("conv2d: stride, padding and dilation need 2 values each");
  if (stride[0] < 1 || stride[1] < 1 || dil[0] < 1 || dil[1] < 1 || pad[0] < 0 || pad[1] < 0)
    throw_range("conv2d: stride and dilation must be >= 1 and padding >= 0");
  cpu::Conv2dParams p{};
  p.N = x.shape[0]; p.H = x.shape[1]; p.W = x.shape[2]; p.C = x.shape[3];
  p.K = w.shape[0]; p.R = w.shape[1]; p.S = w.shape[2];
  if (w.shape[3] != p.C)
    throw_range("conv2d: weight " + shape_str(w.shape) + " (OHWI) expects " + std::to_string(w.shape[3]) +
                " input channels, input " + shape_str(x.shape) + " (NHWC) has " + std::to_string(p.C));
  p.stride_h = stride[0]; p.stride_w = stride[1]; p.pad_h = pad[0]; p.pad_w = pad[1]; p.dil_h = dil[0]; p.dil_w = dil[1];
  if (info.Length() > 7 && !info[7].IsUndefined()) {  // algo request: "auto" | "direct" | "winograd"
    if (!info[7].IsString()) throw_type("conv2d: algo must be \"auto\", \"direct\" or \"winograd\"");
    const std::string a = info[7].As<Napi::String>().Utf8Value();
    if (a == "auto") p.algo = 0;
    else if (a == "direct") p.algo = 1;
    else if (a == "winograd") p.algo = 2;
    else throw_range("conv2d: algo must be \"auto\", \"direct\" or \"winograd\", got \"" + a + "\"");
  }
  int64_t eff_r = dil[0] * (p.R - 1) + 1, eff_s = dil[1] * (p.S - 1) + 1;
  if (p.H + 2 * p.pad_h < eff_r || p.W + 2 * p.pad_w < eff_s)
    throw_range("conv2d: kernel " + std::to_string(p.R) + "x" + std::to_string(p.S) + " is larger than the padded input " + shape_str(x.shape));
  p.P = (p.H + 2 * p.pad_h - eff_r) / p.stride_h + 1;
  p.Q = (p.W + 2 * p.pad_w - eff_s) / p.stride_w + 1;
  Shape shape = {p.N, p.P, p.Q, p.K};
  std::vector<Tensor> ins = {x, w};
  if (bias) {
    check_same(op, "bias", x, *bias);
    if (bias->shape != Shape{p.K}) throw_range("conv2d: bias must have shape [" + std::to_string(p.K) + "], got " + shape_str(bias->shape));
    bias = contiguous(*bias);
    ins.push_back(*bias);
  }
  if (residual) {
    check_same(op, "residual", x, *residual);
    if (residual->shape != shape) throw_range("conv2d: residual must have shape " + shape_str(shape) + ", got " + shape_str(residual->shape));
    residual = contiguous(*residual);
    ins.push_back(*residual);
  }
  Tensor out = new_like(x, shape);
  const void* bp = bias ? bias->data() : nullptr;
  const void* rp = residual ? residual->data() : nullptr;
  run_op(op, x.device(), ins, {out},
         [=] {
           if (x.dtype == DType::BF16)
             cpu::conv2d_nhwc_bf16(p, x.ptr<uint16_t>(), w.ptr<uint16_t>(), static_cast<const uint16_t*>(bp),
                                   static_cast<const uint16_t*>(rp), out.ptr<uint16_t>());
           else
             cpu::conv2d_nhwc(p, x.ptr<float>(), w.ptr<float>(), static_cast<const float*>(bp),
                              static_cast<const float*>(rp), out.ptr<float>());
         },
         [=] { DK_CUDA_ONLY(cuda::conv2d_nhwc(x.device().index, x.dtype, p, x.data(), w.data(), bp, rp, out.data())); });
  return NativeTensor::Wrap(info.Env(), out);
}

std::optional<Tensor> affine_param(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name,
                                   const Tensor& x, int64_t C) {
  std::optional<Tensor> t = opt_tensor_arg(info, i, op, name);
  if (!t) return t;
  check_same(op, name, x, *t);
  if (t->shape != Shape{C}) throw_range(std::string(op) + ": " + name + " must have shape [" + std::to_string(C) + "], got " + shape_str(t->shape));
  return contiguous(*t);
}

// groupNorm(x [N, ..., C], groups, gamma | null, beta | null, eps, silu)
Napi::Value GroupNorm(const Napi::CallbackInfo& info) {
  const char* op = "groupNorm";
  Tensor x = contiguous(tensor_arg(info, 0, op, "input"));
  check_compute_dtype(op, "input", x, true);
  check_rank(op, "input", x, 2, 8);
  int64_t G = int_arg(info, 1, op, "groups");
  const int64_t N = x.shape[0], C = x.shape.back(), L = (N && C) ? x.numel() / (N * C) : 0;
  if (G < 1 || C % G) throw_range("groupNorm: groups (" + std::to_string(G) + ") must divide the channels (" + std::to_string(C) + ")");
  auto gamma = affine_param(info, 2, op, "gamma", x, C);
  auto beta = affine_param(info, 3, op, "beta", x, C);
  float eps = static_cast<float>(number_arg(info, 4, op, "eps"));
  bool silu = bool_arg(info, 5, op, "silu");
  if (!(eps >= 0)) throw_range("groupNorm: eps must be >= 0");
  Tensor out = new_like(x, x.shape);
  std::vector<Tensor> ins = {x};
  if (gamma) ins.push_back(*gamma);
  if (beta) ins.push_back(*beta);
  const void* gp = gamma ? gamma->data() : nullptr;
  const void* bp = beta ? beta->data() : nullptr;
  run_op(op, x.device(), ins, {out},
         [=] {
           if (x.dtype == DType::BF16)
             cpu::group_norm(x.ptr<cpu::bf16>(), out.ptr<cpu::bf16>(), N, L, C, G, static_cast<const cpu::bf16*>(gp), static_cast<const cpu::bf16*>(bp), eps, silu);
           else
             cpu::group_norm(x.ptr<float>(), out.ptr<float>(), N, L, C, G, static_cast<const float*>(gp), static_cast<const float*>(bp), eps, silu);
         },
         [=] { DK_CUDA_ONLY(cuda::group_norm(x.device().index, x.dtype, x.data(), out.data(), N, L, C, G, gp, bp, eps, silu)); });
  return NativeTensor::Wrap(info.Env(), out);
}

// layerNorm(x [..., C], gamma | null, beta | null, eps)
Napi::Value LayerNorm(const Napi::CallbackInfo& info) {
  const char* op = "layerNorm";
  Tensor x = contiguous(tensor_arg(info, 0, op, "input"));
  check_compute_dtype(op, "input", x, true);
  check_rank(op, "input", x, 1, 8);
  const int64_t C = x.shape.back(), rows = C ? x.numel() / C : 0;
  auto gamma = affine_param(info, 1, op, "gamma", x, C);
  auto beta = affine_param(info, 2, op, "beta", x, C);
  float eps = static_cast<float>(number_arg(info, 3, op, "eps"));
  if (!(eps >= 0)) throw_range("layerNorm: eps must be >= 0");
  Tensor out = new_like(x, x.shape);
  std::vector<Tensor> ins = {x};
  if (gamma) ins.push_back(*gamma);
  if (beta) ins.push_back(*beta);
  const void* gp = gamma ? gamma->data() : nullptr;
  const void* bp = beta ? beta->data() : nullptr;
  run_op(op, x.device(), ins, {out},
         [=] {
           if (x.dtype == DType::BF16)
             cpu::layer_norm(x.ptr<cpu::bf16>(), out.ptr<cpu::bf16>(), rows, C, static_cast<const cpu::bf16*>(gp), static_cast<const cpu::bf16*>(bp), eps);
           else
             cpu::layer_norm(x.ptr<float>(), out.ptr<float>(), rows, C, static_cast<const float*>(gp), static_cast<const float*>(bp), eps);
         },
         [=] { DK_CUDA_ONLY(cuda::layer_norm(x.device().index, x.dtype, x.data(), out.data(), rows, C, gp, bp, eps)); });
  return NativeTensor::Wrap(info.Env(), out);
}

// attention(q [B,Nq,H*D], k [B,Nk,H*D], v [B,Nk,H*Dv], heads, scale, causal, mask | null)
// q/k/v may be views whose last dim is contiguous (e.g. slices of a fused projection).
Napi::Value Attention(const Napi::CallbackInfo& info) {
  const char* op = "attention";
  Tensor q = tensor_arg(info, 0, op, "q");
  Tensor k = tensor_arg(info, 1, op, "k");
  Tensor v = tensor_arg(info, 2, op, "v");
  int64_t heads = int_arg(info, 3, op, "heads");
  float scale = static_cast<float>(number_arg(info, 4, op, "scale"));
  bool causal = bool_arg(info, 5, op, "causal");
  std::optional<Tensor> mask = opt_tensor_arg(info, 6, op, "mask");
  check_compute_dtype(op, "q", q, true);
  check_same(op, "k", q, k);
  check_same(op, "v", q, v);
  check_rank(op, "q", q, 3, 3);
  check_rank(op, "k", k, 3, 3);
  check_rank(op, "v", v, 3, 3);
  for (Tensor* t : {&q, &k, &v})
    if (t->strides[2] != 1 && t->shape[2] > 1) *t = contiguous(*t);
  const int64_t B = q.shape[0], Nq = q.shape[1], Nk = k.shape[1];
  if (k.shape[0] != B || v.shape[0] != B) throw_range("attention: q, k, v must have the same batch size");
  if (v.shape[1] != Nk) throw_range("attention: k and v must have the same number of tokens");
  if (heads < 1 || q.shape[2] % heads || v.shape[2] % heads)
    throw_range("attention: heads (" + std::to_string(heads) + ") must divide the channels of q and v");
  if (k.shape[2] != q.shape[2]) throw_range("attention: q and k must have the same channels");
  cpu::AttentionParams p{};
  p.B = B; p.Nq = Nq; p.Nk = Nk; p.heads = heads; p.D = q.shape[2] / heads; p.Dv = v.shape[2] / heads;
  if (p.D > 1024 || p.Dv > 1024) throw_range("attention: head size must be <= 1024");
  p.scale = scale;
  p.causal = causal;
  p.q_batch = q.strides[0]; p.q_row = q.strides[1];
  p.k_batch = k.strides[0]; p.k_row = k.strides[1];
  p.v_batch = v.strides[0]; p.v_row = v.strides[1];
  p.o_batch = Nq * heads * p.Dv; p.o_row = heads * p.Dv;
  std::vector<Tensor> ins = {q, k, v};
  if (mask) {
    if (mask->dtype != DType::F32 || mask->device() != q.device())
      throw_type("attention: mask must be float32 on " + q.device().str());
    Tensor m = contiguous(*mask);
    if (m.ndim() < 1 || m.ndim() > 4) throw_range("attention: mask must have 1 to 4 dims, broadcastable to [B, heads, Nq, Nk]");
    Shape full = {B, heads, Nq, Nk};
    int64_t strides[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < m.ndim(); i++) {
      int64_t fd = 4 - m.ndim() + i;
      if (m.shape[i] != 1 && m.shape[i] != full[fd])
        throw_range("attention: mask shape " + shape_str(m.shape) + " does not broadcast to " + shape_str(full));
      strides[fd] = m.shape[i] == 1 ? 0 : m.strides[i];
    }
    if (strides[3] != 1) throw_range("attention: mask must span all Nk keys in its last dim");
    p.mask = m.ptr<float>();
    p.mask_b = strides[0]; p.mask_h = strides[1]; p.mask_q = strides[2];
    ins.push_back(m);
  }
  Tensor out = new_like(q, {B, Nq, heads * p.Dv});
  run_op(op, q.device(), ins, {out},
         [=] {
           if (q.dtype == DType::BF16)
             cpu::attention(p, q.ptr<cpu::bf16>(), k.ptr<cpu::bf16>(), v.ptr<cpu::bf16>(), out.ptr<cpu::bf16>());
           else
             cpu::attention(p, q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), out.ptr<float>());
         },
         [=] { DK_CUDA_ONLY(cuda::attention(q.device().index, q.dtype, p, q.data(), k.data(), v.data(), out.data())); });
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value UpsampleNearest2x(const Napi::CallbackInfo& info) {
  const char* op = "upsampleNearest2x";
  Tensor x = contiguous(tensor_arg(info, 0, op, "input"));
  check_compute_dtype(op, "input", x, true);
  check_rank(op, "input", x, 4, 4);
  const int64_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3];
  Tensor out = new_like(x, {N, 2 * H, 2 * W, C});
  run_op(op, x.device(), {x}, {out},
         [=] {
           if (x.dtype == DType::BF16) cpu::upsample_nearest2x_nhwc(x.ptr<cpu::bf16>(), out.ptr<cpu::bf16>(), N, H, W, C);
           else cpu::upsample_nearest2x_nhwc(x.ptr<float>(), out.ptr<float>(), N, H, W, C);
         },
         [=] { DK_CUDA_ONLY(cuda::upsample_nearest2x_nhwc(x.device().index, x.dtype, x.data(), out.data(), N, H, W, C)); });
  return NativeTensor::Wrap(info.Env(), out);
}

// embedding(ids int32|int64 [...], table [V, D]) -> [..., D]. Ids are validated here, which
// reads them on the host: ids are small and usually come straight from the tokenizer.
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  const char* op = "embedding";
  Tensor ids = contiguous(tensor_arg(info, 0, op, "ids"));
  Tensor table = contiguous(tensor_arg(info, 1, op, "table"));
  check_compute_dtype(op, "table", table, true);
  check_rank(op, "table", table, 2, 2);
  if (ids.dtype != DType::I32 && ids.dtype != DType::I64) throw_type("embedding: ids must be int32 or int64, got " + std::string(dtype_name(ids.dtype)));
  if (!ids.device().is_cpu()) throw_type("embedding: ids must be on cpu (they are checked against the vocabulary)");
  const int64_t V = table.shape[0], D = table.shape[1], n = ids.numel();
  const bool is64 = ids.dtype == DType::I64;
  auto check_ids = [ids, is64, n, V]() {
    for (int64_t i = 0; i < n; i++) {
      int64_t id = is64 ? ids.ptr<int64_t>()[i] : ids.ptr<int32_t>()[i];
      if (id < 0 || id >= V)
        throw_range("embedding: id " + std::to_string(id) + " at position " + std::to_string(i) +
                    " is outside the table of " + std::to_string(V) + " rows");
    }
  };
  // Ids written at creation are checked now (a synchronous RangeError); ids computed by queued
  // ops are checked when the op runs, and a bad one fails the output (read-back rejects).
  if (ids.storage->host_ready) check_ids();
  Shape shape = ids.shape;
  shape.push_back(D);
  Tensor out = new_like(table, shape);
  if (table.device().is_cpu()) {
    run_op(op, table.device(), {ids, table}, {out}, [=] {
      check_ids();
      if (table.dtype == DType::BF16) cpu::embedding(ids.data(), is64, n, table.ptr<cpu::bf16>(), D, out.ptr<cpu::bf16>());
      else cpu::embedding(ids.data(), is64, n, table.ptr<float>(), D, out.ptr<float>());
    }, nullptr);
  } else {
    Tensor dev_ids = empty_tensor(ids.shape, ids.dtype, table.device());
    auto wait = wait_for_queue(ids.device());
    enqueue(table.device(), op, {ids}, {dev_ids}, [=] { wait(); check_ids(); DK_CUDA_ONLY(cuda::copy_h2d(dev_ids.device().index, dev_ids.data(), ids.data(), ids.nbytes())); });
    run_op(op, table.device(), {dev_ids, table}, {out}, nullptr,
           [=] { DK_CUDA_ONLY(cuda::embedding(table.device().index, table.dtype, dev_ids.data(), is64, n, table.data(), D, out.data())); });
  }
  return NativeTensor::Wrap(info.Env(), out);
}

// timestepEmbedding(t float32 [B], dim, flipSinToCos, downscaleFreqShift, scale, maxPeriod) -> float32 [B, dim]
Napi::Value TimestepEmbedding(const Napi::CallbackInfo& info) {
  const char* op = "timestepEmbedding";
  Tensor t = contiguous(tensor_arg(info, 0, op, "timesteps"));
  // bfloat16 timesteps (CPU) give a bfloat16 embedding; the sinusoids are computed in float32.
  if (t.dtype != DType::F32 && !(t.dtype == DType::BF16 && t.device().is_cpu()))
    throw_type("timestepEmbedding: timesteps must be float32" + std::string(t.device().is_cpu() ? " or bfloat16" : "") +
               ", got " + dtype_name(t.dtype));
  check_rank(op, "timesteps", t, 1, 1);
  int64_t dim = int_arg(info, 1, op, "dim");
  if (dim < 1 || dim > 65536) throw_range("timestepEmbedding: dim must be in [1, 65536]");
  bool flip = bool_arg(info, 2, op, "flipSinToCos");
  float shift = static_cast<float>(number_arg(info, 3, op, "downscaleFreqShift"));
  float scale = static_cast<float>(number_arg(info, 4, op, "scale"));
  float max_period = static_cast<float>(number_arg(info, 5, op, "maxPeriod"));
  if (dim / 2 > 0 && static_cast<float>(dim / 2) == shift) throw_range("timestepEmbedding: dim/2 must differ from downscaleFreqShift");
  const int64_t B = t.shape[0];
  Tensor out = new_like(t, {B, dim});
  run_op(op, t.device(), {t}, {out},
         [=] {
           if (t.dtype == DType::BF16) {
             std::vector<float> tf(static_cast<size_t>(B));
             cpu::widen_bf16(t.ptr<cpu::bf16>(), tf.data(), B);
             cpu::timestep_embedding(tf.data(), B, dim, flip, shift, scale, max_period, out.ptr<cpu::bf16>());
           } else {
             cpu::timestep_embedding(t.ptr<float>(), B, dim, flip, shift, scale, max_period, out.ptr<float>());
           }
         },
         [=] { DK_CUDA_ONLY(cuda::timestep_embedding(t.device().index, DType::F32, t.ptr<float>(), B, dim, flip, shift, scale, max_period, out.data())); });
  return NativeTensor::Wrap(info.Env(), out);
}

}  // namespace

void register_nn_ops(Napi::Env env, Napi::Object exports) {
  DK_EXPORT(exports, "matmul", Matmul);
  DK_EXPORT(exports, "linear", Linear);
  DK_EXPORT(exports, "conv2d", Conv2d);
  DK_EXPORT(exports, "groupNorm", GroupNorm);
  DK_EXPORT(exports, "layerNorm", LayerNorm);
  DK_EXPORT(exports, "attention", Attention);
  DK_EXPORT(exports, "upsampleNearest2x", UpsampleNearest2x);
  DK_EXPORT(exports, "embedding", Embedding);
  DK_EXPORT(exports, "timestepEmbedding", TimestepEmbedding);
}

}  // namespace dk::binding
