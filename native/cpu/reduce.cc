// Reductions over one (middle) axis of a [outer, n, inner] view; accumulates in double.
#include <cmath>
#include <limits>
#include <vector>

#include "../core/thread_pool.h"
#include "kernels.h"

namespace dk::cpu {

void reduce(ReduceOp op, const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  parallel_for(outer, 1, [&](int64_t lo, int64_t hi) {
    std::vector<double> acc(inner);
    for (int64_t o = lo; o < hi; o++) {
      const float* base = x + o * n * inner;
      if (op == ReduceOp::Max) {
        for (int64_t j = 0; j < inner; j++) acc[j] = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < n; i++)
          for (int64_t j = 0; j < inner; j++) {
            double v = base[i * inner + j];
            if (std::isnan(v) || v > acc[j]) acc[j] = v;
          }
      } else {
        for (int64_t j = 0; j < inner; j++) acc[j] = 0.0;
        for (int64_t i = 0; i < n; i++)
          for (int64_t j = 0; j < inner; j++) acc[j] += base[i * inner + j];
        if (op == ReduceOp::Mean)
          for (int64_t j = 0; j < inner; j++) acc[j] /= static_cast<double>(n);
      }
      for (int64_t j = 0; j < inner; j++) out[o * inner + j] = static_cast<float>(acc[j]);
    }
  });
}

}  // namespace dk::cpu
