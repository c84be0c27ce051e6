// Tensor creation, transfers and casts, and views: fromBuffer, zeros, full, randn, to, reshape,
// permute, slice, concat, contiguous.
#include <cstring>

#include "../core/half.h"
#include "../cpu/kernels.h"
#include "common.h"

namespace dk::binding {
namespace {

Napi::Value FromBuffer(const Napi::CallbackInfo& info) {
  const char* op = "fromBuffer";
  if (!info[0].IsTypedArray() && !info[0].IsArrayBuffer() && !info[0].IsDataView())
    throw_type("fromBuffer: data must be a TypedArray, DataView or ArrayBuffer");
  Shape shape = shape_arg(info, 1, op, "shape");
  DType dt = dtype_arg(info, 2, op, "dtype");
  Device dev = device_arg(info, 3, op, "device");
  const uint8_t* src;
  size_t len;
  if (info[0].IsArrayBuffer()) {
    auto ab = info[0].As<Napi::ArrayBuffer>();
    src = static_cast<const uint8_t*>(ab.Data());
    len = ab.ByteLength();
  } else {
    auto ta = info[0].As<Napi::TypedArray>();
    src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    len = ta.ByteLength();
  }
  size_t need = static_cast<size_t>(checked_numel(shape, "fromBuffer: shape")) * dtype_size(dt);
  if (len != need)
    throw_range("fromBuffer: data has " + std::to_string(len) + " bytes but shape " + shape_str(shape) + " of " +
                dtype_name(dt) + " needs " + std::to_string(need));
  Tensor host = empty_tensor(shape, dt, Device{});
  if (need) std::memcpy(host.data(), src, need);
  host.storage->host_ready = true;
  if (dev.is_cpu()) return NativeTensor::Wrap(info.Env(), host);
  check_not_capturing(op, dev);
  Tensor out = empty_tensor(shape, dt, dev);
  enqueue(dev, "fromBuffer", {host}, {out}, [host, out] {
    DK_CUDA_ONLY(cuda::copy_h2d(out.device().index, out.data(), host.data(), host.nbytes()));
  });
  return NativeTensor::Wrap(info.Env(), out);
}

// Fills `n` elements of dtype `dt` at p with `value` (host memory).
void fill_host(void* p, DType dt, double value, int64_t n) {
  switch (dt) {
    case DType::F32: { float v = static_cast<float>(value); for (int64_t i = 0; i < n; i++) static_cast<float*>(p)[i] = v; break; }
    case DType::F16: { uint16_t v = f32_to_f16(static_cast<float>(value)); for (int64_t i = 0; i < n; i++) static_cast<uint16_t*>(p)[i] = v; break; }
    case DType::BF16: { uint16_t v = f32_to_bf16(static_cast<float>(value)); for (int64_t i = 0; i < n; i++) static_cast<uint16_t*>(p)[i] = v; break; }
    case DType::I32: { int32_t v = static_cast<int32_t>(value); for (int64_t i = 0; i < n; i++) static_cast<int32_t*>(p)[i] = v; break; }
    case DType::I64: { int64_t v = static_cast<int64_t>(value); for (int64_t i = 0; i < n; i++) static_cast<int64_t*>(p)[i] = v; break; }
    case DType::U8: { uint8_t v = static_cast<uint8_t>(value); std::memset(p, v, n); break; }
    default: break;
  }
}

Napi::Value Full(const Napi::CallbackInfo& info) {
  const char* op = "full";
  Shape shape = shape_arg(info, 0, op, "shape");
  double value = number_arg(info, 1, op, "value");
  DType dt = dtype_arg(info, 2, op, "dtype");
  Device dev = device_arg(info, 3, op, "device");
  if (dev.is_cuda()) check_not_capturing(op, dev);
  Tensor host = empty_tensor(shape, dt, Device{});
  Tensor out = dev.is_cpu() ? host : empty_tensor(shape, dt, dev);
  enqueue(Device{}, op, {}, {host}, [host, dt, value] { fill_host(host.data(), dt, value, host.numel()); });
  if (dev.is_cuda()) {
    auto wait = wait_for_queue(Device{});
    enqueue(dev, op, {host}, {out}, [host, out, wait] {
      wait();
      DK_CUDA_ONLY(cuda::copy_h2d(out.device().index, out.data(), host.data(), host.nbytes()));
    });
  }
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Randn(const Napi::CallbackInfo& info) {
  const char* op = "randn";
  Shape shape = shape_arg(info, 0, op, "shape");
  int64_t seed = int_arg(info, 1, op, "seed");
  int64_t offset = int_arg(info, 2, op, "offset");
  DType dt = dtype_arg(info, 3, op, "dtype");
  Device dev = device_arg(info, 4, op, "device");
  if (!dtype_is_float(dt)) throw_type("randn: dtype must be a float type, got " + std::string(dtype_name(dt)));
  if (seed < 0 || offset < 0) throw_range("randn: seed and offset must be non-negative");
  Tensor out = empty_tensor(shape, dt, dev);
  if (dev.is_cpu() && dt != DType::F32) throw_type("randn: dtype must be float32 on cpu (cast afterwards)");
  run_op(op, dev, {}, {out},
         [=] { cpu::randn_philox(seed, offset, out.ptr<float>(), out.numel()); },
         [=] { DK_CUDA_ONLY(cuda::randn_philox(dev.index, dt, seed, offset, out.data(), out.numel())); });
  return NativeTensor::Wrap(info.Env(), out);
}

// Same-device dtype conversion of a contiguous tensor.
Tensor cast_on_device(const Tensor& src, DType dt) {
  Tensor out = empty_tensor(src.shape, dt, src.device());
  run_op("to", src.device(), {src}, {out},
         [=] { cpu::cast(static_cast<int>(src.dtype), src.data(), static_cast<int>(dt), out.data(), src.numel()); },
         [=] { DK_CUDA_ONLY(cuda::cast(src.device().index, src.dtype, src.data(), dt, out.data(), src.numel())); });
  return out;
}

Napi::Value To(const Napi::CallbackInfo& info) {
  const char* op = "to";
  Tensor t = contiguous(tensor_arg(info, 0, op, "input"));
  Device dev = device_arg(info, 1, op, "device");
  DType dt = dtype_arg(info, 2, op, "dtype");
  Device from = t.device();
  if (from == dev) return NativeTensor::Wrap(info.Env(), t.dtype == dt ? t : cast_on_device(t, dt));
  check_not_capturing(op, from);
  check_not_capturing(op, dev);
  if (from.is_cpu()) {
    // Cast on the host first (cheaper to upload half-size data), then copy up.
    Tensor host = t.dtype == dt ? t : cast_on_device(t, dt);
    Tensor out = empty_tensor(t.shape, dt, dev);
    auto wait = wait_for_queue(from);
    enqueue(dev, op, {host}, {out}, [host, out, wait] {
      wait();
      DK_CUDA_ONLY(cuda::copy_h2d(out.device().index, out.data(), host.data(), host.nbytes()));
    });
    return NativeTensor::Wrap(info.Env(), out);
  }
  // From a GPU: copy down in the source dtype, then cast on the host; GPU -> GPU goes via the host.
  Tensor host = empty_tensor(t.shape, t.dtype, Device{});
  auto wait = wait_for_queue(from);
  enqueue(Device{}, op, {t}, {host}, [t, host, wait] {
    wait();
    DK_CUDA_ONLY(cuda::copy_d2h(t.device().index, host.data(), t.data(), t.nbytes()));
  });
  Tensor on_host = host.dtype == dt ? host : cast_on_device(host, dt);
  if (dev.is_cpu()) return NativeTensor::Wrap(info.Env(), on_host);
  Tensor out = empty_tensor(t.shape, dt, dev);
  auto wait2 = wait_for_queue(Device{});
  enqueue(dev, op, {on_host}, {out}, [on_host, out, wait2] {
    wait2();
    DK_CUDA_ONLY(cuda::copy_h2d(out.device().index, out.data(), on_host.data(), on_host.nbytes()));
  });
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Reshape(const Napi::CallbackInfo& info) {
  const char* op = "reshape";
  const Tensor& t = tensor_arg(info, 0, op, "input");
  std::vector<int64_t> want = int_list_arg(info, 1, op, "shape");
  if (want.size() > 8) throw_range("reshape: at most 8 dims");
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < want.size(); i++) {
    if (want[i] == -1) {
      if (infer >= 0) throw_range("reshape: only one dimension can be -1");
      infer = static_cast<int>(i);
    } else if (want[i] < 0) {
      throw_range("reshape: invalid dimension " + std::to_string(want[i]));
    } else {
      known *= want[i];
    }
  }
  const int64_t n = t.numel();
  if (infer >= 0) {
    if (known == 0 || n % known) throw_range("reshape: cannot infer -1 for shape " + shape_str(want) + " from " + shape_str(t.shape));
    want[infer] = n / known;
  }
  if (checked_numel(want, "reshape: shape") != n)
    throw_range("reshape: shape " + shape_str(want) + " has " + std::to_string(checked_numel(want, "reshape")) +
                " elements but the input " + shape_str(t.shape) + " has " + std::to_string(n));
  Tensor out = contiguous(t);  // a view when already contiguous
  out.shape = want;
  out.strides = contiguous_strides(want);
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Permute(const Napi::CallbackInfo& info) {
  const char* op = "permute";
  Tensor t = tensor_arg(info, 0, op, "input");
  std::vector<int64_t> dims = int_list_arg(info, 1, op, "dims");
  if (static_cast<int64_t>(dims.size()) != t.ndim())
    throw_range("permute: dims must list all " + std::to_string(t.ndim()) + " dimensions, got " + shape_str(dims));
  std::vector<bool> seen(t.ndim(), false);
  Tensor out = t;
  for (size_t i = 0; i < dims.size(); i++) {
    int64_t d = normalize_dim(op, dims[i], t.ndim());
    if (seen[d]) throw_range("permute: dimension " + std::to_string(d) + " appears twice");
    seen[d] = true;
    out.shape[i] = t.shape[d];
    out.strides[i] = t.strides[d];
  }
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Slice(const Napi::CallbackInfo& info) {
  const char* op = "slice";
  Tensor t = tensor_arg(info, 0, op, "input");
  int64_t dim = normalize_dim(op, int_arg(info, 1, op, "dim"), t.ndim());
  int64_t start = int_arg(info, 2, op, "start"), end = int_arg(info, 3, op, "end");
  int64_t step = info.Length() > 4 && !info[4].IsUndefined() ? int_arg(info, 4, op, "step") : 1;
  const int64_t size = t.shape[dim];
  if (start < 0) start += size;
  if (end < 0) end += size;
  if (step < 1) throw_range("slice: step must be >= 1, got " + std::to_string(step));
  if (start < 0 || end > size || start > end)
    throw_range("slice: range [" + std::to_string(start) + ", " + std::to_string(end) + ") is outside dim " +
                std::to_string(dim) + " of size " + std::to_string(size));
  Tensor out = t;
  out.offset += start * t.strides[dim] * static_cast<int64_t>(dtype_size(t.dtype));
  out.shape[dim] = (end - start + step - 1) / step;
  out.strides[dim] = t.strides[dim] * step;
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Concat(const Napi::CallbackInfo& info) {
  const char* op = "concat";
  std::vector<Tensor> ins = tensor_list_arg(info, 0, op, "tensors");
  if (ins.empty()) throw_range("concat: needs at least one tensor");
  const Tensor& ref = ins[0];
  int64_t dim = normalize_dim(op, int_arg(info, 1, op, "dim"), ref.ndim());
  Shape shape = ref.shape;
  shape[dim] = 0;
  for (size_t i = 0; i < ins.size(); i++) {
    check_same(op, "tensors", ref, ins[i]);
    if (ins[i].ndim() != ref.ndim()) throw_range("concat: tensors must have the same rank");
    for (int64_t d = 0; d < ref.ndim(); d++)
      if (d != dim && ins[i].shape[d] != ref.shape[d])
        throw_range("concat: tensor " + std::to_string(i) + " has shape " + shape_str(ins[i].shape) +
                    ", which differs from " + shape_str(ref.shape) + " outside dim " + std::to_string(dim));
    shape[dim] += ins[i].shape[dim];
  }
  Tensor out = new_like(ref, shape);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; d++) outer *= shape[d];
  for (int64_t d = dim + 1; d < ref.ndim(); d++) inner *= shape[d];
  const int64_t elem = dtype_size(ref.dtype);
  const int64_t dpitch = shape[dim] * inner * elem;
  int64_t offset = 0;
  for (const Tensor& raw : ins) {
    Tensor src = contiguous(raw);
    const int64_t width = src.shape[dim] * inner * elem;
    char* dst = static_cast<char*>(out.data()) + offset;
    run_op(op, out.device(), {src}, {out},
           [=] { cpu::copy_2d(dst, dpitch, src.data(), width, width, outer); },
           [=] { DK_CUDA_ONLY(cuda::copy_2d(out.device().index, dst, dpitch, src.data(), width, width, outer)); });
    offset += width;
  }
  return NativeTensor::Wrap(info.Env(), out);
}

Napi::Value Contiguous(const Napi::CallbackInfo& info) {
  return NativeTensor::Wrap(info.Env(), contiguous(tensor_arg(info, 0, "contiguous", "input")));
}

}  // namespace

void register_tensor_ops(Napi::Env env, Napi::Object exports) {
  DK_EXPORT(exports, "fromBuffer", FromBuffer);
  DK_EXPORT(exports, "full", Full);
  DK_EXPORT(exports, "randn", Randn);
  DK_EXPORT(exports, "to", To);
  DK_EXPORT(exports, "reshape", Reshape);
  DK_EXPORT(exports, "permute", Permute);
  DK_EXPORT(exports, "slice", Slice);
  DK_EXPORT(exports, "concat", Concat);
  DK_EXPORT(exports, "contiguous", Contiguous);
}

}  // namespace dk::binding
