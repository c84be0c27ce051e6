// CPU kernel entry points (float32). One family per file: gemm.cc, conv2d.cc, attention.cc,
// norm.cc, elementwise.cc, ... The CUDA backend (native/cuda/kernels.h) has the same contracts.
// All kernels are synchronous and multithreaded over dk::parallel_for; the op queue calls them.
#pragma once
#include <cstdint>

namespace dk::cpu {

// ---------------------------------------------------------------- gemm.cc
// Extra terms applied to C after the product, fused so C is written once.
struct GemmEpilogue {
  const float* bias = nullptr;      // [N], added to every row
  const float* residual = nullptr;  // same M x N layout as C with leading dim ldr, added
  int64_t ldr = 0;
  int64_t stride_residual = 0;      // between batch items
};

// For b in [0, batch): C_b = alpha * op(A_b) @ op(B_b) + beta * C_b (+ epilogue).
// op(A) is M x K; A is row-major with leading dim lda, or K x M when transA.
// op(B) is K x N; B is row-major with leading dim ldb, or N x K when transB (nn.Linear's weight).
// A_b = A + b * strideA (likewise B, C); a stride of 0 broadcasts. beta == 0 never reads C.
void sgemm(int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, int64_t strideA, const float* B, int64_t ldb, int64_t strideB,
           float beta, float* C, int64_t ldc, int64_t strideC, const GemmEpilogue& ep = GemmEpilogue());

// ---------------------------------------------------------------- conv2d.cc
struct Conv2dParams {
  int64_t N, H, W, C;            // input, NHWC
  int64_t K, R, S;               // output channels, kernel height, kernel width
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t P, Q;                  // output height, width
  // This call's algorithm request (a cpu::ConvAlgo: 0 auto, 1 direct, 2 winograd); a forced
  // global setting (DIFFUSEKIT_CONV_ALGO / setConv2dAlgo) wins over it. CUDA ignores it.
  int algo = 0;
};
// x [N,H,W,C], w [K,R,S,C] (OHWI), bias [K] or null, residual [N,P,Q,K] or null -> y [N,P,Q,K].
// Zero padding. Implicit GEMM: no full im2col buffer.
void conv2d_nhwc(const Conv2dParams& p, const float* x, const float* w, const float* bias,
                 const float* residual, float* y);

// ---------------------------------------------------------------- gemm_bf16.cc / conv2d_bf16.cc
// bfloat16 operands and output (raw bits in uint16_t), float32 accumulation and epilogue; the
// result is rounded to nearest even once, on store. Uses vdpbf16ps where the CPU has AVX512_BF16
// (cpu_features().avx512_bf16); elsewhere converts to float32 and runs sgemm / conv2d_nhwc.
struct GemmEpilogueBf16 {
  const uint16_t* bias = nullptr;      // [N]
  const uint16_t* residual = nullptr;  // M x N at leading dim ldr
  int64_t ldr = 0;
  int64_t stride_residual = 0;
};
// As sgemm with beta = 0: C_b = alpha * op(A_b) @ op(B_b) (+ bias + residual), C never read.
void gemm_bf16(int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const uint16_t* A, int64_t lda, int64_t strideA, const uint16_t* B, int64_t ldb, int64_t strideB,
               uint16_t* C, int64_t ldc, int64_t strideC, const GemmEpilogueBf16& ep = GemmEpilogueBf16());
// conv2d_nhwc in bfloat16 (same layouts and contract).
void conv2d_nhwc_bf16(const Conv2dParams& p, const uint16_t* x, const uint16_t* w, const uint16_t* bias,
                      const uint16_t* residual, uint16_t* y);

// ---------------------------------------------------------------- attention.cc
struct AttentionParams {
  int64_t B, Nq, Nk, heads, D, Dv;  // D: query/key head size; Dv: value head size
  float scale;                      // usually 1/sqrt(D)
  bool causal;                      // query i sees keys j <= i (+ Nk - Nq offset)
  // Element strides. Token t, head h of item b of q starts at q + b*q_batch + t*q_row + h*D
  // (k likewise with D, v and out with Dv).
  int64_t q_batch, q_row, k_batch, k_row, v_batch, v_row, o_batch, o_row;
  // Optional additive mask (float), value for (b, h, i, j) at mask[b*mask_b + h*mask_h + i*mask_q + j];
  // a stride of 0 broadcasts.
  const float* mask = nullptr;
  int64_t mask_b = 0, mask_h = 0, mask_q = 0;
};
// out = softmax(scale * q k^T + mask) v per (b, head), computed in tiles with an online softmax:
// never materialises the Nq x Nk score matrix.
void attention(const AttentionParams& p, const float* q, const float* k, const float* v, float* out);

// ---------------------------------------------------------------- norm.cc
// x [N, L, C] channels-last; channels split into G groups of C/G consecutive channels; mean and
// variance over (L, C/G) for each (n, g), biased variance; y = (x-mean)/sqrt(var+eps)*gamma+beta,
// then SiLU when `silu`. gamma/beta [C] (may be null: 1 and 0).
void group_norm(const float* x, float* y, int64_t N, int64_t L, int64_t C, int64_t G,
                const float* gamma, const float* beta, float eps, bool silu);
// x [rows, C]: each row normalised over C, biased variance; gamma/beta [C] or null.
void layer_norm(const float* x, float* y, int64_t rows, int64_t C, const float* gamma,
                const float* beta, float eps);
// y = softmax over the last dim of x [rows, C] (max-subtracted).
void softmax_lastdim(const float* x, float* y, int64_t rows, int64_t C);

}  // namespace dk::cpu

// ---------------------------------------------------------------- shared enums
namespace dk::cpu {

constexpr int kMaxDims = 8;

enum class BinaryOp : int { Add = 0, Sub, Mul, Div, Pow, Maximum, Minimum };
enum class UnaryOp : int {
  Neg = 0, Exp, Log, Sqrt, Rsqrt, Abs, Sigmoid, Tanh, Silu, Gelu /*erf*/, GeluTanh, QuickGelu, Square,
  Sin, Cos, Reciprocal
};
enum class ReduceOp : int { Sum = 0, Mean, Max };

// ---------------------------------------------------------------- elementwise.cc
// out (contiguous, `shape`) = a op b, where a and b are read with element strides sa/sb over
// `shape` (0 = broadcast along that dim).
void binary(BinaryOp op, int ndim, const int64_t* shape, const float* a, const int64_t* sa,
            const float* b, const int64_t* sb, float* out);
// out = a op s (or s op a when scalar_first), n elements, contiguous.
void binary_scalar(BinaryOp op, const float* a, float s, bool scalar_first, float* out, int64_t n);
void unary(UnaryOp op, const float* a, float* out, int64_t n);
void clamp(const float* a, float lo, float hi, float* out, int64_t n);
// out = a*x + b*y + c*z (y, z may be null: their terms are dropped). The sampler update.
void axpby(int64_t n, float a, const float* x, float b, const float* y, float c, const float* z, float* out);
// x [rows, 2C] -> out [rows, C] = x[:, :C] * gelu_erf(x[:, C:]) (diffusers' GEGLU chunk order).
void geglu(const float* x, float* out, int64_t rows, int64_t C);

// ---------------------------------------------------------------- copy.cc
// Copies a strided view (shape, strides in elements, element size in bytes) into contiguous dst.
void strided_copy(int ndim, const int64_t* shape, const void* src, const int64_t* strides, size_t elem,
                  void* dst);
// Converts n elements between any two dtypes (given as dk::DType values cast to int).
void cast(int src_dtype, const void* src, int dst_dtype, void* dst, int64_t n);
// x [N,H,W,C] -> y [N,2H,2W,C], nearest.
void upsample_nearest2x_nhwc(const float* x, float* y, int64_t N, int64_t H, int64_t W, int64_t C);
// ids (int32 or int64 per ids_is_64) [n] -> out [n, D] rows of table [V, D]. Ids are checked
// against V before the op is enqueued.
void embedding(const void* ids, bool ids_is_64, int64_t n, const float* table, int64_t D, float* out);
// Sinusoidal timestep embedding as diffusers' get_timestep_embedding:
// exponent_i = -ln(max_period) * i / (half - shift), emb = scale * t * exp(exponent);
// out = [sin | cos] or [cos | sin] when flip_sin_to_cos; an odd dim gets a zero last column.
void timestep_embedding(const float* t, int64_t B, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                        float scale, float max_period, float* out);

// ---------------------------------------------------------------- reduce.cc
// x viewed as [outer, n, inner]; out [outer, inner] reduces the middle axis.
void reduce(ReduceOp op, const float* x, float* out, int64_t outer, int64_t n, int64_t inner);

// ---------------------------------------------------------------- random.cc
// Standard normal draws from counter-based Philox4x32-10 keyed by seed: element i uses counter
// (offset + i/4 ... ) so a tensor's values do not depend on thread count or device.
void randn_philox(uint64_t seed, uint64_t offset, float* out, int64_t n);

}  // namespace dk::cpu

namespace dk::cpu {
// ---------------------------------------------------------------- bf16 storage
// bfloat16 values as stored in a tensor (the high half of a float32). Kernels that take bf16
// convert on load, compute in float32 and round to nearest even on store.
struct bf16 {
  uint16_t bits;
};

// bf16_convert.cc: serial, vectorised conversions (callers split the work over threads).
void widen_bf16(const bf16* src, float* dst, int64_t n);
void narrow_bf16(const float* src, bf16* dst, int64_t n);  // round to nearest even, NaN stays NaN

// bfloat16 twins of the entry points above; same contracts, statistics and accumulation in float32.
void binary(BinaryOp op, int ndim, const int64_t* shape, const bf16* a, const int64_t* sa, const bf16* b,
            const int64_t* sb, bf16* out);
void binary_scalar(BinaryOp op, const bf16* a, float s, bool scalar_first, bf16* out, int64_t n);
void unary(UnaryOp op, const bf16* a, bf16* out, int64_t n);
void clamp(const bf16* a, float lo, float hi, bf16* out, int64_t n);
void axpby(int64_t n, float a, const bf16* x, float b, const bf16* y, float c, const bf16* z, bf16* out);
void geglu(const bf16* x, bf16* out, int64_t rows, int64_t C);
void group_norm(const bf16* x, bf16* y, int64_t N, int64_t L, int64_t C, int64_t G, const bf16* gamma,
                const bf16* beta, float eps, bool silu);
void layer_norm(const bf16* x, bf16* y, int64_t rows, int64_t C, const bf16* gamma, const bf16* beta, float eps);
void softmax_lastdim(const bf16* x, bf16* y, int64_t rows, int64_t C);
void reduce(ReduceOp op, const bf16* x, bf16* out, int64_t outer, int64_t n, int64_t inner);
void upsample_nearest2x_nhwc(const bf16* x, bf16* y, int64_t N, int64_t H, int64_t W, int64_t C);
void embedding(const void* ids, bool ids_is_64, int64_t n, const bf16* table, int64_t D, bf16* out);
void timestep_embedding(const float* t, int64_t B, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                        float scale, float max_period, bf16* out);
// q, k, v, out bf16 (mask float32). QK^T and PV through vdpbf16ps where the CPU has AVX512_BF16
// (P rounded to bf16), softmax statistics in float32; elsewhere widened to the float32 kernel.
void attention(const AttentionParams& p, const bf16* q, const bf16* k, const bf16* v, bf16* out);

// ---------------------------------------------------------------- copy.cc
// height rows of width_bytes each, from src (row pitch spitch bytes) to dst (pitch dpitch).
void copy_2d(void* dst, int64_t dpitch, const void* src, int64_t spitch, int64_t width_bytes, int64_t height);
}  // namespace dk::cpu
