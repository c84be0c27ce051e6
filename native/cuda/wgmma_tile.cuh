// wgmma (sm_90a) tile kernel for the engine in mma_tile.cuh: K-major A and B tiles filled by the
// same cp.async loaders, read by the tensor cores through shared-memory descriptors.
#pragma once
#include "mma_tile.cuh"

namespace dk::cuda::tile {

// ------------------------------------------------------------------ wgmma kernel (sm_90a)
// Compiled to a real body only for sm_90a (the arch-specific target wgmma needs); other targets
// get an empty kernel that the host never launches (gemm_wgmma_available() says so).
// Two pipeline depths are built while the better one is measured (set_wgmma_stages): 3 stages
// (prefetch distance 1, 109 KiB, two CTAs per SM) or 4 (distance 2, 145 KiB, one CTA per SM).
template <int STAGES_>
struct WgCfg {
  static constexpr int BM = 128, BN = 160, BK = 64, STAGES = STAGES_, THREADS = 256;
  static constexpr int MIN_CTAS = STAGES == 3 ? 2 : 1;
  static constexpr uint32_t A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;
  static constexpr uint32_t STAGE_BYTES = A_BYTES + B_BYTES;  // 36 KiB
  static constexpr int LDS = BN + 8;
  static constexpr size_t SMEM_MAIN = size_t(STAGES) * STAGE_BYTES;
  static constexpr size_t SMEM_EPI = size_t(BM) * LDS * 4;
  static constexpr size_t SMEM = (SMEM_MAIN > SMEM_EPI ? SMEM_MAIN : SMEM_EPI) + 1024;
  static_assert(STAGE_BYTES % 1024 == 0 && A_BYTES % 1024 == 0, "wgmma tiles must stay 1024-byte aligned");
  static_assert(STAGES >= 3, "the stage refilled in iteration kt held tile kt-2");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Shared-memory matrix descriptor for a K-major tile with 128-byte swizzle: rows of 128 B, 8-row
// core-matrix groups 1024 B apart (stride byte offset), leading byte offset unused (encoded 1),
// swizzle mode 1 in bits 62-63. Advancing along K by 16 elements adds 32 B to the start address.
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr) {
  uint64_t d = static_cast<uint64_t>((saddr & 0x3FFFFu) >> 4);
  d |= static_cast<uint64_t>(1) << 16;
  d |= static_cast<uint64_t>(1024 >> 4) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// cp.async writes go through the generic proxy; wgmma reads smem through the async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator reads/writes across wgmma issue/wait points.
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <class T>
__device__ __forceinline__ void wgmma_m64n160k16(float (&d)[80], uint64_t da, uint64_t db);

template <>
__device__ __forceinline__ void wgmma_m64n160k16<__half>(float (&d)[80], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %82, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n160k16.f32.f16.f16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79"
      "}, %80, %81, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
      : "l"(da), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_m64n160k16<__nv_bfloat16>(float (&d)[80], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %82, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n160k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79"
      "}, %80, %81, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
      : "l"(da), "l"(db), "r"(1));
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <class T, bool CONV, int STAGES_>
__global__ void __launch_bounds__(256, WgCfg<STAGES_>::MIN_CTAS) wgmma_kernel(const TileParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WgCfg<STAGES_>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, STAGES = Cfg::STAGES, THREADS = Cfg::THREADS;
  constexpr int LDS = Cfg::LDS;
  constexpr uint32_t A_BYTES = Cfg::A_BYTES, STAGE_BYTES = Cfg::STAGE_BYTES;
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
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wgi = warp >> 2;  // warpgroup: rows wgi*64 .. +63 of the CTA tile

  using ALoader = std::conditional_t<CONV, Im2colLoader<T>, KMajorLoader<T, BM>>;
  ALoader al;
  KMajorLoader<T, BN> bl;
  if constexpr (CONV) {
    al.init(p, m0, tid);
  } else {
    al.init(static_cast<const T*>(p.A) + tc.b * p.strideA, p.lda, p.M, m0, p.K, tid);
  }
  bl.init(static_cast<const T*>(p.B) + tc.b * p.strideB, p.ldb, p.N, n0, p.K, tid);

  float acc[80];
#pragma unroll
  for (int i = 0; i < 80; ++i) acc[i] = 0.f;

  // Prefetch distance STAGES-2: the stage refilled in iteration kt held tile kt-2, whose wgmmas
  // every warpgroup retired (wait_group 1 in iteration kt-1) before the barrier of iteration kt.
#pragma unroll
  for (int s = 0; s < STAGES - 2; ++s) {
    if (kb + s < ke) {
      al.load(sbase + s * STAGE_BYTES, kb + s);
      bl.load(sbase + s * STAGE_BYTES + A_BYTES, kb + s);
    }
    cp_async_commit();
  }
  int rd = 0, wr = STAGES - 2;
  for (int kt = kb; kt < ke; ++kt) {
    cp_async_wait<STAGES - 3>();
    fence_proxy_async();
    __syncthreads();
    if (kt + STAGES - 2 < ke) {
      al.load(sbase + wr * STAGE_BYTES, kt + STAGES - 2);
      bl.load(sbase + wr * STAGE_BYTES + A_BYTES, kt + STAGES - 2);
    }
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    const uint32_t sa = sbase + rd * STAGE_BYTES;
    rd = rd + 1 == STAGES ? 0 : rd + 1;
    const uint64_t da = wg_desc(sa + wgi * 64 * 128);
    const uint64_t db = wg_desc(sa + A_BYTES);
    fence_acc(acc);
    wg_fence();
#pragma unroll
    for (int k16 = 0; k16 < BK / 16; ++k16) wgmma_m64n160k16<T>(acc, da + 2 * k16, db + 2 * k16);
    wg_commit();
    wg_wait<1>();
    fence_acc(acc);
  }
  wg_wait<0>();
  fence_acc(acc);
  cp_async_wait<0>();
  __syncthreads();

  // D fragment: warp w of the warpgroup owns rows 16w..16w+15; for n8 block j the registers
  // 4j..4j+3 hold (row g, cols 8j+2t, +1) and (row g+8, same cols), g = lane/4, t = lane%4.
  const int g = lane >> 2, t4 = lane & 3;
  const int r0 = wgi * 64 + (warp & 3) * 16 + g;
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int c = j * 8 + t4 * 2;
    *reinterpret_cast<float2*>(&so[r0 * LDS + c]) = make_float2(acc[4 * j], acc[4 * j + 1]);
    *reinterpret_cast<float2*>(&so[(r0 + 8) * LDS + c]) = make_float2(acc[4 * j + 2], acc[4 * j + 3]);
  }
  __syncthreads();
  for (int i = tid; i < BM * BN / 8; i += THREADS) {
    const int r = i / (BN / 8), c = (i % (BN / 8)) * 8;
    const float4 lo = *reinterpret_cast<const float4*>(&so[r * LDS + c]);
    const float4 hi = *reinterpret_cast<const float4*>(&so[r * LDS + c + 4]);
    const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    store_chunk8<T>(p, tc.b, tc.split, m0 + r, n0 + c, v);
  }
#endif
}


}  // namespace dk::cuda::tile
