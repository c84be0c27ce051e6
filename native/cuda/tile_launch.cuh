// Host side of the tile engine (mma_tile.cuh, wgmma_tile.cuh): kernel family choice, split-K
// planning, workspace, launches. Included by gemm.cu and conv2d.cu.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>

#include "../core/error.h"
#include "gemm_plan.h"
#include "runtime.h"
#include "stream.cuh"
#include "wgmma_tile.cuh"

namespace dk::cuda::tile {

// ------------------------------------------------------------------ host side
namespace detail {
struct DeviceCaps {
  int sms = 0, major = 0, minor = 0;
  bool wgmma = false;  // sm_90 device and this binary's wgmma kernels have real bodies
};
// gemm.cu
const DeviceCaps& device_caps(int device);
void use_device(int device);
void set_last_plan(const char* plan);

// Raises the kernel's dynamic shared-memory limit (once per device) and returns how many CTAs
// of 256 threads fit on one SM, or 0 when the kernel cannot run here (too little shared memory):
// the caller then takes the SIMT path.
template <auto Kern>
int prepare_kernel(int device, size_t smem) {
  static std::atomic<int> occupancy[16];  // 0 = not yet asked, -1 = cannot run
  int o = occupancy[device].load(std::memory_order_relaxed);
  if (o != 0) return o > 0 ? o : 0;
  cudaError_t e = cudaFuncSetAttribute(Kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, Kern, 256, smem);
  if (e != cudaSuccess || o < 1) {
    cudaGetLastError();  // clear a non-sticky configuration error
    o = -1;
  }
  occupancy[device].store(o, std::memory_order_relaxed);
  return o > 0 ? o : 0;
}

// Float32 split-K workspace from the device's caching allocator. Freed right after the kernels
// are enqueued: every op of a device runs on its one stream, so the next user of the block is
// ordered after them.
struct Workspace {
  int device;
  void* ptr = nullptr;
  size_t bytes = 0;
  Workspace(int dev, size_t n) : device(dev), bytes(n) {
    if (n) ptr = device_alloc(dev, n);
  }
  ~Workspace() {
    if (ptr) device_free(device, ptr, bytes);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

// Returns false (nothing launched) when the kernel cannot run on this device.
template <class T, auto Kern, int BM, int BN>
bool launch_tensor_core(int device, const DeviceCaps& caps, cudaStream_t st, TileParams p, size_t smem,
                        const char* family, const char* op) {
  p.mtiles = (p.M + BM - 1) / BM;
  p.ntiles = (p.N + BN - 1) / BN;
  const int ktiles = (p.K + 63) / 64;
  if (!prepare_kernel<Kern>(device, smem)) return false;
  const long long tiles = static_cast<long long>(p.batch) * p.mtiles * p.ntiles;
  int splits = choose_splits(tiles, ktiles, caps.sms);
  p.kt_per_split = splits > 1 ? (ktiles + splits - 1) / splits : ktiles;
  if (splits > 1) splits = (ktiles + p.kt_per_split - 1) / p.kt_per_split;
  p.splits = splits;
  const long long grid = tiles * splits;
  if (grid > INT_MAX) throw_range(std::string(op) + ": problem too large for one launch");
  const long long elems = static_cast<long long>(p.batch) * p.M * p.N;
  Workspace ws(device, splits > 1 ? static_cast<size_t>(elems) * splits * sizeof(float) : 0);
  p.ws = static_cast<float*>(ws.ptr);
  p.ws_vec = (p.N % 4) == 0;
  Kern<<<static_cast<unsigned>(grid), 256, smem, st>>>(p);
  check(cudaGetLastError(), op);
  if (splits > 1) {
    const bool by8 = p.out_vec && p.N % 8 == 0;  // eight outputs per thread, 16-byte accesses
    const long long want = ((by8 ? elems / 8 : elems) + 255) / 256;
    const int blocks = static_cast<int>(std::min<long long>(want, static_cast<long long>(caps.sms) * 16));
    if (by8) splitk_reduce8_kernel<T><<<blocks, 256, 0, st>>>(p);
    else splitk_reduce_kernel<T><<<blocks, 256, 0, st>>>(p);
    check(cudaGetLastError(), op);
  }
  char plan[192];
  std::snprintf(plan, sizeof plan, "%s %dx%dx64 splits=%d grid=%lld tiles=%lld ktiles=%d", family, BM, BN, splits,
                grid, tiles, ktiles);
  set_last_plan(plan);
  return true;
}

template <class T, bool CONV>
void launch_simt(cudaStream_t st, TileParams p, const char* op) {
  p.mtiles = (p.M + 63) / 64;
  p.ntiles = (p.N + 63) / 64;
  p.splits = 1;
  p.ws = nullptr;
  const long long grid = static_cast<long long>(p.batch) * p.mtiles * p.ntiles;
  if (grid > INT_MAX) throw_range(std::string(op) + ": problem too large for one launch");
  simt_kernel<T, CONV><<<static_cast<unsigned>(grid), 256, 0, st>>>(p);
  check(cudaGetLastError(), op);
  char plan[128];
  std::snprintf(plan, sizeof plan, "simt 64x64x16 grid=%lld", grid);
  set_last_plan(plan);
}

// Runs C = epilogue(A @ B) for a filled-in TileParams. tc_ok: the operands meet the
// tensor-core loaders' alignment rules (16-bit type, 16-byte aligned bases, ld/strides % 8 == 0).
template <class T, bool CONV>
void run_tiled(int device, TileParams p, bool tc_ok, const char* op) {
  if (p.M <= 0 || p.N <= 0 || p.batch <= 0) return;
  use_device(device);
  const DeviceCaps& caps = device_caps(device);
  cudaStream_t st = stream(device);
  const GemmPath want = gemm_path();
  if constexpr (sizeof(T) == 2) {
    if (tc_ok && want != GemmPath::Simt) {
      const bool kmajor = CONV || (!p.transA && p.transB);
      if (kmajor && caps.wgmma && want != GemmPath::MmaSync) {
        int stages = wgmma_stages();
        if (stages == 0) {
          const long long tiles = static_cast<long long>(p.batch) * ((p.M + WgCfg<3>::BM - 1) / WgCfg<3>::BM) *
                                  ((p.N + WgCfg<3>::BN - 1) / WgCfg<3>::BN);
          stages = tiles >= 2LL * caps.sms ? 3 : 4;
        }
        bool done;
        if (stages == 4) {
          using Cfg = WgCfg<4>;
          done = launch_tensor_core<T, wgmma_kernel<T, CONV, 4>, Cfg::BM, Cfg::BN>(device, caps, st, p, Cfg::SMEM,
                                                                                 "wgmma4", op);
        } else {
          using Cfg = WgCfg<3>;
          done = launch_tensor_core<T, wgmma_kernel<T, CONV, 3>, Cfg::BM, Cfg::BN>(device, caps, st, p, Cfg::SMEM,
                                                                                 "wgmma3", op);
        }
        if (done) return;
      }
      constexpr int BM = mma_cfg::BM, BN = mma_cfg::BN;
      constexpr size_t SM = mma_cfg::SMEM;
      bool done;
      if constexpr (CONV) {
        done = launch_tensor_core<T, mma_kernel<T, true, true, true>, BM, BN>(device, caps, st, p, SM, "mma", op);
      } else if (!p.transA && p.transB) {
        done = launch_tensor_core<T, mma_kernel<T, true, true, false>, BM, BN>(device, caps, st, p, SM, "mma", op);
      } else if (!p.transA && !p.transB) {
        done = launch_tensor_core<T, mma_kernel<T, true, false, false>, BM, BN>(device, caps, st, p, SM, "mma", op);
      } else if (p.transA && p.transB) {
        done = launch_tensor_core<T, mma_kernel<T, false, true, false>, BM, BN>(device, caps, st, p, SM, "mma", op);
      } else {
        done = launch_tensor_core<T, mma_kernel<T, false, false, false>, BM, BN>(device, caps, st, p, SM, "mma", op);
      }
      if (done) return;
    }
  }
  launch_simt<T, CONV>(st, p, op);
}

}  // namespace detail
}  // namespace dk::cuda::tile
