// Copies and conversions on device (contracts: native/cpu/kernels.h, copy.cc): strided
// gather into a contiguous tensor, dtype casts, nearest 2x upsampling, embedding lookup and
// the sinusoidal timestep embedding. Data movers work on raw bytes in the widest unit
// (16/8/4/2/1 bytes) that the sizes, strides and pointer alignment allow.
#include <cmath>

#include "kernel_util.cuh"
#include "kernels.h"

namespace dk::cuda {
namespace cpy {

using ku::from_f;
using ku::to_f;

constexpr int kThreads = 256;
constexpr int kMaxRank = cpu::kMaxDims + 1;  // + the sub-element dim

template <int W> struct Unit;
template <> struct Unit<1> { using type = uint8_t; };
template <> struct Unit<2> { using type = uint16_t; };
template <> struct Unit<4> { using type = uint32_t; };
template <> struct Unit<8> { using type = uint2; };
template <> struct Unit<16> { using type = uint4; };

// Widest unit (bytes) dividing `bytes` with every pointer aligned to it.
inline int widest_unit(int64_t bytes, const void* a, const void* b) {
  for (int w = 16; w > 1; w /= 2)
    if (bytes % w == 0 && ku::aligned_to(a, w) && ku::aligned_to(b, w)) return w;
  return 1;
}

// ---------------------------------------------------------------- strided_copy
struct CopyGeo {
  int ndim;
  int64_t shape[kMaxRank];
  ku::FastDiv div[kMaxRank];
  int64_t st[kMaxRank];  // source strides in units
};

template <typename U, bool SMALL>
__global__ void __launch_bounds__(kThreads) gather_kernel(CopyGeo geo, const U* __restrict__ src,
                                                          U* __restrict__ dst, int64_t n) {
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += nthreads) {
    int64_t off = 0;
    if constexpr (SMALL) {
      uint32_t rem = static_cast<uint32_t>(e);
      for (int d = geo.ndim - 1; d >= 0; d--) {
        uint32_t q = geo.div[d].div(rem);
        off += static_cast<int64_t>(rem - q * static_cast<uint32_t>(geo.shape[d])) * geo.st[d];
        rem = q;
      }
    } else {
      int64_t rem = e;
      for (int d = geo.ndim - 1; d >= 0; d--) {
        int64_t q = rem / geo.shape[d];
        off += (rem - q * geo.shape[d]) * geo.st[d];
        rem = q;
      }
    }
    dst[e] = src[off];
  }
}

template <int W>
void launch_gather(int device, const CopyGeo& geo, const void* src, void* dst, int64_t n) {
  using U = typename Unit<W>::type;
  unsigned g = ku::grid_for(n, kThreads, device);
  cudaStream_t s = stream(device);
  if (n < (int64_t(1) << 31))
    gather_kernel<U, true><<<g, kThreads, 0, s>>>(geo, static_cast<const U*>(src), static_cast<U*>(dst), n);
  else
    gather_kernel<U, false><<<g, kThreads, 0, s>>>(geo, static_cast<const U*>(src), static_cast<U*>(dst), n);
  ku::launch_check("strided_copy");
}

// ---------------------------------------------------------------- cast
template <typename D> struct Cvt;
template <> struct Cvt<float> {
  __device__ static float f(float x) { return x; }
  __device__ static float f(__half x) { return __half2float(x); }
  __device__ static float f(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static float f(int32_t x) { return __int2float_rn(x); }
  __device__ static float f(int64_t x) { return __ll2float_rn(x); }
  __device__ static float f(uint8_t x) { return static_cast<float>(x); }
};
template <> struct Cvt<__half> {
  __device__ static __half f(float x) { return __float2half_rn(x); }
  __device__ static __half f(__half x) { return x; }
  __device__ static __half f(__nv_bfloat16 x) { return __float2half_rn(__bfloat162float(x)); }  // exact in f32
  __device__ static __half f(int32_t x) { return __int2half_rn(x); }
  __device__ static __half f(int64_t x) { return __ll2half_rn(x); }
  __device__ static __half f(uint8_t x) { return __int2half_rn(x); }
};
template <> struct Cvt<__nv_bfloat16> {
  __device__ static __nv_bfloat16 f(float x) { return __float2bfloat16_rn(x); }
  __device__ static __nv_bfloat16 f(__half x) { return __float2bfloat16_rn(__half2float(x)); }
  __device__ static __nv_bfloat16 f(__nv_bfloat16 x) { return x; }
  __device__ static __nv_bfloat16 f(int32_t x) { return __int2bfloat16_rn(x); }
  __device__ static __nv_bfloat16 f(int64_t x) { return __ll2bfloat16_rn(x); }
  __device__ static __nv_bfloat16 f(uint8_t x) { return __int2bfloat16_rn(x); }
};
// float -> integer truncates toward zero like a C cast (out-of-range values saturate here,
// where C leaves them undefined); integer -> narrower integer wraps like a C cast.
template <> struct Cvt<int32_t> {
  __device__ static int32_t f(float x) { return __float2int_rz(x); }
  __device__ static int32_t f(__half x) { return __float2int_rz(__half2float(x)); }
  __device__ static int32_t f(__nv_bfloat16 x) { return __float2int_rz(__bfloat162float(x)); }
  __device__ static int32_t f(int32_t x) { return x; }
  __device__ static int32_t f(int64_t x) { return static_cast<int32_t>(x); }
  __device__ static int32_t f(uint8_t x) { return x; }
};
template <> struct Cvt<int64_t> {
  __device__ static int64_t f(float x) { return __float2ll_rz(x); }
  __device__ static int64_t f(__half x) { return __float2ll_rz(__half2float(x)); }
  __device__ static int64_t f(__nv_bfloat16 x) { return __float2ll_rz(__bfloat162float(x)); }
  __device__ static int64_t f(int32_t x) { return x; }
  __device__ static int64_t f(int64_t x) { return x; }
  __device__ static int64_t f(uint8_t x) { return x; }
};
// float -> uint8: truncate to int32 then keep the low byte (what x86 compilers emit for a C cast).
template <> struct Cvt<uint8_t> {
  __device__ static uint8_t f(float x) { return static_cast<uint8_t>(__float2int_rz(x)); }
  __device__ static uint8_t f(__half x) { return static_cast<uint8_t>(__float2int_rz(__half2float(x))); }
  __device__ static uint8_t f(__nv_bfloat16 x) { return static_cast<uint8_t>(__float2int_rz(__bfloat162float(x))); }
  __device__ static uint8_t f(int32_t x) { return static_cast<uint8_t>(x); }
  __device__ static uint8_t f(int64_t x) { return static_cast<uint8_t>(x); }
  __device__ static uint8_t f(uint8_t x) { return x; }
};

template <typename S, typename D>
__global__ void __launch_bounds__(kThreads) cast_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = i0; i < n; i += 4 * nthreads) {
    S v[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
      if (i + k * nthreads < n) v[k] = src[i + k * nthreads];
#pragma unroll
    for (int k = 0; k < 4; k++)
      if (i + k * nthreads < n) dst[i + k * nthreads] = Cvt<D>::f(v[k]);
  }
}

template <typename FN> void with_dtype(DType t, FN&& fn) {
  switch (t) {
    case DType::F32: fn(float()); break;
    case DType::F16: fn(__half()); break;
    case DType::BF16: fn(__nv_bfloat16()); break;
    case DType::I32: fn(int32_t()); break;
    case DType::I64: fn(int64_t()); break;
    case DType::U8: fn(uint8_t()); break;
    default: throw_type("cast: unknown dtype " + std::to_string(static_cast<int>(t)));
  }
}

// ---------------------------------------------------------------- upsample / embedding
// x [N,H,W,cu] units -> y [N,2H,2W,cu]: each thread reads one unit and writes it four times.
template <typename U, bool SMALL>
__global__ void __launch_bounds__(kThreads) upsample2x_kernel(const U* __restrict__ x, U* __restrict__ y,
                                                              int64_t NH, int64_t W, int64_t cu,
                                                              ku::FastDiv div_cu, ku::FastDiv div_w) {
  const int64_t n = NH * W * cu;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += nthreads) {
    int64_t c, w, nh;  // nh = n*H + h: output rows 2*nh and 2*nh+1 of [N*2H]
    if constexpr (SMALL) {
      const uint32_t pix = div_cu.div(static_cast<uint32_t>(e));
      c = static_cast<uint32_t>(e) - pix * static_cast<uint32_t>(cu);
      const uint32_t q = div_w.div(pix);
      w = pix - q * static_cast<uint32_t>(W);
      nh = q;
    } else {
      const int64_t pix = e / cu;
      c = e - pix * cu;
      nh = pix / W;
      w = pix - nh * W;
    }
    const U v = x[e];
    U* o = y + ((2 * nh) * (2 * W) + 2 * w) * cu + c;
    o[0] = v;
    o[cu] = v;
    o[2 * W * cu] = v;
    o[2 * W * cu + cu] = v;
  }
}

// One warp per output row: out[i, :] = table[ids[i], :] in units.
template <typename U, typename I>
__global__ void __launch_bounds__(kThreads) embedding_kernel(const I* __restrict__ ids, int64_t n,
                                                             const U* __restrict__ table, int64_t du,
                                                             U* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; r < n; r += warps) {
    const U* src = table + static_cast<int64_t>(ids[r]) * du;
    U* dst = out + r * du;
    for (int64_t c = lane; c < du; c += 32) dst[c] = src[c];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) timestep_kernel(const float* __restrict__ t, int64_t B, int64_t dim,
                                                            int64_t half, bool flip, float neg_log_period,
                                                            float denom, float scale, T* __restrict__ out) {
  const int64_t n = B * dim;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += nthreads) {
    const int64_t b = e / dim, j = e % dim;
    float v = 0.f;  // odd dim: zero last column
    if (j < 2 * half) {
      const bool second = j >= half;
      const int64_t i = second ? j - half : j;
      // diffusers: exponent = -ln(max_period) * i / (half - shift); emb = scale * (t * exp(exponent))
      // exp/sin/cos in double, rounded once: the correctly rounded float results the CPU's libm
      // gives. expf/sinf (2 ulp) differ by up to ~3e-5 at t ~ 1000, since t * freq amplifies.
      const float freq = static_cast<float>(exp(static_cast<double>(neg_log_period * static_cast<float>(i) / denom)));
      const float arg = scale * (t[b] * freq);
      const bool use_cos = second != flip;  // [sin | cos], or [cos | sin] when flipped
      v = static_cast<float>(use_cos ? cos(static_cast<double>(arg)) : sin(static_cast<double>(arg)));
    }
    out[e] = from_f<T>(v);
  }
}

}  // namespace cpy

// ================================================================ entry points
void strided_copy(int device, int ndim, const int64_t* shape_in, const void* src, const int64_t* strides_in,
                  size_t elem, void* dst) {
  if (ndim < 0 || ndim > cpu::kMaxDims)
    throw_range("strided_copy: rank must be 0.." + std::to_string(cpu::kMaxDims));
  if (elem == 0) throw_range("strided_copy: element size must be positive");
  int64_t shape[cpy::kMaxRank], st[cpy::kMaxRank];
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    shape[d] = shape_in[d];
    st[d] = strides_in[d];
    n *= shape[d];
  }
  if (n <= 0) return;
  // Split each element into units of u bytes: one more (innermost, contiguous) dim.
  int u = 8;
  while (u > 1 && !(elem % u == 0 && ku::aligned_to(src, u) && ku::aligned_to(dst, u))) u /= 2;
  const int64_t sub = static_cast<int64_t>(elem) / u;
  for (int d = 0; d < ndim; d++) st[d] *= sub;
  if (sub > 1) {
    shape[ndim] = sub;
    st[ndim] = 1;
    ndim++;
  }
  int64_t* sts[1] = {st};
  ndim = ku::collapse_dims(ndim, shape, sts, 1);
  const int64_t total_bytes = n * static_cast<int64_t>(elem);
  if (ndim == 1 && st[0] == 1) {
    check(cudaMemcpyAsync(dst, src, static_cast<size_t>(total_bytes), cudaMemcpyDeviceToDevice, stream(device)),
          "strided_copy");
    return;
  }
  // Contiguous innermost run: widen the unit up to 16 bytes where sizes and alignment allow.
  const int last = ndim - 1;
  if (st[last] == 1) {
    for (int w = 16; w > u; w /= 2) {
      const int f = w / u;
      bool ok = shape[last] % f == 0 && ku::aligned_to(src, w) && ku::aligned_to(dst, w);
      for (int d = 0; d < last && ok; d++) ok = st[d] % f == 0;
      if (!ok) continue;
      shape[last] /= f;
      for (int d = 0; d < last; d++) st[d] /= f;
      u = w;
      break;
    }
  }
  cpy::CopyGeo geo{};
  geo.ndim = ndim;
  int64_t units = 1;
  for (int d = 0; d < ndim; d++) {
    geo.shape[d] = shape[d];
    geo.st[d] = st[d];
    units *= shape[d];
  }
  if (units < (int64_t(1) << 31))
    for (int d = 0; d < ndim; d++) geo.div[d] = ku::FastDiv(static_cast<uint32_t>(shape[d]));
  switch (u) {
    case 16: cpy::launch_gather<16>(device, geo, src, dst, units); break;
    case 8: cpy::launch_gather<8>(device, geo, src, dst, units); break;
    case 4: cpy::launch_gather<4>(device, geo, src, dst, units); break;
    case 2: cpy::launch_gather<2>(device, geo, src, dst, units); break;
    default: cpy::launch_gather<1>(device, geo, src, dst, units); break;
  }
}

void cast(int device, DType src_dt, const void* src, DType dst_dt, void* dst, int64_t n) {
  if (n <= 0) return;
  if (src_dt == dst_dt) {
    check(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * dtype_size(src_dt), cudaMemcpyDeviceToDevice,
                          stream(device)),
          "cast");
    return;
  }
  cpy::with_dtype(src_dt, [&](auto s) {
    using S = decltype(s);
    cpy::with_dtype(dst_dt, [&](auto d) {
      using D = decltype(d);
      unsigned g = ku::grid_for((n + 3) / 4, cpy::kThreads, device);
      cpy::cast_kernel<S, D><<<g, cpy::kThreads, 0, stream(device)>>>(static_cast<const S*>(src),
                                                                       static_cast<D*>(dst), n);
    });
  });
  ku::launch_check("cast");
}

void upsample_nearest2x_nhwc(int device, DType dt, const void* x, void* y, int64_t N, int64_t H, int64_t W,
                             int64_t C) {
  if (N <= 0 || H <= 0 || W <= 0 || C <= 0) return;
  const int64_t row_bytes = C * static_cast<int64_t>(dtype_size(dt));
  const int w = cpy::widest_unit(row_bytes, x, y);
  const int64_t cu = row_bytes / w;
  const int64_t work = N * H * W * cu;
  unsigned g = ku::grid_for(work, cpy::kThreads, device);
  cudaStream_t s = stream(device);
  const bool small = work < (int64_t(1) << 31);
  ku::FastDiv dc, dw;
  if (small) {
    dc = ku::FastDiv(static_cast<uint32_t>(cu));
    dw = ku::FastDiv(static_cast<uint32_t>(W));
  }
#define DK_UPSAMPLE(W_)                                                                                   \
  case W_: {                                                                                              \
    using U = cpy::Unit<W_>::type;                                                                        \
    if (small)                                                                                            \
      cpy::upsample2x_kernel<U, true><<<g, cpy::kThreads, 0, s>>>(static_cast<const U*>(x),               \
                                                                  static_cast<U*>(y), N * H, W, cu, dc, dw); \
    else                                                                                                  \
      cpy::upsample2x_kernel<U, false><<<g, cpy::kThreads, 0, s>>>(static_cast<const U*>(x),              \
                                                                   static_cast<U*>(y), N * H, W, cu, dc, dw); \
  } break;
  switch (w) {
    DK_UPSAMPLE(16) DK_UPSAMPLE(8) DK_UPSAMPLE(4) DK_UPSAMPLE(2) DK_UPSAMPLE(1)
  }
#undef DK_UPSAMPLE
  ku::launch_check("upsample_nearest2x_nhwc");
}

void embedding(int device, DType dt, const void* ids, bool ids_is_64, int64_t n, const void* table, int64_t D,
               void* out) {
  if (n <= 0 || D <= 0) return;
  const int64_t row_bytes = D * static_cast<int64_t>(dtype_size(dt));
  const int w = cpy::widest_unit(row_bytes, table, out);
  const int64_t du = row_bytes / w;
  const int rows_per_block = cpy::kThreads / 32;
  unsigned g = ku::grid_for(n, rows_per_block, device);
  cudaStream_t s = stream(device);
#define DK_EMBED(W_)                                                                                       \
  case W_: {                                                                                               \
    using U = cpy::Unit<W_>::type;                                                                         \
    if (ids_is_64)                                                                                         \
      cpy::embedding_kernel<U, int64_t><<<g, cpy::kThreads, 0, s>>>(                                       \
          static_cast<const int64_t*>(ids), n, static_cast<const U*>(table), du, static_cast<U*>(out));    \
    else                                                                                                   \
      cpy::embedding_kernel<U, int32_t><<<g, cpy::kThreads, 0, s>>>(                                       \
          static_cast<const int32_t*>(ids), n, static_cast<const U*>(table), du, static_cast<U*>(out));    \
  } break;
  switch (w) {
    DK_EMBED(16) DK_EMBED(8) DK_EMBED(4) DK_EMBED(2) DK_EMBED(1)
  }
#undef DK_EMBED
  ku::launch_check("embedding");
}

void timestep_embedding(int device, DType dt, const float* t, int64_t B, int64_t dim, bool flip_sin_to_cos,
                        float downscale_freq_shift, float scale, float max_period, void* out) {
  if (B <= 0 || dim <= 0) return;
  const int64_t half = dim / 2;
  // As torch computes it: the double -ln(max_period) and (half - shift) meet float32 tensors,
  // so both are rounded to float32 first.
  const float neg_log_period = static_cast<float>(-std::log(static_cast<double>(max_period)));
  const float denom = static_cast<float>(static_cast<double>(half) - static_cast<double>(downscale_freq_shift));
  unsigned g = ku::grid_for(B * dim, cpy::kThreads, device);
  DK_DISPATCH_FLOAT(dt, "timestep_embedding", {
    cpy::timestep_kernel<T><<<g, cpy::kThreads, 0, stream(device)>>>(t, B, dim, half, flip_sin_to_cos,
                                                                      neg_log_period, denom, scale,
                                                                      static_cast<T*>(out));
  });
  ku::launch_check("timestep_embedding");
}

}  // namespace dk::cuda
