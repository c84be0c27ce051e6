// Data movement kernels: strided copies, dtype casts, upsampling, embedding lookup, and the
// sinusoidal timestep embedding.
#include <cmath>
#include <cstring>
#include <vector>
#include <algorithm>

#include "../core/dtype.h"
#include "../core/half.h"
#include "../core/thread_pool.h"
#include "kernels.h"

namespace dk::cpu {
namespace {

template <typename T>
void copy_rows(int ndim, const int64_t* shape, const T* src, const int64_t* strides, T* dst) {
  const int64_t inner = shape[ndim - 1], is = strides[ndim - 1];
  int64_t rows = 1;
  for (int d = 0; d < ndim - 1; d++) rows *= shape[d];
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      int64_t rem = r, off = 0;
      for (int d = ndim - 2; d >= 0; d--) {
        off += (rem % shape[d]) * strides[d];
        rem /= shape[d];
      }
      const T* s = src + off;
      T* o = dst + r * inner;
      if (is == 1) std::memcpy(o, s, inner * sizeof(T));
      else for (int64_t i = 0; i < inner; i++) o[i] = s[i * is];
    }
  });
}

inline float load_as_float(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::I32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case DType::I64: return static_cast<float>(static_cast<const int64_t*>(p)[i]);
    case DType::U8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    default: return 0.f;
  }
}

inline double load_as_double(DType t, const void* p, int64_t i) {
  if (t == DType::I64) return static_cast<double>(static_cast<const int64_t*>(p)[i]);
  if (t == DType::I32) return static_cast<double>(static_cast<const int32_t*>(p)[i]);
  return load_as_float(t, p, i);
}

}  // namespace

void strided_copy(int ndim, const int64_t* shape, const void* src, const int64_t* strides, size_t elem, void* dst) {
  if (ndim == 0) { std::memcpy(dst, src, elem); return; }
  for (int d = 0; d < ndim; d++) if (shape[d] == 0) return;
  switch (elem) {
    case 1: copy_rows(ndim, shape, static_cast<const uint8_t*>(src), strides, static_cast<uint8_t*>(dst)); break;
    case 2: copy_rows(ndim, shape, static_cast<const uint16_t*>(src), strides, static_cast<uint16_t*>(dst)); break;
    case 4: copy_rows(ndim, shape, static_cast<const uint32_t*>(src), strides, static_cast<uint32_t*>(dst)); break;
    default: copy_rows(ndim, shape, static_cast<const uint64_t*>(src), strides, static_cast<uint64_t*>(dst)); break;
  }
}

void cast(int src_dtype, const void* src, int dst_dtype, void* dst, int64_t n) {
  const DType st = static_cast<DType>(src_dtype), dt = static_cast<DType>(dst_dtype);
  if (st == dt) { std::memcpy(dst, src, n * dtype_size(st)); return; }
  // The bf16 <-> f32 pair is what every bf16 pipeline does at its edges: the vector path.
  if (st == DType::BF16 && dt == DType::F32) {
    parallel_for(n, 1 << 15, [&](int64_t lo, int64_t hi) { widen_bf16(static_cast<const bf16*>(src) + lo, static_cast<float*>(dst) + lo, hi - lo); });
    return;
  }
  if (st == DType::F32 && dt == DType::BF16) {
    parallel_for(n, 1 << 15, [&](int64_t lo, int64_t hi) { narrow_bf16(static_cast<const float*>(src) + lo, static_cast<bf16*>(dst) + lo, hi - lo); });
    return;
  }
  parallel_for(n, 1 << 15, [&](int64_t lo, int64_t hi) {
    switch (dt) {
      case DType::F32: for (int64_t i = lo; i < hi; i++) static_cast<float*>(dst)[i] = load_as_float(st, src, i); break;
      case DType::F16: for (int64_t i = lo; i < hi; i++) static_cast<uint16_t*>(dst)[i] = f32_to_f16(load_as_float(st, src, i)); break;
      case DType::BF16: for (int64_t i = lo; i < hi; i++) static_cast<uint16_t*>(dst)[i] = f32_to_bf16(load_as_float(st, src, i)); break;
      // float -> int truncates toward zero (as C and torch do); out-of-range values are the caller's business
      case DType::I32: for (int64_t i = lo; i < hi; i++) static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(load_as_double(st, src, i)); break;
      case DType::I64: for (int64_t i = lo; i < hi; i++) static_cast<int64_t*>(dst)[i] = static_cast<int64_t>(load_as_double(st, src, i)); break;
      case DType::U8: for (int64_t i = lo; i < hi; i++) static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(static_cast<int64_t>(load_as_double(st, src, i))); break;
      default: break;
    }
  });
}

namespace {
template <class T>
void upsample_impl(const T* x, T* y, int64_t N, int64_t H, int64_t W, int64_t C) {
  parallel_for(N * H, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t nh = lo; nh < hi; nh++) {
      const int64_t n = nh / H, h = nh % H;
      const T* src = x + (n * H + h) * W * C;
      T* row0 = y + (n * 2 * H + 2 * h) * 2 * W * C;
      for (int64_t w = 0; w < W; w++) {
        std::memcpy(row0 + (2 * w) * C, src + w * C, C * sizeof(T));
        std::memcpy(row0 + (2 * w + 1) * C, src + w * C, C * sizeof(T));
      }
      std::memcpy(row0 + 2 * W * C, row0, 2 * W * C * sizeof(T));
    }
  });
}

template <class T>
void embedding_impl(const void* ids, bool ids_is_64, int64_t n, const T* table, int64_t D, T* out) {
  parallel_for(n, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      int64_t id = ids_is_64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
      std::memcpy(out + i * D, table + id * D, D * sizeof(T));
    }
  });
}
}  // namespace

void upsample_nearest2x_nhwc(const float* x, float* y, int64_t N, int64_t H, int64_t W, int64_t C) {
  upsample_impl(x, y, N, H, W, C);
}
void upsample_nearest2x_nhwc(const bf16* x, bf16* y, int64_t N, int64_t H, int64_t W, int64_t C) {
  upsample_impl(x, y, N, H, W, C);
}
void embedding(const void* ids, bool ids_is_64, int64_t n, const float* table, int64_t D, float* out) {
  embedding_impl(ids, ids_is_64, n, table, D, out);
}
void embedding(const void* ids, bool ids_is_64, int64_t n, const bf16* table, int64_t D, bf16* out) {
  embedding_impl(ids, ids_is_64, n, table, D, out);
}

void timestep_embedding(const float* t, int64_t B, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                        float scale, float max_period, bf16* out) {
  std::vector<float> f(static_cast<size_t>(B * dim));
  timestep_embedding(t, B, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period, f.data());
  narrow_bf16(f.data(), out, B * dim);
}

void timestep_embedding(const float* t, int64_t B, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                        float scale, float max_period, float* out) {
  const int64_t half = dim / 2;
  // diffusers computes exponent = -log(max_period) * arange(half) / (half - shift) in float32,
  // then exp, then t[:, None] * freqs, then scale, then sin/cos, all in float32.
  std::vector<float> freqs(half);
  const float neg_log = -std::log(max_period);
  for (int64_t i = 0; i < half; i++) {
    float exponent = neg_log * static_cast<float>(i);
    exponent = exponent / (static_cast<float>(half) - downscale_freq_shift);
    freqs[i] = std::exp(exponent);
  }
  for (int64_t b = 0; b < B; b++) {
    float* o = out + b * dim;
    for (int64_t i = 0; i < half; i++) {
      float arg = t[b] * freqs[i];
      arg = scale * arg;
      const float s = std::sin(arg), c = std::cos(arg);
      if (flip_sin_to_cos) { o[i] = c; o[half + i] = s; }
      else { o[i] = s; o[half + i] = c; }
    }
    if (dim % 2) o[dim - 1] = 0.f;
  }
}

}  // namespace dk::cpu

namespace dk::cpu {

void copy_2d(void* dst, int64_t dpitch, const void* src, int64_t spitch, int64_t width_bytes, int64_t height) {
  parallel_for(height, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(width_bytes, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++)
      std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width_bytes);
  });
}

}  // namespace dk::cpu
