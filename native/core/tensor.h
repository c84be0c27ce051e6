// Tensor metadata over a Storage: shape, strides (in elements), dtype and byte offset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dtype.h"
#include "storage.h"

namespace dk {

using Shape = std::vector<int64_t>;

// Largest element count a tensor may have; keeps byte sizes far from int64 overflow.
constexpr int64_t kMaxElements = int64_t(1) << 40;

struct Tensor {
  StoragePtr storage;
  int64_t offset = 0;  // bytes from storage->data()
  Shape shape;
  Shape strides;
  DType dtype = DType::F32;

  Device device() const { return storage->device(); }
  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool is_contiguous() const;
  void* data() const { return static_cast<char*>(storage->data()) + offset; }
  template <typename T> T* ptr() const { return static_cast<T*>(data()); }
  int64_t size(int64_t d) const { return shape[d < 0 ? d + ndim() : d]; }
};

Shape contiguous_strides(const Shape& shape);
// Element count of a shape; throws RangeError (naming `what`) on negative sizes or overflow.
int64_t checked_numel(const Shape& shape, const std::string& what);
std::string shape_str(const Shape& s);

// New contiguous tensor on `device` (memory uninitialised). `lazy`: on the CPU, memory is taken
// at the first data() (see Storage).
Tensor empty_tensor(const Shape& shape, DType dtype, Device device, bool lazy = false);

}  // namespace dk
