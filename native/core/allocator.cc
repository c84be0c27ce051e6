#include "allocator.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "error.h"

namespace dk {
namespace {

constexpr size_t kAlign = 64;
// Freed blocks beyond this many bytes are returned to the system instead of cached.
constexpr int64_t kMaxCached = int64_t(2) << 30;

struct Pool {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;  // size class -> blocks
  AllocatorStats stats;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: storages may be freed during process exit
  return *p;
}

}  // namespace

size_t cpu_alloc_size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= 4096) {
    size_t s = kAlign;
    while (s < bytes) s <<= 1;
    return s;
  }
  // Above 4 KiB: round to 1/8 of the next power of two, so waste stays under 12.5%.
  size_t p = 4096;
  while (p < bytes) p <<= 1;
  size_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

void* cpu_alloc(size_t bytes) {
  size_t cls = cpu_alloc_size_class(bytes);
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> lock(P.mu);
    auto it = P.free_blocks.find(cls);
    if (it != P.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      P.stats.bytes_cached -= static_cast<int64_t>(cls);
      P.stats.bytes_in_use += static_cast<int64_t>(cls);
      if (P.stats.bytes_in_use > P.stats.peak_bytes) P.stats.peak_bytes = P.stats.bytes_in_use;
      return p;
    }
  }
  void* p = std::aligned_alloc(kAlign, cls);
  if (!p) {
    cpu_allocator_empty_cache();
    p = std::aligned_alloc(kAlign, cls);
  }
  if (!p) throw_oom("out of host memory allocating " + std::to_string(bytes) + " bytes");
  std::lock_guard<std::mutex> lock(P.mu);
  P.stats.bytes_in_use += static_cast<int64_t>(cls);
  if (P.stats.bytes_in_use > P.stats.peak_bytes) P.stats.peak_bytes = P.stats.bytes_in_use;
  return p;
}

void cpu_free(void* p, size_t bytes) {
  if (!p) return;
  size_t cls = cpu_alloc_size_class(bytes);
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mu);
  P.stats.bytes_in_use -= static_cast<int64_t>(cls);
  if (P.stats.bytes_cached + static_cast<int64_t>(cls) > kMaxCached) {
    std::free(p);
    return;
  }
  P.free_blocks[cls].push_back(p);
  P.stats.bytes_cached += static_cast<int64_t>(cls);
}

AllocatorStats cpu_allocator_stats() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mu);
  return P.stats;
}

void cpu_allocator_reset_peak() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mu);
  P.stats.peak_bytes = P.stats.bytes_in_use;
}

void cpu_allocator_empty_cache() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mu);
  for (auto& kv : P.free_blocks)
    for (void* p : kv.second) std::free(p);
  P.free_blocks.clear();
  P.stats.bytes_cached = 0;
}

}  // namespace dk
