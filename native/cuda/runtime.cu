#include "runtime.h"

#include <cuda_runtime.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../core/error.h"
#include "stream.cuh"

struct dk::cuda::Graph {
  int device = 0;
  std::map<size_t, std::vector<void*>> free_blocks;  // pool blocks not in use (still reserved)
  std::vector<std::pair<void*, size_t>> blocks;       // every block of the pool (pointer, size class)
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
};

namespace dk::cuda {
namespace {

struct DevicePool {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;
  MemoryStats stats;
  std::unordered_map<void*, Graph*> graph_owned;  // blocks reserved by a graph's pool
  std::atomic<int> capturing{0};                  // stream captures in progress
};

// The graph pool this thread's allocations go to (graph_alloc_scope), and whether this thread
// is recording a stream capture (graph_begin_capture .. graph_end_capture).
thread_local Graph* tl_alloc_graph = nullptr;
thread_local bool tl_capturing = false;

void refuse_while_capturing(const char* what) {
  if (tl_capturing)
    throw_error(std::string(what) + " cannot be recorded in a captured graph (it needs the host to wait for the device)");
}

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

namespace {
void* device_alloc_global(int device, size_t bytes, size_t cls);
}

void* device_alloc(int device, size_t bytes) {
  check_index(device);
  size_t cls = size_class(bytes);
  Graph* g = tl_alloc_graph && tl_alloc_graph->device == device ? tl_alloc_graph : nullptr;
  if (!g) return device_alloc_global(device, bytes, cls);
  DevicePool& P = pool(device);
  {
    std::lock_guard<std::mutex> lock(P.mu);
    auto it = g->free_blocks.find(cls);
    if (it != g->free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      return p;  // still counted in use: reserved for the graph
    }
  }
  void* p = device_alloc_global(device, bytes, cls);
  std::lock_guard<std::mutex> lock(P.mu);
  P.graph_owned[p] = g;
  g->blocks.emplace_back(p, cls);
  return p;
}

namespace {
void* device_alloc_global(int device, size_t bytes, size_t cls) {
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
}  // namespace

void device_free(int device, void* p, size_t bytes) {
  if (!p) return;
  // Storage is released from the JS thread or the queue thread after the op that last used it
  // was enqueued; all work on a device goes through one stream, so reuse is stream-ordered.
  size_t cls = size_class(bytes);
  DevicePool& P = pool(device);
  std::lock_guard<std::mutex> lock(P.mu);
  if (!P.graph_owned.empty()) {
    auto it = P.graph_owned.find(p);
    if (it != P.graph_owned.end()) {  // back to its graph's pool, not to the shared cache
      it->second->free_blocks[cls].push_back(p);
      return;
    }
  }
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
  // cudaStreamSynchronize / cudaFree would invalidate a capture in progress; keep the cache.
  if (P.capturing.load() > 0) return;
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

// No stream sync: from pageable memory, cudaMemcpyAsync returns once the source has been
// staged (CUDA runtime API "API synchronization behavior"), so the host buffer may go away;
// the copy itself stays ordered on the device's stream, and the queue thread runs ahead.
void copy_h2d(int device, void* dst, const void* src, size_t bytes) {
  refuse_while_capturing("a host-to-device copy");
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream(device)), "copy to device");
}

void copy_d2h(int device, void* dst, const void* src, size_t bytes) {
  refuse_while_capturing("a device-to-host copy");
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream(device)), "copy to host");
  check(cudaStreamSynchronize(stream(device)), "copy to host");
}

void copy_d2d(int device, void* dst, const void* src, size_t bytes) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream(device)), "copy on device");
}

void synchronize(int device) {
  refuse_while_capturing("synchronize");
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamSynchronize(stream(device)), "synchronize");
}

// ------------------------------------------------------------------ graphs

Graph* graph_create(int device) {
  check_index(device);
  auto* g = new Graph();
  g->device = device;
  return g;
}

void graph_alloc_scope(Graph* g) { tl_alloc_graph = g; }

bool graph_owns(Graph* g, const void* p) {
  DevicePool& P = pool(g->device);
  std::lock_guard<std::mutex> lock(P.mu);
  auto it = P.graph_owned.find(const_cast<void*>(p));
  return it != P.graph_owned.end() && it->second == g;
}

void graph_begin_capture(Graph* g) {
  check(cudaSetDevice(g->device), "cudaSetDevice");
  // Relaxed: other threads (the JS thread's allocator) may call cudaMalloc meanwhile.
  check(cudaStreamBeginCapture(stream(g->device), cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  pool(g->device).capturing.fetch_add(1);
  tl_capturing = true;
  tl_alloc_graph = g;  // split-K / norm workspaces allocated by the recorded ops
}

std::string graph_end_capture(Graph* g, const std::string& recording_error) {
  if (!tl_capturing) return recording_error.empty() ? "the stream capture did not start" : recording_error;
  tl_capturing = false;
  tl_alloc_graph = nullptr;
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamEndCapture(stream(g->device), &graph);
  pool(g->device).capturing.fetch_sub(1);
  std::string err = recording_error;
  if (e != cudaSuccess && err.empty()) err = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e);
  cudaGetLastError();  // a failed capture leaves a non-sticky error behind
  if (err.empty() && !graph) err = "cudaStreamEndCapture returned no graph";
  if (err.empty()) {
    cudaGraphExec_t exec = nullptr;
    e = cudaGraphInstantiate(&exec, graph, 0);
    if (e != cudaSuccess) {
      err = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e);
      cudaGetLastError();
    } else {
      g->exec = exec;
      cudaGraphUpload(exec, stream(g->device));  // optional: makes the first replay cheaper
      cudaGetLastError();
    }
  }
  if (graph) {
    if (g->exec) g->graph = graph;
    else cudaGraphDestroy(graph);
  }
  return err;
}

void graph_launch(Graph* g) {
  if (!g->exec) throw_error("graph launch: the graph was not instantiated");
  check(cudaGraphLaunch(g->exec, stream(g->device)), "cudaGraphLaunch");
}

void graph_destroy(Graph* g) {
  if (!g) return;
  // An executable graph destroyed while a replay is in flight is freed when that replay
  // completes; the pool's blocks go back to the cache, whose next users are ordered after the
  // replay on the same stream.
  if (g->exec) cudaGraphExecDestroy(g->exec);
  if (g->graph) cudaGraphDestroy(g->graph);
  cudaGetLastError();
  DevicePool& P = pool(g->device);
  {
    std::lock_guard<std::mutex> lock(P.mu);
    for (auto& b : g->blocks) P.graph_owned.erase(b.first);
    // blocks still held by live tensors (the graph's outputs) return to the cache when freed
    for (auto& kv : g->free_blocks)
      for (void* p : kv.second) {
        P.stats.bytes_in_use -= kv.first;
        P.stats.bytes_cached += kv.first;
        P.free_blocks[kv.first].push_back(p);
      }
  }
  if (tl_alloc_graph == g) tl_alloc_graph = nullptr;
  delete g;
}

}  // namespace dk::cuda
