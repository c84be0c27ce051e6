// dk::cuda::gemm: batched C = alpha * op(A) @ op(B) + beta * C (+ bias, + residual) on the device's
// stream. float16/bfloat16 go to tensor cores (tile_launch.cuh picks wgmma on sm_90a, else
// mma.sync, with split-K for small M x N); float32 and unaligned operands use the SIMT kernel.
// Also the engine's host services: device capabilities, the path override, the last plan.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "../core/error.h"
#include "gemm_plan.h"
#include "kernels.h"
#include "runtime.h"
#include "stream.cuh"
#include "tile_launch.cuh"

namespace dk::cuda {
namespace {

using tile::TileParams;

constexpr int kMaxDevices = 16;

__global__ void wgmma_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

GemmPath path_from_env() {
  const char* s = std::getenv("DK_CUDA_GEMM_PATH");
  if (!s) return GemmPath::Auto;
  if (!std::strcmp(s, "simt")) return GemmPath::Simt;
  if (!std::strcmp(s, "mma")) return GemmPath::MmaSync;
  if (!std::strcmp(s, "wgmma")) return GemmPath::Wgmma;
  return GemmPath::Auto;
}

std::atomic<int>& path_slot() {
  static std::atomic<int> p{static_cast<int>(path_from_env())};
  return p;
}

std::atomic<int>& stages_slot() {
  static std::atomic<int> s{[] {
    const char* e = std::getenv("DK_CUDA_WGMMA_STAGES");
    const int v = e ? std::atoi(e) : 0;
    return v == 3 || v == 4 ? v : 0;
  }()};
  return s;
}

thread_local char g_last_plan[192] = "";

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class T>
void gemm_typed(int device, int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                const void* A, int64_t lda, int64_t strideA, const void* B, int64_t ldb, int64_t strideB, float beta,
                void* C, int64_t ldc, int64_t strideC, const GemmEpilogue& ep) {
  TileParams p;
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.batch = static_cast<int>(batch);
  p.A = A;
  p.lda = lda;
  p.strideA = batch > 1 ? strideA : 0;
  p.B = B;
  p.ldb = ldb;
  p.strideB = batch > 1 ? strideB : 0;
  p.C = C;
  p.ldc = ldc;
  p.strideC = batch > 1 ? strideC : 0;
  p.bias = ep.bias;
  p.res = ep.residual;
  p.ldr = ep.ldr;
  p.strideR = batch > 1 ? ep.stride_residual : 0;
  p.alpha = alpha;
  p.beta = beta;
  p.transA = transA;
  p.transB = transB;

  bool tc_ok = false, out_vec = false;
  if (sizeof(T) == 2) {
    tc_ok = aligned16(A) && aligned16(B) && lda % 8 == 0 && ldb % 8 == 0 && p.strideA % 8 == 0 &&
            p.strideB % 8 == 0;
    out_vec = aligned16(C) && ldc % 8 == 0 && p.strideC % 8 == 0 && (!p.bias || aligned16(p.bias)) &&
              (!p.res || (aligned16(p.res) && p.ldr % 8 == 0 && p.strideR % 8 == 0));
  }
  p.out_vec = out_vec;
  tile::detail::run_tiled<T, false>(device, p, tc_ok, "dk::cuda::gemm");
}

}  // namespace

// ------------------------------------------------------------------ engine services
void set_gemm_path(GemmPath p) { path_slot().store(static_cast<int>(p)); }
GemmPath gemm_path() { return static_cast<GemmPath>(path_slot().load()); }
void set_wgmma_stages(int stages) { stages_slot().store(stages == 3 || stages == 4 ? stages : 0); }
int wgmma_stages() { return stages_slot().load(); }
const char* gemm_last_plan() { return g_last_plan; }
bool gemm_wgmma_available(int device) { return tile::detail::device_caps(device).wgmma; }

namespace tile::detail {

void set_last_plan(const char* plan) {
  std::strncpy(g_last_plan, plan, sizeof g_last_plan - 1);
  g_last_plan[sizeof g_last_plan - 1] = 0;
}

void use_device(int device) {
  if (device < 0 || device >= kMaxDevices) throw_range("cuda:" + std::to_string(device) + " does not exist");
  int cur = -1;
  check(cudaGetDevice(&cur), "cudaGetDevice");
  if (cur != device) check(cudaSetDevice(device), "cudaSetDevice");
}

const DeviceCaps& device_caps(int device) {
  static std::mutex mu;
  static DeviceCaps caps[kMaxDevices];
  static bool known[kMaxDevices] = {};
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0 || device >= kMaxDevices) throw_range("cuda:" + std::to_string(device) + " does not exist");
  if (known[device]) return caps[device];
  DeviceCaps c;
  check(cudaDeviceGetAttribute(&c.sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&c.major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&c.minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  if (c.major == 9 && c.minor == 0) {
    // The kernel image loaded for this device tells whether it was built for sm_90a.
    use_device(device);
    cudaStream_t st = stream(device);
    void* flag = device_alloc(device, sizeof(int));
    int host = 0;
    cudaError_t e = cudaMemsetAsync(flag, 0, sizeof(int), st);
    if (e == cudaSuccess) {
      wgmma_probe_kernel<<<1, 1, 0, st>>>(static_cast<int*>(flag));
      e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    device_free(device, flag, sizeof(int));
    check(e, "gemm: sm_90a probe");
    c.wgmma = host == 1;
  }
  caps[device] = c;
  known[device] = true;
  return caps[device];
}

}  // namespace tile::detail

// ------------------------------------------------------------------ entry point
void gemm(int device, DType dt, int64_t batch, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
          const void* A, int64_t lda, int64_t strideA, const void* B, int64_t ldb, int64_t strideB, float beta, void* C,
          int64_t ldc, int64_t strideC, const GemmEpilogue& ep) {
  if (batch < 0 || M < 0 || N < 0 || K < 0)
    throw_range("gemm: negative size (batch " + std::to_string(batch) + ", M " + std::to_string(M) + ", N " +
                std::to_string(N) + ", K " + std::to_string(K) + ")");
  if (batch == 0 || M == 0 || N == 0) return;
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX || batch > INT_MAX)
    throw_range("gemm: a dimension exceeds 2^31-1");
  if ((K > 0 && (!A || !B)) || !C) throw_range("gemm: null operand pointer");
  switch (dt) {
    case DType::F32:
      gemm_typed<float>(device, batch, transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, C,
                        ldc, strideC, ep);
      break;
    case DType::F16:
      gemm_typed<__half>(device, batch, transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, C,
                         ldc, strideC, ep);
      break;
    case DType::BF16:
      gemm_typed<__nv_bfloat16>(device, batch, transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB,
                                beta, C, ldc, strideC, ep);
      break;
    default:
      throw_type(std::string("gemm: dtype must be float32, float16 or bfloat16, got ") + dtype_name(dt));
  }
}

}  // namespace dk::cuda
