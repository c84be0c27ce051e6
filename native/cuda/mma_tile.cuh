// Tiled matrix-product engine shared by gemm.cu and conv2d.cu: C[M,N] = A[M,K] @ B[K,N] per batch
// item, with A either a plain matrix or the implicit im2col view of an NHWC image, and B either
// a plain matrix or OHWI conv weights seen as [N][K]. Accumulation is float32 in every kernel.
//
// Kernel families (one CTA = 256 threads in all of them):
//  - mma_kernel:   sm_80+ tensor cores, mma.sync m16n8k16. CTA tile 128x128x64, 8 warps of 64x32,
//                  3-stage cp.async pipeline, 128-byte XOR-swizzled smem tiles read by ldmatrix.
//                  Any of the four transpose layouts (K-major or MN-major tiles for A and B).
//  - wgmma_kernel: (wgmma_tile.cuh) sm_90a only. CTA tile 128x160x64, two warpgroups each issuing
//                  wgmma m64n160k16 with both operands from smem (K-major, 128B swizzle),
//                  the same cp.async loaders. 160 divides every SD channel count (320..2560).
//  - simt_kernel:  float32 FMA, 64x64x16 tiles, any layout and alignment (float32 storage, and the
//                  fallback for unaligned float16/bfloat16 operands or conv with C % 8 != 0).
// Split-K (planned in tile_launch.cuh): when the M x N tiles cannot fill the GPU, K is cut into
// `splits` slices whose float32 partials go to a workspace; splitk_reduce8_kernel (eight outputs
// per thread, where the layout allows) or splitk_reduce_kernel sums them and applies the epilogue.
//
// Epilogue (all kernels): out = alpha*acc + beta*C (C read only when beta != 0) + bias[n]
// + residual[m, n], computed in float32 and rounded once to the storage type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace dk::cuda::tile {

// ------------------------------------------------------------------ problem description
// One struct for gemm and conv (conv leaves the gemm-only fields at defaults and vice versa).
struct TileParams {
  int M = 0, N = 0, K = 0, batch = 1;
  int mtiles = 0, ntiles = 0, splits = 1, kt_per_split = 0;
  const void* A = nullptr;  // gemm: A; conv: x [Nimg,H,W,C]
  long long lda = 0, strideA = 0;
  const void* B = nullptr;  // gemm: B; conv: w [K,R,S,C] = [N][Kgemm] with ldb = Kgemm
  long long ldb = 0, strideB = 0;
  void* C = nullptr;
  long long ldc = 0, strideC = 0;
  const void* bias = nullptr;  // [N]
  const void* res = nullptr;   // residual, same layout as C with ldr / strideR
  long long ldr = 0, strideR = 0;
  float alpha = 1.f, beta = 0.f;
  float* ws = nullptr;  // split-K partials [splits][batch][M][N]
  int out_vec = 0;      // C (and bias, residual) allow 16-byte accesses at 8-element chunks
  int ws_vec = 0;       // N % 4 == 0: partial rows allow float4 stores
  int transA = 0, transB = 0;  // SIMT kernel only (tensor-core kernels bake the layout in)
  // conv geometry
  int H = 0, W = 0, Cin = 0, P = 0, Q = 0, R = 1, S = 1;
  int sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
};

// ------------------------------------------------------------------ element types
template <class T>
struct Elem;
template <>
struct Elem<float> {
  static __device__ __forceinline__ float to_f(float x) { return x; }
  static __device__ __forceinline__ float from_f(float x) { return x; }
};
template <>
struct Elem<__half> {
  static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_f(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ float lo(uint32_t u) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(u & 0xffffu)));
  }
  static __device__ __forceinline__ float hi(uint32_t u) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(u >> 16)));
  }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(a))) |
           (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(b))) << 16);
  }
};
template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ float lo(uint32_t u) {
    return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(u & 0xffffu)));
  }
  static __device__ __forceinline__ float hi(uint32_t u) {
    return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(u >> 16)));
  }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(a))) |
           (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(b))) << 16);
  }
};

// ------------------------------------------------------------------ PTX wrappers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte async copy global -> shared; bytes beyond src_bytes (0..16) are zero-filled, so a
// predicated-off chunk is src_bytes = 0 and a K tail is a partial chunk.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                        const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ------------------------------------------------------------------ shared-memory tile layouts
// K-major tile: `rows` rows of 64 elements (128 B = 8 chunks of 16 B). Chunk c of row r lives at
// chunk c ^ (r & 7): ldmatrix's 8 row addresses (8 consecutive rows, same logical chunk) then hit
// 8 different 16-byte bank groups. With the tile 1024-byte aligned this is exactly the hardware's
// 128-byte swizzle, so wgmma descriptors can read the same tiles.
__host__ __device__ __forceinline__ uint32_t kmajor_off(int r, int c) {
  return static_cast<uint32_t>(r * 128 + ((c ^ (r & 7)) << 4));
}
// MN-major tile: 64 k-rows of COLS elements (COLS*2 bytes); chunk c of row k at c ^ (k & 7)
// (flips only the low three bits, so a chunk stays inside its aligned 128-byte group).
template <int COLS>
__host__ __device__ __forceinline__ uint32_t mnmajor_off(int k, int c) {
  return static_cast<uint32_t>(k * COLS * 2 + ((c ^ (k & 7)) << 4));
}

// ------------------------------------------------------------------ epilogue
template <class T>
__device__ __forceinline__ void finish_scalar(const TileParams& p, int b, int m, int n, float acc) {
  T* c = static_cast<T*>(p.C) + b * p.strideC + static_cast<long long>(m) * p.ldc + n;
  float o = p.alpha * acc;
  if (p.beta != 0.f) o += p.beta * Elem<T>::to_f(*c);
  if (p.bias) o += Elem<T>::to_f(static_cast<const T*>(p.bias)[n]);
  if (p.res) o += Elem<T>::to_f(static_cast<const T*>(p.res)[b * p.strideR + static_cast<long long>(m) * p.ldr + n]);
  *c = Elem<T>::from_f(o);
}

// The epilogue of eight consecutive outputs (m, n..n+7): 16-byte loads and stores where the
// layout allows (out_vec), else element by element; the same float32 sums in the same order.
template <class T>
__device__ __forceinline__ void finish_chunk8(const TileParams& p, int b, int m, int n, const float (&v)[8]) {
  if (p.out_vec && n + 8 <= p.N) {
    T* c = static_cast<T*>(p.C) + b * p.strideC + static_cast<long long>(m) * p.ldc + n;
    float o[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) o[j] = p.alpha * v[j];
    if (p.beta != 0.f) {
      const uint4 u = *reinterpret_cast<const uint4*>(c);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        o[2 * j] += p.beta * Elem<T>::lo(w[j]);
        o[2 * j + 1] += p.beta * Elem<T>::hi(w[j]);
      }
    }
    if (p.bias) {
      const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.bias) + n);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        o[2 * j] += Elem<T>::lo(w[j]);
        o[2 * j + 1] += Elem<T>::hi(w[j]);
      }
    }
    if (p.res) {
      const T* r = static_cast<const T*>(p.res) + b * p.strideR + static_cast<long long>(m) * p.ldr + n;
      const uint4 u = *reinterpret_cast<const uint4*>(r);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        o[2 * j] += Elem<T>::lo(w[j]);
        o[2 * j + 1] += Elem<T>::hi(w[j]);
      }
    }
    uint4 out;
    out.x = Elem<T>::pack(o[0], o[1]);
    out.y = Elem<T>::pack(o[2], o[3]);
    out.z = Elem<T>::pack(o[4], o[5]);
    out.w = Elem<T>::pack(o[6], o[7]);
    *reinterpret_cast<uint4*>(c) = out;
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (n + j < p.N) finish_scalar<T>(p, b, m, n + j, v[j]);
}

// Eight consecutive outputs (m, n..n+7) of a 16-bit type from raw accumulators; writes float32
// partials instead when split-K is on.
template <class T>
__device__ __forceinline__ void store_chunk8(const TileParams& p, int b, int split, int m, int n, const float (&v)[8]) {
  if (m >= p.M || n >= p.N) return;
  if (p.ws) {
    float* w = p.ws + ((static_cast<long long>(split) * p.batch + b) * p.M + m) * p.N + n;
    if (p.ws_vec && n + 8 <= p.N) {
      reinterpret_cast<float4*>(w)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(w)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (n + j < p.N) w[j] = v[j];
    }
    return;
  }
  finish_chunk8<T>(p, b, m, n, v);
}

// Sums the split-K partials of element idx of [batch][M][N] and applies the epilogue.
template <class T>
__global__ void __launch_bounds__(256) splitk_reduce_kernel(const TileParams p) {
  const long long mn = static_cast<long long>(p.M) * p.N;
  const long long total = mn * p.batch;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<long long>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < p.splits; ++k) s += p.ws[k * total + idx];
    const int b = static_cast<int>(idx / mn);
    const long long r = idx - b * mn;
    const int m = static_cast<int>(r / p.N);
    const int n = static_cast<int>(r - static_cast<long long>(m) * p.N);
    finish_scalar<T>(p, b, m, n, s);
  }
}

// The same for eight consecutive outputs per thread (N % 8 == 0 and out_vec): float4 loads of the
// partials, the vector epilogue. Summation order and rounding are the scalar kernel's.
template <class T>
__global__ void __launch_bounds__(256) splitk_reduce8_kernel(const TileParams p) {
  const long long mn = static_cast<long long>(p.M) * p.N;
  const long long total = mn * p.batch;
  for (long long idx = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * 8; idx < total;
       idx += static_cast<long long>(gridDim.x) * blockDim.x * 8) {
    float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < p.splits; ++k) {
      const float4* w = reinterpret_cast<const float4*>(p.ws + k * total + idx);
      const float4 a = w[0], c = w[1];
      s[0] += a.x; s[1] += a.y; s[2] += a.z; s[3] += a.w;
      s[4] += c.x; s[5] += c.y; s[6] += c.z; s[7] += c.w;
    }
    const int b = static_cast<int>(idx / mn);
    const long long r = idx - b * mn;
    const int m = static_cast<int>(r / p.N);
    const int n = static_cast<int>(r - static_cast<long long>(m) * p.N);
    finish_chunk8<T>(p, b, m, n, s);
  }
}

// ------------------------------------------------------------------ global -> shared tile loaders
// Every loader moves one 64-wide k-tile of its operand with 256 threads, one 16-byte cp.async
// per (thread, pass), zero-filling rows/columns outside the matrix and the K tail. Preconditions
// (checked on the host): 16-bit type, base pointers 16-byte aligned, leading dims and batch
// strides multiples of 8 elements.

// Operand stored [rows][K] (K contiguous): gemm A when !transA, gemm B when transB, conv weights.
template <class T, int ROWS>
struct KMajorLoader {
  static constexpr int PASSES = ROWS / 32;  // 32 rows x 8 chunks per pass
  const T* ptr;   // this thread's first row at its chunk column (k-tile 0)
  const T* safe;  // any valid address, for zero-byte copies
  long long step; // 32 rows
  int nvalid;     // passes whose row is inside the matrix (a prefix)
  int kchunk, K;
  uint32_t soff;

  __device__ __forceinline__ void init(const T* base, long long ld, int rows, int row0, int K_, int tid) {
    const int r = tid >> 3, c = tid & 7;
    const int row = row0 + r;
    kchunk = c * 8;
    K = K_;
    safe = base;
    ptr = base + static_cast<long long>(row) * ld + kchunk;
    step = 32 * ld;
    nvalid = row < rows ? min(PASSES, (rows - row + 31) / 32) : 0;
    soff = kmajor_off(r, c);  // r & 7 is the same in every pass (passes are 32 rows apart)
  }
  __device__ __forceinline__ void load(uint32_t stile, int kt) const {
    const int rem = K - (kt * 64 + kchunk);
    const int bytes = rem >= 8 ? 16 : (rem > 0 ? rem * 2 : 0);
    const T* p = ptr + kt * 64;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const bool ok = i < nvalid && bytes > 0;
      cp_async16(stile + soff + i * 32 * 128, ok ? static_cast<const void*>(p + i * step) : safe, ok ? bytes : 0);
    }
  }
};

// Operand stored [K][cols] (cols contiguous): gemm A when transA, gemm B when !transB.
// Tile = 64 k-rows x 128 columns (16 chunks per row, 16 rows per pass).
template <class T>
struct MNMajorLoader {
  static constexpr int COLS = 128, PASSES = 4;
  const T* ptr;
  const T* safe;
  long long ld;
  int krow, K, bytes;
  uint32_t soff;

  __device__ __forceinline__ void init(const T* base, long long ld_, int cols, int col0, int K_, int tid) {
    const int r = tid >> 4, c = tid & 15;
    const int col = col0 + c * 8;
    const int rem = cols - col;
    bytes = rem >= 8 ? 16 : (rem > 0 ? rem * 2 : 0);
    krow = r;
    K = K_;
    ld = ld_;
    safe = base;
    ptr = base + static_cast<long long>(r) * ld_ + col;
    soff = mnmajor_off<COLS>(r, c);  // r & 7 is the same in every pass (16 rows apart)
  }
  __device__ __forceinline__ void load(uint32_t stile, int kt) const {
    const T* p = ptr + static_cast<long long>(kt) * 64 * ld;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const bool ok = bytes > 0 && kt * 64 + krow + i * 16 < K;
      cp_async16(stile + soff + i * 16 * COLS * 2, ok ? static_cast<const void*>(p + i * 16 * ld) : safe,
                 ok ? bytes : 0);
    }
  }
};

// Implicit im2col of an NHWC image: row m = output pixel (n, p, q), column k = (r, s, c) with c
// fastest, matching OHWI weights. Needs C % 8 == 0 so a 16-byte chunk never straddles two taps.
template <class T>
struct Im2colLoader {
  static constexpr int PASSES = 4;  // 128 rows
  const T* x;
  int H, W, C, S, dh, dw, K, kchunk;
  int nH[PASSES], ih0[PASSES], iw0[PASSES];
  uint32_t soff;

  __device__ __forceinline__ void init(const TileParams& p, int row0, int tid) {
    const int r = tid >> 3, c = tid & 7;
    x = static_cast<const T*>(p.A);
    H = p.H; W = p.W; C = p.Cin; S = p.S; dh = p.dh; dw = p.dw; K = p.K;
    kchunk = c * 8;
    soff = kmajor_off(r, c);
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const int m = row0 + r + 32 * i;
      if (m < p.M) {
        const int q = m % p.Q;
        const int t = m / p.Q;
        const int pp = t % p.P;
        const int n = t / p.P;
        nH[i] = n * p.H;
        ih0[i] = pp * p.sh - p.ph;
        iw0[i] = q * p.sw - p.pw;
      } else {
        nH[i] = 0;
        ih0[i] = INT_MIN / 2;  // fails the bounds test for every tap
        iw0[i] = 0;
      }
    }
  }
  __device__ __forceinline__ void load(uint32_t stile, int kt) const {
    const int k = kt * 64 + kchunk;
    const bool kv = k < K;
    int c = 0, ofh = 0, ofw = 0;
    if (kv) {
      c = k % C;
      const int rs = k / C;
      ofh = (rs / S) * dh;
      ofw = (rs % S) * dw;
    }
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const int ih = ih0[i] + ofh, iw = iw0[i] + ofw;
      const bool ok = kv && static_cast<unsigned>(ih) < static_cast<unsigned>(H) &&
                      static_cast<unsigned>(iw) < static_cast<unsigned>(W);
      const T* src = x + ((static_cast<long long>(nH[i] + ih)) * W + iw) * C + c;
      cp_async16(stile + soff + i * 32 * 128, ok ? static_cast<const void*>(src) : static_cast<const void*>(x),
                 ok ? 16 : 0);
    }
  }
};

// Decodes blockIdx.x into (n-tile, m-tile, split, batch); n fastest so neighbouring CTAs share
// their A rows in L2.
struct TileCoord {
  int nt, mt, split, b;
};
__device__ __forceinline__ TileCoord tile_coord(const TileParams& p) {
  int bid = blockIdx.x;
  TileCoord t;
  t.nt = bid % p.ntiles;
  bid /= p.ntiles;
  t.mt = bid % p.mtiles;
  bid /= p.mtiles;
  t.split = bid % p.splits;
  t.b = bid / p.splits;
  return t;
}

// ------------------------------------------------------------------ split-K planning
// Split-K factor: a rough time model in units of one CTA k-tile (64 deep). A CTA costs its
// k-tiles plus ~2 for pipeline fill and epilogue (+2 to write float32 partials when split); the
// reduction pass costs ~2 per partial tile spread over the GPU plus a launch. CTAs spread over
// the SMs in ceil(ctas / sms) rounds.
inline int choose_splits(long long tiles, int ktiles, int sms) {
  if (tiles >= sms || ktiles < 4 || sms <= 0) return 1;
  int best = 1;
  double best_cost = 1e30;
  const int max_s = std::min(32, ktiles / 2);
  for (int s = 1; s <= max_s; ++s) {
    const int kper = (ktiles + s - 1) / s;
    const int used = (ktiles + kper - 1) / kper;
    if (used != s) continue;  // same as a smaller factor
    const long long ctas = tiles * used;
    const double rounds = static_cast<double>((ctas + sms - 1) / sms);
    double cost = rounds * (kper + 2 + (used > 1 ? 2 : 0));
    if (used > 1) cost += 2.0 * static_cast<double>(ctas) / sms + 3.0;
    if (cost < best_cost * 0.97) {  // prefer fewer splits unless clearly faster
      best_cost = cost;
      best = used;
    }
  }
  return best;
}

// ------------------------------------------------------------------ mma.sync fragment addresses
// The byte offset, inside a stage's A (or B) tile, of the 16-byte row that `lane` hands to
// ldmatrix.x4 for warp tile row wm (col wn), m16 tile mi (n16 pair pj) and k16 step k16.
// x4 loads four 8x8 matrices; lanes 8j..8j+7 address the rows of matrix j.
//  A fragment a0..a3 = (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15): from a K-major
//    [m][k] tile with plain ldmatrix, from an MN-major [k][m] tile with .trans (rows are k).
//  B fragments of n-tiles 2pj, 2pj+1 = (n0-7,k0-7) (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15):
//    plain from [n][k], .trans from [k][n].
// Host-callable so lab/tile_layout_check.cu can replay them against an ldmatrix/mma model.
template <bool K_MAJOR>
struct AFragAddr {
  uint32_t base;
  int x, lrow, hi;
  __host__ __device__ __forceinline__ AFragAddr(int lane, int wm) {
    const int lj = lane >> 3, lr = lane & 7;
    lrow = lr;
    if (K_MAJOR) {  // row wm*64 + mi*16 + (lj&1)*8 + lr, chunk (2*k16 + lj/2) ^ lr == (2*k16) ^ x
      base = static_cast<uint32_t>((wm * 64 + (lj & 1) * 8 + lr) * 128);
      x = (lj >> 1) ^ lr;
      hi = 0;
    } else {  // k-row k16*16 + (lj/2)*8 + lr, chunk (wm*8 + mi*2 + (lj&1)) ^ lr (low 3 bits only)
      base = static_cast<uint32_t>(((lj >> 1) * 8 + lr) * 256);
      x = lj & 1;
      hi = wm * 8;
    }
  }
  __host__ __device__ __forceinline__ uint32_t operator()(int mi, int k16) const {
    if (K_MAJOR) return base + mi * 16 * 128 + (((2 * k16) ^ x) << 4);
    return base + k16 * 16 * 256 + ((hi + ((mi * 2 + x) ^ lrow)) << 4);
  }
};
template <bool K_MAJOR>
struct BFragAddr {
  uint32_t base;
  int x, lrow, wn4;
  __host__ __device__ __forceinline__ BFragAddr(int lane, int wn) {
    const int lj = lane >> 3, lr = lane & 7;
    lrow = lr;
    wn4 = wn * 4;
    if (K_MAJOR) {
      base = static_cast<uint32_t>((wn * 32 + (lj >> 1) * 8 + lr) * 128);
      x = (lj & 1) ^ lr;
    } else {
      base = static_cast<uint32_t>(((lj & 1) * 8 + lr) * 256);
      x = lj >> 1;
    }
  }
  __host__ __device__ __forceinline__ uint32_t operator()(int pj, int k16) const {
    if (K_MAJOR) return base + pj * 16 * 128 + (((2 * k16) ^ x) << 4);
    return base + k16 * 16 * 256 + (((wn4 + pj * 2 + x) ^ lrow) << 4);
  }
};

// ------------------------------------------------------------------ mma.sync kernel
namespace mma_cfg {
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 3, THREADS = 256;
constexpr uint32_t A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int LDS = BN + 8;  // float stride of the epilogue staging tile (conflict-free float2 stores)
constexpr size_t SMEM_MAIN = size_t(STAGES) * STAGE_BYTES;
constexpr size_t SMEM_EPI = size_t(BM) * LDS * 4;
constexpr size_t SMEM = (SMEM_MAIN > SMEM_EPI ? SMEM_MAIN : SMEM_EPI) + 1024;  // + alignment slack
}  // namespace mma_cfg

// A_K: A tile is K-major (gemm !transA, conv); B_K: B tile is K-major (gemm transB, conv).
template <class T, bool A_K, bool B_K, bool CONV>
__global__ void __launch_bounds__(256, 2) mma_kernel(const TileParams p) {
  using namespace mma_cfg;
  static_assert(!CONV || (A_K && B_K), "conv tiles are K-major");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t pad = ((raw + 1023u) & ~1023u) - raw;
  const uint32_t sbase = raw + pad;
  float* so = reinterpret_cast<float*>(smem_raw + pad);

  const TileCoord tc = tile_coord(p);
  const int m0 = tc.mt * BM, n0 = tc.nt * BN;
  const int ktiles = (p.K + BK - 1) / BK;
  const int kb = tc.split * p.kt_per_split;
  const int ke = min(kb + p.kt_per_split, ktiles);
  const int tid = threadIdx.x;

  using ALoader = std::conditional_t<CONV, Im2colLoader<T>, std::conditional_t<A_K, KMajorLoader<T, BM>, MNMajorLoader<T>>>;
  using BLoader = std::conditional_t<B_K, KMajorLoader<T, BN>, MNMajorLoader<T>>;
  ALoader al;
  BLoader bl;
  if constexpr (CONV) {
    al.init(p, m0, tid);
  } else {
    al.init(static_cast<const T*>(p.A) + tc.b * p.strideA, p.lda, p.M, m0, p.K, tid);
  }
  bl.init(static_cast<const T*>(p.B) + tc.b * p.strideB, p.ldb, p.N, n0, p.K, tid);

  const int lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
  const AFragAddr<A_K> a_addr(lane, wm);
  const BFragAddr<B_K> b_addr(lane, wn);

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (kb + s < ke) {
      al.load(sbase + s * STAGE_BYTES, kb + s);
      bl.load(sbase + s * STAGE_BYTES + A_BYTES, kb + s);
    }
    cp_async_commit();
  }
  int rd = 0, wr = STAGES - 1;
  for (int kt = kb; kt < ke; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt visible; every warp is done reading stage `wr` (tile kt-1)
    if (kt + STAGES - 1 < ke) {
      al.load(sbase + wr * STAGE_BYTES, kt + STAGES - 1);
      bl.load(sbase + wr * STAGE_BYTES + A_BYTES, kt + STAGES - 1);
    }
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    const uint32_t sa = sbase + rd * STAGE_BYTES, sb = sa + A_BYTES;
    rd = rd + 1 == STAGES ? 0 : rd + 1;
#pragma unroll
    for (int k16 = 0; k16 < 4; ++k16) {
      uint32_t af[4][4], bfr[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        if constexpr (A_K) ldsm_x4(af[mi], sa + a_addr(mi, k16));
        else ldsm_x4_t(af[mi], sa + a_addr(mi, k16));
      }
#pragma unroll
      for (int pj = 0; pj < 2; ++pj) {
        uint32_t r[4];
        if constexpr (B_K) ldsm_x4(r, sb + b_addr(pj, k16));
        else ldsm_x4_t(r, sb + b_addr(pj, k16));
        bfr[2 * pj][0] = r[0];
        bfr[2 * pj][1] = r[1];
        bfr[2 * pj + 1][0] = r[2];
        bfr[2 * pj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) mma16816<T>(acc[mi][nj], af[mi], bfr[nj]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // pipeline smem is reused for the epilogue

  // accumulator fragment (m16n8): c0,c1 at (lane/4, 2*(lane%4)+{0,1}), c2,c3 eight rows below
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int nj = 0; nj < 4; ++nj) {
      const int r = wm * 64 + mi * 16 + g, c = wn * 32 + nj * 8 + t4 * 2;
      *reinterpret_cast<float2*>(&so[r * LDS + c]) = make_float2(acc[mi][nj][0], acc[mi][nj][1]);
      *reinterpret_cast<float2*>(&so[(r + 8) * LDS + c]) = make_float2(acc[mi][nj][2], acc[mi][nj][3]);
    }
  __syncthreads();
  for (int i = tid; i < BM * BN / 8; i += THREADS) {
    const int r = i / (BN / 8), c = (i % (BN / 8)) * 8;
    const float4 lo = *reinterpret_cast<const float4*>(&so[r * LDS + c]);
    const float4 hi = *reinterpret_cast<const float4*>(&so[r * LDS + c + 4]);
    const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    store_chunk8<T>(p, tc.b, tc.split, m0 + r, n0 + c, v);
  }
}

// ------------------------------------------------------------------ SIMT kernel (any layout)
// 64x64 tile, 16-deep k slices, each thread 4x4 outputs at rows ty+16i, cols tx+16j (conflict-free
// smem reads, coalesced stores).
template <class T, bool CONV>
__global__ void __launch_bounds__(256) simt_kernel(const TileParams p) {
  constexpr int BM = 64, BN = 64, BK = 16;
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const TileCoord tcd = tile_coord(p);
  const int m0 = tcd.mt * BM, n0 = tcd.nt * BN, b = tcd.b;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const T* A = static_cast<const T*>(p.A) + (CONV ? 0 : b * p.strideA);
  const T* B = static_cast<const T*>(p.B) + (CONV ? 0 : b * p.strideB);

  int cnH[4] = {0, 0, 0, 0}, cih[4] = {0, 0, 0, 0}, ciw[4] = {0, 0, 0, 0};
  if constexpr (CONV) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = m0 + ty + 16 * i;
      if (m < p.M) {
        const int q = m % p.Q, t = m / p.Q, pp = t % p.P, n = t / p.P;
        cnH[i] = n * p.H;
        cih[i] = pp * p.sh - p.ph;
        ciw[i] = q * p.sw - p.pw;
      } else {
        cih[i] = INT_MIN / 2;
      }
    }
  }

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int k0 = 0; k0 < p.K; k0 += BK) {
    if constexpr (CONV) {
      const int k = k0 + tx;
      const bool kv = k < p.K;
      int c = 0, ofh = 0, ofw = 0;
      if (kv) {
        c = k % p.Cin;
        const int rs = k / p.Cin;
        ofh = (rs / p.S) * p.dh;
        ofw = (rs % p.S) * p.dw;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int ih = cih[i] + ofh, iw = ciw[i] + ofw;
        float v = 0.f;
        if (kv && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
            static_cast<unsigned>(iw) < static_cast<unsigned>(p.W))
          v = Elem<T>::to_f(A[(static_cast<long long>(cnH[i] + ih) * p.W + iw) * p.Cin + c]);
        As[tx][ty + 16 * i] = v;
      }
    } else if (!p.transA) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i, k = k0 + tx;
        As[tx][ty + 16 * i] = (m < p.M && k < p.K) ? Elem<T>::to_f(A[static_cast<long long>(m) * p.lda + k]) : 0.f;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = tid + 256 * i, mm = e & 63, kk = e >> 6;
        const int m = m0 + mm, k = k0 + kk;
        As[kk][mm] = (m < p.M && k < p.K) ? Elem<T>::to_f(A[static_cast<long long>(k) * p.lda + m]) : 0.f;
      }
    }
    if (CONV || p.transB) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = n0 + ty + 16 * i, k = k0 + tx;
        Bs[tx][ty + 16 * i] = (n < p.N && k < p.K) ? Elem<T>::to_f(B[static_cast<long long>(n) * p.ldb + k]) : 0.f;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = tid + 256 * i, nn = e & 63, kk = e >> 6;
        const int n = n0 + nn, k = k0 + kk;
        Bs[kk][nn] = (n < p.N && k < p.K) ? Elem<T>::to_f(B[static_cast<long long>(k) * p.ldb + n]) : 0.f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[4], bb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bb[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], bb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < p.M && n < p.N) finish_scalar<T>(p, b, m, n, acc[i][j]);
    }
}

}  // namespace dk::cuda::tile
