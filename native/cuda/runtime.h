// CUDA runtime services for the rest of the addon. Plain C++ header (no CUDA types), so core
// and binding code compiled by g++ can call it. Only built when DK_WITH_CUDA is defined.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dk::cuda {

// Number of usable GPUs; 0 when there is no driver or no device (never throws).
int device_count();

struct DeviceInfo {
  std::string name;
  int64_t memory_bytes = 0;
  int major = 0, minor = 0;
  int multiprocessors = 0;
};
DeviceInfo device_info(int device);

// Stream-ordered caching allocator. Throws dk::Error(OutOfMemory) when the card is full even
// after the cache was released.
void* device_alloc(int device, size_t bytes);
void device_free(int device, void* p, size_t bytes);

// A workspace from that cache, returned when the scope ends: once the kernels using it are
// enqueued, the block's next user is ordered after them on the device's stream.
struct Scratch {
  int device;
  void* ptr = nullptr;
  size_t bytes = 0;
  Scratch(int dev, size_t n) : device(dev), bytes(n) {
    if (n) ptr = device_alloc(dev, n);
  }
  ~Scratch() {
    if (ptr) device_free(device, ptr, bytes);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

struct MemoryStats {
  int64_t bytes_in_use = 0, peak_bytes = 0, bytes_cached = 0;
};
MemoryStats memory_stats(int device);
void reset_peak(int device);
void empty_cache(int device);

// Makes `device` current on the calling thread (the device's queue thread calls this once).
void bind_thread_to_device(int device);

// Copies on the device's stream and waits for them (host memory is pageable).
void copy_h2d(int device, void* dst, const void* src, size_t bytes);
void copy_d2h(int device, void* dst, const void* src, size_t bytes);
void copy_d2d(int device, void* dst, const void* src, size_t bytes);
void synchronize(int device);

// ---- CUDA graphs (stream capture), driven by native/core/queue.cc's capture_*.
// A Graph owns a memory pool: blocks allocated on its device while a thread's allocation scope
// is set to it stay reserved for the graph after they are freed, until graph_destroy() returns
// them to the device's cache (the graph's kernels keep using those addresses on every replay).
struct Graph;
Graph* graph_create(int device);
// Routes the calling thread's device_alloc() on the graph's device to its pool (nullptr: stop).
void graph_alloc_scope(Graph* g);
// Whether `p` is a block of g's pool.
bool graph_owns(Graph* g, const void* p);
// Queue thread: starts capturing the device stream (relaxed mode) and sets the thread's
// allocation scope; host<->device copies and synchronize() on this thread then throw.
void graph_begin_capture(Graph* g);
// Queue thread: ends the capture and instantiates the graph unless `recording_error` is set or
// the capture was invalidated; returns "" on success, else the reason.
std::string graph_end_capture(Graph* g, const std::string& recording_error);
// Queue thread: one replay on the device stream.
void graph_launch(Graph* g);
// Frees the executable graph (a replay in flight completes first) and returns the pool.
void graph_destroy(Graph* g);

}  // namespace dk::cuda
