// CUDA training kernels: the same contracts as native/cpu/backward.h (float32, contiguous,
// `dy` the gradient of the op's output, gradients overwritten, never accumulated), on device
// pointers, launched on the device's stream without synchronising. Workspaces come from the
// caching allocator (device_alloc/device_free, stream-ordered). Plain C++ header: g++ includes it.
#pragma once
#include <cstdint>

#include "../cpu/backward.h"

namespace dk::cuda {

using cpu::AdamWScalars;
using cpu::AttentionParams;
using cpu::BinaryOp;
using cpu::Conv2dParams;
using cpu::UnaryOp;

// ---------------------------------------------------------------- conv2d_backward.cu
void conv2d_backward_input(int device, const Conv2dParams& p, const float* dy, const float* w, float* dx);
void conv2d_backward_weight(int device, const Conv2dParams& p, const float* dy, const float* x, float* dw);
// out[c] = sum over rows of x [rows, C] (bias gradients).
void column_sum(int device, const float* x, int64_t rows, int64_t C, float* out);

// ---------------------------------------------------------------- attention_backward.cu
// Forward that also writes lse [B, heads, Nq] (+inf for a row that sees no key); flash-style
// backward recomputing the probabilities from q, k and lse (no Nq x Nk buffer in memory).
void attention_forward_lse(int device, const AttentionParams& p, const float* q, const float* k, const float* v,
                           float* out, float* lse);
void attention_backward(int device, const AttentionParams& p, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv);

// ---------------------------------------------------------------- norm_backward.cu
void group_norm_backward(int device, const float* x, const float* dy, int64_t N, int64_t L, int64_t C, int64_t G,
                         const float* gamma, const float* beta, float eps, bool silu, float* dx, float* dgamma,
                         float* dbeta);
void layer_norm_backward(int device, const float* x, const float* dy, int64_t rows, int64_t C, const float* gamma,
                         float eps, float* dx, float* dgamma, float* dbeta);
void softmax_backward(int device, const float* y, const float* dy, float* dx, int64_t rows, int64_t C);

// ---------------------------------------------------------------- elementwise_backward.cu
void unary_backward(int device, UnaryOp op, const float* x, const float* dy, float* dx, int64_t n);
// Shapes and strides are host arrays (ndim <= 8), as in binary().
void binary_backward(int device, BinaryOp op, int which, int ndim, const int64_t* shape, const float* a,
                     const int64_t* sa, const float* b, const int64_t* sb, const float* dy, float* dfull);
void binary_scalar_backward(int device, BinaryOp op, const float* a, float s, bool scalar_first, const float* dy,
                            float* dx, int64_t n);
void clamp_backward(int device, const float* x, float lo, float hi, const float* dy, float* dx, int64_t n);
void geglu_backward(int device, const float* x, const float* dy, float* dx, int64_t rows, int64_t C);
void max_backward(int device, const float* x, const float* y, const float* dy, float* dx, int64_t outer, int64_t n,
                  int64_t inner);
void upsample_nearest2x_backward(int device, const float* dy, float* dx, int64_t N, int64_t H, int64_t W, int64_t C);
// ids are device pointers (int32 or int64), already validated (ids outside [0, V) are skipped,
// never written through). Deterministic (fixed summation order) up to 8192 ids, atomics beyond.
void embedding_backward(int device, const void* ids, bool ids_is_64, int64_t n, const float* dy, int64_t D, int64_t V,
                        float* dtable);
// Validation of ids that live on the device: the position of the first id outside [0, V) and
// its value in *bad_id, or -1 when all are in range. Waits for the device's stream (a host
// round trip; the binding only needs it for ids computed on the GPU).
int64_t embedding_first_bad_id(int device, const void* ids, bool ids_is_64, int64_t n, int64_t V, int64_t* bad_id);
void slice_backward(int device, const float* dy, float* dx, int64_t outer, int64_t size, int64_t count, int64_t inner,
                    int64_t start, int64_t step);

// ---------------------------------------------------------------- optim.cu
void adamw_step(int device, float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);
void ema_update(int device, float* shadow, const float* p, int64_t n, float one_minus_decay);
void add_inplace(int device, float* dst, const float* src, int64_t n);
void scale_inplace(int device, float* x, int64_t n, float s);
// out[k] = float(sqrt(sum of xs[k]^2)), accumulated in double (out: `count` floats on the device).
void l2_norms(int device, const float* const* xs, const int64_t* ns, int count, float* out);
// torch.nn.utils.clip_grad_norm_ on the device, no host round trip: total = ||(||g_k||)_k|| (as
// the CPU kernel rounds: each norm to float, the sum of their squares in double), coef =
// min(max_norm / (total + 1e-6), 1) in float32, every g_k *= coef; total written to `total` [1].
void clip_grad_norm(int device, float* const* gs, const int64_t* ns, int count, float max_norm, float* total);

}  // namespace dk::cuda
