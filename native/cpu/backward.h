// CPU kernels for training: the backward pass of every op the U-Net, VAE and text encoder use,
// the attention forward that also keeps the per-row logsumexp, and the optimiser updates.
// Same conventions as kernels.h: float32, contiguous unless strides are given, synchronous,
// multithreaded over dk::parallel_for. `dy` is always the gradient of the op's output and
// `dx`/`dw`/... the gradients written (overwritten, never accumulated) for its inputs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../core/derivatives.h"
#include "kernels.h"

namespace dk::cpu {

using deriv::exp_fast;  // shared with the CUDA kernels (core/derivatives.h)

// ---------------------------------------------------------------- conv2d_backward.cc
// dy [N,P,Q,K] -> dx [N,H,W,C]: the transposed convolution, run as a forward conv2d_nhwc of dy
// with the flipped, channel-swapped weight [C,R,S,K] (stride 1: dy padded by (R-1)*dil - pad;
// stride > 1: dy scattered into a zero buffer first).
void conv2d_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx);
// dw [K,R,S,C] = dy^T [K, N*P*Q] @ patches [N*P*Q, R*S*C]: sgemm over chunks of im2col rows
// (a 1x1 stride-1 unpadded conv needs no patches).
void conv2d_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dw);
// out[c] = sum over rows of x [rows, C] (double accumulation): bias gradients.
void column_sum(const float* x, int64_t rows, int64_t C, float* out);

// ---------------------------------------------------------------- norm_backward.cc
// Backward of group_norm (same layout and statistics; `silu` = the fused SiLU). dgamma/dbeta may
// be null (not wanted); gamma/beta null mean 1 and 0. dx may be null.
void group_norm_backward(const float* x, const float* dy, int64_t N, int64_t L, int64_t C, int64_t G,
                         const float* gamma, const float* beta, float eps, bool silu, float* dx, float* dgamma,
                         float* dbeta);
// Backward of layer_norm over rows of x [rows, C].
void layer_norm_backward(const float* x, const float* dy, int64_t rows, int64_t C, const float* gamma, float eps,
                         float* dx, float* dgamma, float* dbeta);

// ---------------------------------------------------------------- attention_backward.cc
// attention() that also writes lse [B, heads, Nq] = log sum_j exp(scale q.k_j + mask) per row
// (+inf for a row that sees no key). Same semantics as attention().
void attention_forward_lse(const AttentionParams& p, const float* q, const float* k, const float* v, float* out,
                           float* lse);
// Flash-style backward: the probabilities are recomputed per tile from q, k and lse.
// dout and out use p's o strides; dq, dk, dv are contiguous [B, N, heads*D] (dv: heads*Dv).
void attention_backward(const AttentionParams& p, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv);

// ---------------------------------------------------------------- elementwise_backward.cc
// dx = dy * f'(x) for y = f(x).
void unary_backward(UnaryOp op, const float* x, const float* dy, float* dx, int64_t n);
// For out = a op b broadcast over `shape` (a, b read with strides sa, sb as in binary()), the
// gradient of input `which` (0 = a, 1 = b) before the broadcast reduction: dfull [shape].
void binary_backward(BinaryOp op, int which, int ndim, const int64_t* shape, const float* a, const int64_t* sa,
                     const float* b, const int64_t* sb, const float* dy, float* dfull);
// out = a op s (s op a when scalar_first): dx = dy * d out / d a.
void binary_scalar_backward(BinaryOp op, const float* a, float s, bool scalar_first, const float* dy, float* dx,
                            int64_t n);
// Passes dy where lo <= x <= hi (torch's rule), else 0.
void clamp_backward(const float* x, float lo, float hi, const float* dy, float* dx, int64_t n);
// x [rows, 2C], dy [rows, C] -> dx [rows, 2C] for out = x[:, :C] * gelu_erf(x[:, C:]).
void geglu_backward(const float* x, const float* dy, float* dx, int64_t rows, int64_t C);
// y = softmax(x) over rows of C: dx = y * (dy - sum(dy * y)).
void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t C);
// x [outer, n, inner], y = max over n [outer, inner]: dy goes to the maxima, split evenly on ties.
void max_backward(const float* x, const float* y, const float* dy, float* dx, int64_t outer, int64_t n,
                  int64_t inner);
// dy [N,2H,2W,C] -> dx [N,H,W,C]: each input pixel collects its 2x2 block.
void upsample_nearest2x_backward(const float* dy, float* dx, int64_t N, int64_t H, int64_t W, int64_t C);
// dtable [V, D] = scatter-add of dy [n, D] rows at ids (ids already validated).
void embedding_backward(const void* ids, bool ids_is_64, int64_t n, const float* dy, int64_t D, int64_t V,
                        float* dtable);
// dx viewed [outer, size, inner] = 0 except dx[o, start + i*step, :] = dy[o, i, :] (dy [outer, count, inner]).
void slice_backward(const float* dy, float* dx, int64_t outer, int64_t size, int64_t count, int64_t inner,
                    int64_t start, int64_t step);

// ---------------------------------------------------------------- optim.cc
// Every scalar is computed in double by the caller and rounded once to float (see optim.cc).
struct AdamWScalars {
  float decay;          // 1 - lr * weight_decay
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float sqrt_bc2;       // sqrt(1 - beta2^step)
  float eps;
  float neg_step_size;  // -lr / (1 - beta1^step)
};
// In place on p, m, v (n elements): torch.optim.AdamW's single-tensor step.
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);
// shadow <- shadow - one_minus_decay * (shadow - p), in place.
void ema_update(float* shadow, const float* p, int64_t n, float one_minus_decay);
// sum of x^2 in double.
double sum_squares(const float* x, int64_t n);
// x *= s in place.
void scale_inplace(float* x, int64_t n, float s);
// dst += src in place.
void add_inplace(float* dst, const float* src, int64_t n);

}  // namespace dk::cpu
