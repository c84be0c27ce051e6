// Reductions over one (middle) axis of a [outer, n, inner] view; accumulates in double.
#include <cmath>
#include <limits>
#include <vector>

#include "../core/half.h"
#include "../core/thread_pool.h"
#include "kernels.h"

namespace dk::cpu {

namespace {
inline double value(float x) { return x; }
inline double value(bf16 x) { return bf16_to_f32(x.bits); }
inline void put(float* p, double v) { *p = static_cast<float>(v); }
inline void put(bf16* p, double v) { p->bits = f32_to_bf16(static_cast<float>(v)); }

template <class T>
void reduce_impl(ReduceOp op, const T* x, T* out, int64_t outer, int64_t n, int64_t inner) {
  parallel_for(outer, 1, [&](int64_t lo, int64_t hi) {
    std::vector<double> acc(inner);
    for (int64_t o = lo; o < hi; o++) {
      const T* base = x + o * n * inner;
      if (op == ReduceOp::Max) {
        for (int64_t j = 0; j < inner; j++) acc[j] = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < n; i++)
          for (int64_t j = 0; j < inner; j++) {
            double v = value(base[i * inner + j]);
            if (std::isnan(v) || v > acc[j]) acc[j] = v;
          }
      } else {
        for (int64_t j = 0; j < inner; j++) acc[j] = 0.0;
        for (int64_t i = 0; i < n; i++)
          for (int64_t j = 0; j < inner; j++) acc[j] += value(base[i * inner + j]);
        if (op == ReduceOp::Mean)
          for (int64_t j = 0; j < inner; j++) acc[j] /= static_cast<double>(n);
      }
      for (int64_t j = 0; j < inner; j++) put(out + o * inner + j, acc[j]);
    }
  });
}
}  // namespace

void reduce(ReduceOp op, const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  reduce_impl(op, x, out, outer, n, inner);
}
void reduce(ReduceOp op, const bf16* x, bf16* out, int64_t outer, int64_t n, int64_t inner) {
  reduce_impl(op, x, out, outer, n, inner);
}

}  // namespace dk::cpu
