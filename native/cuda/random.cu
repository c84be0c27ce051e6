// Standard normal noise on device. The definition below is shared with the CPU kernel
// (native/cpu/random.cc); both must produce the same stream:
//
//   Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
//   SC 2011), multipliers M0 = 0xD2511F53, M1 = 0xCD9E8D57, Weyl key increments
//   W0 = 0x9E3779B9, W1 = 0xBB67AE85.
//   key    = (k0, k1) = (seed & 0xffffffff, seed >> 32)
//   counter for block g (g = 0, 1, ...) = (c0, c1, c2, c3) = (lo32(offset + g), hi32(offset + g), 0, 0),
//            offset + g taken as a 64-bit unsigned value (wrapping)
//   one round:  hi0:lo0 = M0 * c0 (64-bit product),  hi1:lo1 = M1 * c2
//               (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
//   10 rounds; between consecutive rounds (9 times) the key is bumped: k0 += W0, k1 += W1 (mod 2^32).
//   Block g yields r0..r3 (the final c0..c3), which make elements 4g .. 4g+3:
//     u(x) = ((float)x + 0.5f) * 2^-32     (float32: x rounded to float, then the add, both
//                                            round-to-nearest-even; u is in (0, 1])
//     rad  = sqrtf(-2 * logf(u(r0))),  th = 6.2831853f * u(r1)      (2*pi rounded to float32)
//     n[4g+0] = rad * cosf(th),  n[4g+1] = rad * sinf(th)
//     n[4g+2], n[4g+3] likewise from r2 (radius) and r3 (angle).
//   Elements past n are not written; the values are then rounded to the storage dtype.
#include <cmath>

#include "kernel_util.cuh"
#include "kernels.h"

namespace dk::cuda {
namespace rng {

constexpr int kThreads = 256;

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k0 += W0;
      k1 += W1;
    }
    const uint32_t hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
    const uint32_t hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
    c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
  }
  return c;
}

__device__ __forceinline__ float unit_open(uint32_t x) {
  return (__uint2float_rn(x) + 0.5f) * 2.3283064365386963e-10f;  // 2^-32
}

__device__ __forceinline__ void box_muller(uint32_t a, uint32_t b, float& n0, float& n1) {
  const float rad = sqrtf(-2.0f * logf(unit_open(a)));
  const float th = 6.2831853071795865f * unit_open(b);
  n0 = rad * cosf(th);
  n1 = rad * sinf(th);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) randn_kernel(uint32_t k0, uint32_t k1, uint64_t offset,
                                                         T* __restrict__ out, int64_t n, bool vec) {
  const int64_t blocks = (n + 3) / 4;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < blocks; g += nthreads) {
    const uint64_t ctr = offset + static_cast<uint64_t>(g);
    const uint4 r = philox4x32_10(make_uint4(static_cast<uint32_t>(ctr), static_cast<uint32_t>(ctr >> 32), 0u, 0u),
                                  k0, k1);
    float v[4];
    box_muller(r.x, r.y, v[0], v[1]);
    box_muller(r.z, r.w, v[2], v[3]);
    const int64_t e = 4 * g;
    if (vec && e + 4 <= n) {
      if constexpr (sizeof(T) == 4) {
        *reinterpret_cast<float4*>(out + e) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        struct alignas(8) Q { T x[4]; } q;
#pragma unroll
        for (int k = 0; k < 4; k++) q.x[k] = ku::from_f<T>(v[k]);
        *reinterpret_cast<Q*>(out + e) = q;
      }
    } else {
#pragma unroll
      for (int k = 0; k < 4; k++)
        if (e + k < n) out[e + k] = ku::from_f<T>(v[k]);
    }
  }
}

}  // namespace rng

void randn_philox(int device, DType dt, uint64_t seed, uint64_t offset, void* out, int64_t n) {
  if (n <= 0) return;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  unsigned g = ku::grid_for((n + 3) / 4, rng::kThreads, device);
  DK_DISPATCH_FLOAT(dt, "randn_philox", {
    const bool vec = ku::aligned_to(out, 4 * sizeof(T));
    rng::randn_kernel<T><<<g, rng::kThreads, 0, stream(device)>>>(k0, k1, offset, static_cast<T*>(out), n, vec);
  });
  ku::launch_check("randn_philox");
}

}  // namespace dk::cuda
