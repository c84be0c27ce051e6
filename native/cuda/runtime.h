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

}  // namespace dk::cuda
