// Caching host allocator: 64-byte aligned blocks, reused by size class so the hot loop of a
// denoising step does not hit malloc. Counts bytes handed out (in use) and their peak.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dk {

struct AllocatorStats {
  int64_t bytes_in_use = 0;   // bytes currently held by live storages
  int64_t peak_bytes = 0;     // high-water mark of bytes_in_use since start or reset
  int64_t bytes_cached = 0;   // freed blocks kept for reuse
};

// Throws dk::Error(OutOfMemory) when the system refuses.
void* cpu_alloc(size_t bytes);
void cpu_free(void* p, size_t bytes);
AllocatorStats cpu_allocator_stats();
void cpu_allocator_reset_peak();
void cpu_allocator_empty_cache();

// Size actually reserved for a request (size classes); exposed for tests.
size_t cpu_alloc_size_class(size_t bytes);

}  // namespace dk
