#include "runtime.h"

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <vector>

#include "../core/error.h"
#include "stream.cuh"

namespace dk::cuda {
namespace {

struct DevicePool {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;
  MemoryStats stats;
};

constexpr int kMaxDevices = 16;

DevicePool& pool(int device) {
  static DevicePool* pools = new DevicePool[kMaxDevices];
  return pools[device];
}

size_t size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= (1u << 20)) {  // small: powers of two from 512 B
    size_t s = 512;
    while (s < bytes) s <<= 1;
    return s;
  }
  const size_t step = 2u << 20;  // large: 2 MiB granularity
  return (bytes + step - 1) / step * step;
}

void check_index(int device) {
  if (device < 0 || device >= kMaxDevices || device >= device_count())
    throw_range("cuda:" + std::to_string(device) + " does not exist (" + std::to_string(device_count()) +
                " CUDA device(s) found)");
}

}  // namespace

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky-free error so later calls are not poisoned
  if (e == cudaErrorMemoryAllocation) throw_oom(std::string(what) + ": CUDA out of memory");
  throw_error(std::string(what) + ": " + cudaGetErrorString(e));
}

int device_count() {
  static int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

DeviceInfo device_info(int device) {
  check_index(device);
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  DeviceInfo info;
  info.name = prop.name;
  info.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  return info;
}

cudaStream_t stream(int device) {
  static std::mutex mu;
  static cudaStream_t streams[kMaxDevices] = {};
  std::lock_guard<std::mutex> lock(mu);
  if (!streams[device]) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking), "cudaStreamCreate");
  }
  return streams[device];
}

void* device_alloc(int device, size_t bytes) {
  check_index(device);
  size_t cls = size_class(bytes);
  DevicePool& P = pool(device);
  {
    std::lock_guard<std::mutex> lock(P.mu);
    auto it = P.free_blocks.find(cls);
    if (it != P.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      P.stats.bytes_cached -= cls;
      P.stats.bytes_in_use += cls;
      if (P.stats.bytes_in_use > P.stats.peak_bytes) P.stats.peak_bytes = P.stats.bytes_in_use;
      return p;
    }
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, cls);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    empty_cache(device);
    e = cudaMalloc(&p, cls);
  }
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw_oom("CUDA out of memory on cuda:" + std::to_string(device) + " allocating " + std::to_string(bytes) +
              " bytes (" + std::to_string(P.stats.bytes_in_use) + " bytes in use by diffusekit)");
  }
  check(e, "cudaMalloc");
  std::lock_guard<std::mutex> lock(P.mu);
  P.stats.bytes_in_use += cls;
  if (P.stats.bytes_in_use > P.stats.peak_bytes) P.stats.peak_bytes = P.stats.bytes_in_use;
  return p;
}

void device_free(int device, void* p, size_t bytes) {
  if (!p) return;
  // Storage is released from the JS thread or the queue thread after the op that last used it
  // was enqueued; all work on a device goes through one stream, so reuse is stream-ordered.
  size_t cls = size_class(bytes);
  DevicePool& P = pool(device);
  std::lock_guard<std::mutex> lock(P.mu);
  P.stats.bytes_in_use -= cls;
  P.stats.bytes_cached += cls;
  P.free_blocks[cls].push_back(p);
}

MemoryStats memory_stats(int device) {
  check_index(device);
  DevicePool& P = pool(device);
  std::lock_guard<std::mutex> lock(P.mu);
  return P.stats;
}

void reset_peak(int device) {
  DevicePool& P = pool(device);
  std::lock_guard<std::mutex> lock(P.mu);
  P.stats.peak_bytes = P.stats.bytes_in_use;
}

void empty_cache(int device) {
  DevicePool& P = pool(device);
  std::vector<void*> blocks;
  {
    std::lock_guard<std::mutex> lock(P.mu);
    for (auto& kv : P.free_blocks)
      for (void* p : kv.second) blocks.push_back(p);
    P.free_blocks.clear();
    P.stats.bytes_cached = 0;
  }
  if (blocks.empty()) return;
  cudaSetDevice(device);
  cudaStreamSynchronize(stream(device));
  for (void* p : blocks) cudaFree(p);
}

void bind_thread_to_device(int device) { cudaSetDevice(device); }

void copy_h2d(int device, void* dst, const void* src, size_t bytes) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream(device)), "copy to device");
  check(cudaStreamSynchronize(stream(device)), "copy to device");
}

void copy_d2h(int device, void* dst, const void* src, size_t bytes) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream(device)), "copy to host");
  check(cudaStreamSynchronize(stream(device)), "copy to host");
}

void copy_d2d(int device, void* dst, const void* src, size_t bytes) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream(device)), "copy on device");
}

void synchronize(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamSynchronize(stream(device)), "synchronize");
}

}  // namespace dk::cuda
