// Elementwise ops on device (contracts: native/cpu/kernels.h, elementwise.cc). Storage is
// float32/float16/bfloat16, math is float32. Contiguous operands move 16 bytes per access
// when every pointer is 16-byte aligned; `binary` collapses its N-d broadcast to the fewest
// dims and keeps 16-byte accesses when the innermost dim allows it.
#include <cmath>
#include <type_traits>

#include "kernel_util.cuh"
#include "kernels.h"

namespace dk::cuda {
namespace ew {

using ku::from_f;
using ku::Pack;
using ku::to_f;

constexpr int kThreads = 256;

__device__ __forceinline__ float nan_or(float a, float b, float r) { return (isnan(a) || isnan(b)) ? a + b : r; }

template <BinaryOp OP> __device__ __forceinline__ float bop(float a, float b) {
  if constexpr (OP == BinaryOp::Add) return a + b;
  else if constexpr (OP == BinaryOp::Sub) return a - b;
  else if constexpr (OP == BinaryOp::Mul) return a * b;
  else if constexpr (OP == BinaryOp::Div) return a / b;
  else if constexpr (OP == BinaryOp::Pow) return powf(a, b);
  else if constexpr (OP == BinaryOp::Maximum) return nan_or(a, b, fmaxf(a, b));  // NaN propagates
  else return nan_or(a, b, fminf(a, b));
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

template <UnaryOp OP> __device__ __forceinline__ float uop(float x) {
  if constexpr (OP == UnaryOp::Neg) return -x;
  else if constexpr (OP == UnaryOp::Exp) return expf(x);
  else if constexpr (OP == UnaryOp::Log) return logf(x);
  else if constexpr (OP == UnaryOp::Sqrt) return sqrtf(x);
  else if constexpr (OP == UnaryOp::Rsqrt) return 1.0f / sqrtf(x);
  else if constexpr (OP == UnaryOp::Abs) return fabsf(x);
  else if constexpr (OP == UnaryOp::Sigmoid) return sigmoidf(x);
  else if constexpr (OP == UnaryOp::Tanh) return tanhf(x);
  else if constexpr (OP == UnaryOp::Silu) return x / (1.0f + expf(-x));
  else if constexpr (OP == UnaryOp::Gelu) return gelu_erf(x);
  else if constexpr (OP == UnaryOp::GeluTanh) {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
  } else if constexpr (OP == UnaryOp::QuickGelu) return x / (1.0f + expf(-1.702f * x));
  else if constexpr (OP == UnaryOp::Square) return x * x;
  else if constexpr (OP == UnaryOp::Sin) return sinf(x);
  else if constexpr (OP == UnaryOp::Cos) return cosf(x);
  else return 1.0f / x;
}

// ---------------------------------------------------------------- flat (contiguous) maps
template <typename T, int NIN> struct Ins {
  const T* p[NIN > 0 ? NIN : 1];
};

// out[i] = f(in0[i], ..., in{NIN-1}[i]); VEC elements per access (16 bytes, or 1).
template <int VEC, int NIN, typename T, typename F>
__global__ void __launch_bounds__(kThreads) flat_map(F f, Ins<T, NIN> in, T* __restrict__ out, int64_t n) {
  const int64_t tid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t nv = n / VEC;
  for (int64_t i = tid; i < nv; i += nthreads) {
    float x[NIN > 0 ? NIN : 1][VEC];
#pragma unroll
    for (int k = 0; k < NIN; k++) {
      if constexpr (VEC > 1) {
        Pack<T> pk = ku::load_pack(in.p[k] + i * VEC);
#pragma unroll
        for (int e = 0; e < VEC; e++) x[k][e] = to_f(pk.v[e]);
      } else {
        x[k][0] = to_f(in.p[k][i]);
      }
    }
    if constexpr (VEC > 1) {
      Pack<T> o;
#pragma unroll
      for (int e = 0; e < VEC; e++) {
        float a[NIN > 0 ? NIN : 1];
#pragma unroll
        for (int k = 0; k < NIN; k++) a[k] = x[k][e];
        o.v[e] = from_f<T>(f(a));
      }
      ku::store_pack(out + i * VEC, o);
    } else {
      out[i] = from_f<T>(f(x[0]));
    }
  }
  if constexpr (VEC > 1) {  // the tail that does not fill a pack
    const int64_t i = nv * VEC + tid;
    if (i < n) {
      float a[NIN > 0 ? NIN : 1];
#pragma unroll
      for (int k = 0; k < NIN; k++) a[k] = to_f(in.p[k][i]);
      out[i] = from_f<T>(f(a));
    }
  }
}

template <typename T, int NIN, typename F>
void launch_flat(int device, const char* what, F f, Ins<T, NIN> in, T* out, int64_t n) {
  if (n <= 0) return;
  constexpr int V = Pack<T>::N;
  bool vec = ku::aligned16(out);
  for (int k = 0; k < NIN; k++) vec = vec && ku::aligned16(in.p[k]);
  cudaStream_t s = stream(device);
  if (vec) {
    unsigned g = ku::grid_for(n / V > 0 ? n / V : 1, kThreads, device);
    flat_map<V, NIN><<<g, kThreads, 0, s>>>(f, in, out, n);
  } else {
    unsigned g = ku::grid_for(n, kThreads, device);
    flat_map<1, NIN><<<g, kThreads, 0, s>>>(f, in, out, n);
  }
  ku::launch_check(what);
}

template <UnaryOp OP> struct UnaryF {
  __device__ float operator()(const float* x) const { return uop<OP>(x[0]); }
};
template <BinaryOp OP> struct BinaryF {
  __device__ float operator()(const float* x) const { return bop<OP>(x[0], x[1]); }
};
template <BinaryOp OP, bool FIRST> struct ScalarF {
  float s;
  __device__ float operator()(const float* x) const { return FIRST ? bop<OP>(s, x[0]) : bop<OP>(x[0], s); }
};
struct ClampF {
  float lo, hi;
  // NaN passes through (comparisons are false), as torch.clamp.
  __device__ float operator()(const float* x) const { return x[0] < lo ? lo : (x[0] > hi ? hi : x[0]); }
};
template <int NT> struct AxpbyF {
  float a, b, c;
  __device__ float operator()(const float* x) const {
    float r = a * x[0];
    if constexpr (NT >= 2) r += b * x[1];
    if constexpr (NT >= 3) r += c * x[2];
    return r;
  }
};

// ---------------------------------------------------------------- strided broadcast binary
struct BinGeo {
  int ndim;
  int64_t shape[cpu::kMaxDims];
  ku::FastDiv div[cpu::kMaxDims];
  int64_t sa[cpu::kMaxDims], sb[cpu::kMaxDims];
  int a_inner, b_inner;  // innermost stride of a / b (0 or 1 on the vector path)
};

// Output is contiguous over geo.shape. Each thread makes VEC consecutive outputs, which lie in
// one innermost row (shape[last] % VEC == 0). SMALL: the element count fits 31 bits.
template <typename T, BinaryOp OP, int VEC, bool SMALL>
__global__ void __launch_bounds__(kThreads) binary_strided(BinGeo geo, const T* __restrict__ a,
                                                           const T* __restrict__ b, T* __restrict__ out,
                                                           int64_t n) {
  const int64_t tid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = tid; v * VEC < n; v += nthreads) {
    const int64_t e = v * VEC;
    int64_t oa = 0, ob = 0;
    if constexpr (SMALL) {
      uint32_t rem = static_cast<uint32_t>(e);
      for (int d = geo.ndim - 1; d >= 0; d--) {
        uint32_t q = geo.div[d].div(rem);
        uint32_t c = rem - q * static_cast<uint32_t>(geo.shape[d]);
        oa += static_cast<int64_t>(c) * geo.sa[d];
        ob += static_cast<int64_t>(c) * geo.sb[d];
        rem = q;
      }
    } else {
      int64_t rem = e;
      for (int d = geo.ndim - 1; d >= 0; d--) {
        int64_t q = rem / geo.shape[d];
        int64_t c = rem - q * geo.shape[d];
        oa += c * geo.sa[d];
        ob += c * geo.sb[d];
        rem = q;
      }
    }
    if constexpr (VEC > 1) {
      float xa[VEC], xb[VEC];
      if (geo.a_inner) {
        Pack<T> p = ku::load_pack(a + oa);
#pragma unroll
        for (int k = 0; k < VEC; k++) xa[k] = to_f(p.v[k]);
      } else {
        float s = to_f(a[oa]);
#pragma unroll
        for (int k = 0; k < VEC; k++) xa[k] = s;
      }
      if (geo.b_inner) {
        Pack<T> p = ku::load_pack(b + ob);
#pragma unroll
        for (int k = 0; k < VEC; k++) xb[k] = to_f(p.v[k]);
      } else {
        float s = to_f(b[ob]);
#pragma unroll
        for (int k = 0; k < VEC; k++) xb[k] = s;
      }
      Pack<T> o;
#pragma unroll
      for (int k = 0; k < VEC; k++) o.v[k] = from_f<T>(bop<OP>(xa[k], xb[k]));
      ku::store_pack(out + e, o);
    } else {
      out[e] = from_f<T>(bop<OP>(to_f(a[oa]), to_f(b[ob])));
    }
  }
}

template <typename T, BinaryOp OP>
void binary_t(int device, int ndim, const int64_t* shape_in, const T* a, const int64_t* sa_in, const T* b,
              const int64_t* sb_in, T* out) {
  if (ndim < 0 || ndim > cpu::kMaxDims) throw_range("binary: rank must be 0.." + std::to_string(cpu::kMaxDims));
  int64_t shape[cpu::kMaxDims], sa[cpu::kMaxDims], sb[cpu::kMaxDims];
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    shape[d] = shape_in[d];
    sa[d] = sa_in[d];
    sb[d] = sb_in[d];
    n *= shape[d];
  }
  if (n <= 0) return;
  int64_t* strides[2] = {sa, sb};
  ndim = ku::collapse_dims(ndim, shape, strides, 2);
  const int last = ndim - 1;
  if (ndim == 1 && sa[0] == 1 && sb[0] == 1) {
    launch_flat<T, 2>(device, "binary", BinaryF<OP>(), Ins<T, 2>{{a, b}}, out, n);
    return;
  }
  BinGeo geo{};
  geo.ndim = ndim;
  for (int d = 0; d < ndim; d++) {
    geo.shape[d] = shape[d];
    geo.sa[d] = sa[d];
    geo.sb[d] = sb[d];
  }
  constexpr int V = Pack<T>::N;
  bool vec = shape[last] % V == 0 && ku::aligned16(out) && (sa[last] == 0 || sa[last] == 1) &&
             (sb[last] == 0 || sb[last] == 1);
  if (vec && sa[last] == 1) {
    vec = ku::aligned16(a);
    for (int d = 0; d < last; d++) vec = vec && sa[d] % V == 0;
  }
  if (vec && sb[last] == 1) {
    vec = vec && ku::aligned16(b);
    for (int d = 0; d < last; d++) vec = vec && sb[d] % V == 0;
  }
  geo.a_inner = sa[last] == 1;
  geo.b_inner = sb[last] == 1;
  const bool small = n < (int64_t(1) << 31);
  if (small)
    for (int d = 0; d < ndim; d++) geo.div[d] = ku::FastDiv(static_cast<uint32_t>(shape[d]));
  cudaStream_t s = stream(device);
  const int vw = vec ? V : 1;
  unsigned g = ku::grid_for(n / vw, kThreads, device);
  if (!small) {  // over 2^31 elements: 64-bit division, one element per thread
    g = ku::grid_for(n, kThreads, device);
    binary_strided<T, OP, 1, false><<<g, kThreads, 0, s>>>(geo, a, b, out, n);
  } else if (vec) {
    binary_strided<T, OP, V, true><<<g, kThreads, 0, s>>>(geo, a, b, out, n);
  } else {
    binary_strided<T, OP, 1, true><<<g, kThreads, 0, s>>>(geo, a, b, out, n);
  }
  ku::launch_check("binary");
}

// Calls fn(std::integral_constant<BinaryOp, OP>{}) with OP a compile-time BinaryOp.
template <BinaryOp OP> using BinOpC = std::integral_constant<BinaryOp, OP>;
template <typename FN> void with_binary_op(BinaryOp op, FN&& fn) {
  switch (op) {
    case BinaryOp::Add: fn(BinOpC<BinaryOp::Add>{}); break;
    case BinaryOp::Sub: fn(BinOpC<BinaryOp::Sub>{}); break;
    case BinaryOp::Mul: fn(BinOpC<BinaryOp::Mul>{}); break;
    case BinaryOp::Div: fn(BinOpC<BinaryOp::Div>{}); break;
    case BinaryOp::Pow: fn(BinOpC<BinaryOp::Pow>{}); break;
    case BinaryOp::Maximum: fn(BinOpC<BinaryOp::Maximum>{}); break;
    case BinaryOp::Minimum: fn(BinOpC<BinaryOp::Minimum>{}); break;
    default: throw_range("binary: unknown op " + std::to_string(static_cast<int>(op)));
  }
}

// ---------------------------------------------------------------- geglu
// x [rows, 2C] -> out [rows, C] = x[:, :C] * gelu_erf(x[:, C:]). VEC elements per thread.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) geglu_kernel(const T* __restrict__ x, T* __restrict__ out,
                                                         int64_t rows, int64_t C) {
  const int64_t cv = C / VEC;
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= cv) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* xr = x + r * 2 * C + col * VEC;
    T* orow = out + r * C + col * VEC;
    if constexpr (VEC > 1) {
      Pack<T> h = ku::load_pack(xr), g = ku::load_pack(xr + C), o;
#pragma unroll
      for (int k = 0; k < VEC; k++) o.v[k] = from_f<T>(to_f(h.v[k]) * gelu_erf(to_f(g.v[k])));
      ku::store_pack(orow, o);
    } else {
      orow[0] = from_f<T>(to_f(xr[0]) * gelu_erf(to_f(xr[C])));
    }
  }
}

}  // namespace ew

// ================================================================ entry points
void binary(int device, DType dt, BinaryOp op, int ndim, const int64_t* shape, const void* a, const int64_t* sa,
            const void* b, const int64_t* sb, void* out) {
  DK_DISPATCH_FLOAT(dt, "binary", ew::with_binary_op(op, [&](auto opc) {
    constexpr BinaryOp OP = decltype(opc)::value;
    ew::binary_t<T, OP>(device, ndim, shape, static_cast<const T*>(a), sa, static_cast<const T*>(b), sb,
                        static_cast<T*>(out));
  }));
}

void binary_scalar(int device, DType dt, BinaryOp op, const void* a, float s, bool scalar_first, void* out,
                   int64_t n) {
  DK_DISPATCH_FLOAT(dt, "binary_scalar", ew::with_binary_op(op, [&](auto opc) {
    constexpr BinaryOp OP = decltype(opc)::value;
    ew::Ins<T, 1> in{{static_cast<const T*>(a)}};
    if (scalar_first)
      ew::launch_flat<T, 1>(device, "binary_scalar", ew::ScalarF<OP, true>{s}, in, static_cast<T*>(out), n);
    else
      ew::launch_flat<T, 1>(device, "binary_scalar", ew::ScalarF<OP, false>{s}, in, static_cast<T*>(out), n);
  }));
}

#define DK_UNARY_CASE(NAME) \
  case UnaryOp::NAME: ew::launch_flat<T, 1>(device, "unary", ew::UnaryF<UnaryOp::NAME>(), in, o, n); break;
void unary(int device, DType dt, UnaryOp op, const void* a, void* out, int64_t n) {
  DK_DISPATCH_FLOAT(dt, "unary", {
    ew::Ins<T, 1> in{{static_cast<const T*>(a)}};
    T* o = static_cast<T*>(out);
    switch (op) {
      DK_UNARY_CASE(Neg) DK_UNARY_CASE(Exp) DK_UNARY_CASE(Log) DK_UNARY_CASE(Sqrt) DK_UNARY_CASE(Rsqrt)
      DK_UNARY_CASE(Abs) DK_UNARY_CASE(Sigmoid) DK_UNARY_CASE(Tanh) DK_UNARY_CASE(Silu) DK_UNARY_CASE(Gelu)
      DK_UNARY_CASE(GeluTanh) DK_UNARY_CASE(QuickGelu) DK_UNARY_CASE(Square) DK_UNARY_CASE(Sin)
      DK_UNARY_CASE(Cos) DK_UNARY_CASE(Reciprocal)
      default: throw_range("unary: unknown op " + std::to_string(static_cast<int>(op)));
    }
  });
}
#undef DK_UNARY_CASE

void clamp(int device, DType dt, const void* a, float lo, float hi, void* out, int64_t n) {
  DK_DISPATCH_FLOAT(dt, "clamp", {
    ew::launch_flat<T, 1>(device, "clamp", ew::ClampF{lo, hi}, ew::Ins<T, 1>{{static_cast<const T*>(a)}},
                          static_cast<T*>(out), n);
  });
}

void axpby(int device, DType dt, int64_t n, float a, const void* x, float b, const void* y, float c, const void* z,
           void* out) {
  DK_DISPATCH_FLOAT(dt, "axpby", {
    const T* px = static_cast<const T*>(x);
    const T* py = static_cast<const T*>(y);
    const T* pz = static_cast<const T*>(z);
    T* o = static_cast<T*>(out);
    if (!py && pz) {  // x and z only: shift z into the second slot
      py = pz;
      b = c;
      pz = nullptr;
    }
    if (py && pz)
      ew::launch_flat<T, 3>(device, "axpby", ew::AxpbyF<3>{a, b, c}, ew::Ins<T, 3>{{px, py, pz}}, o, n);
    else if (py)
      ew::launch_flat<T, 2>(device, "axpby", ew::AxpbyF<2>{a, b, 0.f}, ew::Ins<T, 2>{{px, py}}, o, n);
    else
      ew::launch_flat<T, 1>(device, "axpby", ew::AxpbyF<1>{a, 0.f, 0.f}, ew::Ins<T, 1>{{px}}, o, n);
  });
}

void geglu(int device, DType dt, const void* x, void* out, int64_t rows, int64_t C) {
  if (rows <= 0 || C <= 0) return;
  DK_DISPATCH_FLOAT(dt, "geglu", {
    constexpr int V = ku::Pack<T>::N;
    const T* px = static_cast<const T*>(x);
    T* po = static_cast<T*>(out);
    const bool vec = C % V == 0 && ku::aligned16(px) && ku::aligned16(po);
    const int64_t cv = vec ? C / V : C;
    dim3 grid(static_cast<unsigned>((cv + ew::kThreads - 1) / ew::kThreads),
              static_cast<unsigned>(rows < 65535 ? rows : 65535));
    if (vec) ew::geglu_kernel<T, V><<<grid, ew::kThreads, 0, stream(device)>>>(px, po, rows, C);
    else ew::geglu_kernel<T, 1><<<grid, ew::kThreads, 0, stream(device)>>>(px, po, rows, C);
    ku::launch_check("geglu");
  });
}

}  // namespace dk::cuda
