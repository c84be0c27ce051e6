// Counter-based normal random numbers. Philox4x32-10 (Salmon et al., SC'11):
// key = (seed lo 32 bits, seed hi 32 bits); block g uses counter (offset + g) in words 0,1 and
// zeros in words 2,3, and yields r0..r3 for elements 4g..4g+3. With u(x) = (x + 0.5f) * 2^-32:
// n0 = sqrt(-2 ln u(r0)) cos(2 pi u(r1)), n1 = sqrt(-2 ln u(r0)) sin(2 pi u(r1)), n2/n3 from r2/r3.
// The CUDA kernel (native/cuda/random.cu) uses the same definition.
#include <cmath>

#include "../core/thread_pool.h"
#include "kernels.h"

namespace dk::cpu {
namespace {

inline void philox4x32_10(uint32_t ctr[4], uint32_t key[2]) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = static_cast<uint64_t>(M0) * ctr[0];
    uint64_t p1 = static_cast<uint64_t>(M1) * ctr[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    uint32_t n0 = hi1 ^ ctr[1] ^ k0, n1 = lo1, n2 = hi0 ^ ctr[3] ^ k1, n3 = lo0;
    ctr[0] = n0; ctr[1] = n1; ctr[2] = n2; ctr[3] = n3;
    k0 += W0; k1 += W1;
  }
}

inline float uniform_open(uint32_t x) { return (static_cast<float>(x) + 0.5f) * 2.3283064365386963e-10f; }

}  // namespace

void randn_philox(uint64_t seed, uint64_t offset, float* out, int64_t n) {
  const int64_t blocks = (n + 3) / 4;
  parallel_for(blocks, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; g++) {
      uint64_t c = offset + static_cast<uint64_t>(g);
      uint32_t ctr[4] = {static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), 0u, 0u};
      uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
      philox4x32_10(ctr, key);
      float vals[4];
      for (int p = 0; p < 2; p++) {
        const float u1 = uniform_open(ctr[2 * p]), u2 = uniform_open(ctr[2 * p + 1]);
        const float r = std::sqrt(-2.f * std::log(u1));
        const float theta = 6.283185307179586f * u2;
        vals[2 * p] = r * std::cos(theta);
        vals[2 * p + 1] = r * std::sin(theta);
      }
      for (int j = 0; j < 4 && 4 * g + j < n; j++) out[4 * g + j] = vals[j];
    }
  });
}

}  // namespace dk::cpu
