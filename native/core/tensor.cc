#include "tensor.h"

#include <cstdlib>

#include "allocator.h"
#include "error.h"

#ifdef DK_WITH_CUDA
#include "../cuda/runtime.h"
#endif

namespace dk {

bool parse_device(const std::string& s, Device* out) {
  if (s == "cpu") { *out = Device{Device::CPU, 0}; return true; }
  if (s == "cuda") { *out = Device{Device::CUDA, 0}; return true; }
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9) {
    int idx = 0;
    for (size_t i = 5; i < s.size(); i++) {
      if (s[i] < '0' || s[i] > '9') return false;
      idx = idx * 10 + (s[i] - '0');
    }
    *out = Device{Device::CUDA, idx};
    return true;
  }
  return false;
}

Storage::Storage(size_t bytes, Device device, bool lazy)
    : bytes_(bytes), lazy_(lazy && device.is_cpu() && bytes > 0), device_(device) {
  if (lazy_) return;
  if (device.is_cpu()) {
    data_ = cpu_alloc(bytes);
  } else {
#ifdef DK_WITH_CUDA
    data_ = cuda::device_alloc(device.index, bytes);
#else
    throw_error("this build of diffusekit has no CUDA backend");
#endif
  }
}

void* Storage::materialize() const {
  std::lock_guard<std::mutex> lock(mu_);
  void* p = data_.load(std::memory_order_relaxed);
  if (!p) {
    p = cpu_alloc(bytes_);
    data_.store(p, std::memory_order_release);
  }
  return p;
}

Storage::~Storage() {
  void* p = data_.load(std::memory_order_acquire);
  if (device_.is_cpu()) {
    cpu_free(p, bytes_);  // null (a lazy storage never used) is a no-op
  } else {
#ifdef DK_WITH_CUDA
    cuda::device_free(device_.index, p, bytes_);
#endif
  }
}

void Storage::set_error(const std::string& e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!failed_) { failed_ = true; error_ = e; }
}
bool Storage::failed() const { std::lock_guard<std::mutex> lock(mu_); return failed_; }
std::string Storage::error() const { std::lock_guard<std::mutex> lock(mu_); return error_; }

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int64_t i = ndim() - 1; i >= 0; i--) {
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; i--) { st[i] = s; s *= shape[i]; }
  return st;
}

int64_t checked_numel(const Shape& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw_range(what + ": negative dimension in shape " + shape_str(shape));
    if (d != 0 && n > kMaxElements / d)
      throw_range(what + ": shape " + shape_str(shape) + " has too many elements");
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

Tensor empty_tensor(const Shape& shape, DType dtype, Device device, bool lazy) {
  int64_t n = checked_numel(shape, "tensor");
  Tensor t;
  t.storage = std::make_shared<Storage>(static_cast<size_t>(n) * dtype_size(dtype), device, lazy);
  t.shape = shape;
  t.strides = contiguous_strides(shape);
  t.dtype = dtype;
  return t;
}

}  // namespace dk
