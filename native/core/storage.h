// Reference-counted memory behind one or more tensors (views share it). Freed when the last
// tensor and the last queued op that uses it let go.
#pragma once
#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>

#include "device.h"

namespace dk {

class Storage {
 public:
  // Allocates `bytes` on `device`; throws dk::Error(OutOfMemory) when that fails. A lazy CPU
  // storage allocates on the first data() instead: op outputs are made lazy so that memory is
  // taken when the queue runs the op, not when JS enqueues it (JS runs far ahead of the queue,
  // and eager outputs would hold a whole forward pass's activations at once).
  Storage(size_t bytes, Device device, bool lazy = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const {
    void* p = data_.load(std::memory_order_acquire);
    return p || !lazy_ ? p : materialize();
  }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  // An op that should have written this storage failed on the queue. The error travels to
  // every op that reads it and to read-back, which rejects with it.
  void set_error(const std::string& e);
  bool failed() const;
  std::string error() const;

  // True when the contents were written synchronously at creation (fromBuffer), so the JS
  // thread may read them without waiting for the queue (e.g. to validate embedding ids).
  bool host_ready = false;

 private:
  void* materialize() const;  // allocates a lazy storage (thread-safe; may throw OutOfMemory)

  mutable std::atomic<void*> data_{nullptr};
  size_t bytes_ = 0;
  bool lazy_ = false;
  Device device_;
  mutable std::mutex mu_;
  std::string error_;
  bool failed_ = false;
};

using StoragePtr = std::shared_ptr<Storage>;

}  // namespace dk
