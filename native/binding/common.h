// Shared pieces of the N-API binding: the Tensor wrapper, argument readers that throw
// TypeError/RangeError naming the op and argument, and op dispatch to the device queue.
#pragma once
#include <napi.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/queue.h"
#include "../core/tensor.h"

namespace dk::binding {

// ---- the JS handle around a dk::Tensor
class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, Tensor t);
  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;

  bool disposed() const { return !tensor_.has_value(); }
  const Tensor& tensor() const { return *tensor_; }

 private:
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value Strides(const Napi::CallbackInfo& info);
  Napi::Value DTypeName(const Napi::CallbackInfo& info);
  Napi::Value DeviceName(const Napi::CallbackInfo& info);
  Napi::Value NBytes(const Napi::CallbackInfo& info);
  Napi::Value IsDisposed(const Napi::CallbackInfo& info);
  Napi::Value IsContiguous(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  void release();

  std::optional<Tensor> tensor_;
  int64_t external_bytes_ = 0;
};

// Per-environment state (worker_threads each get their own).
struct AddonData {
  Napi::FunctionReference tensor_ctor;
};

// ---- argument readers; `op` and `name` go into error messages
const Tensor& tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::optional<Tensor> opt_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::vector<Tensor> tensor_list_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
Shape shape_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::vector<int64_t> int_list_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
double number_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::string string_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
DType dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
Device device_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);

// ---- checks
// Float compute dtypes: float32 everywhere; float16/bfloat16 on CUDA.
// float32 anywhere; float16/bfloat16 on CUDA; bfloat16 on the CPU too where the op passes
// cpu_bf16 = true (its CPU kernel reads and writes bfloat16).
void check_compute_dtype(const char* op, const char* name, const Tensor& t, bool cpu_bf16 = false);
void check_same(const char* op, const char* name, const Tensor& ref, const Tensor& t);  // device + dtype
void check_rank(const char* op, const char* name, const Tensor& t, int64_t min_rank, int64_t max_rank);
void check_device_usable(const char* op, Device d);
int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim);

// A contiguous tensor with t's values (t itself when already contiguous; else a queued copy).
Tensor contiguous(const Tensor& t);
// Output tensor like `ref` (device, dtype) with `shape`.
Tensor new_like(const Tensor& ref, const Shape& shape);

// Enqueues on `d`'s queue: `cpu_fn` on the CPU backend, `cuda_fn` on a CUDA device.
void run_op(const char* op, Device d, std::vector<Tensor> ins, std::vector<Tensor> outs,
            std::function<void()> cpu_fn, std::function<void()> cuda_fn);

// Wraps an N-API entry so dk::Error / std exceptions become the right JS exception.
using Entry = Napi::Value (*)(const Napi::CallbackInfo&);
Napi::Value guarded(const Napi::CallbackInfo& info, Entry fn);
#define DK_EXPORT(exports, name, fn)                                                                   \
  exports.Set(name, Napi::Function::New(                                                               \
                        env, [](const Napi::CallbackInfo& info) { return ::dk::binding::guarded(info, fn); }, \
                        name))

// Registration per family.
void register_tensor_ops(Napi::Env env, Napi::Object exports);
void register_math_ops(Napi::Env env, Napi::Object exports);
void register_nn_ops(Napi::Env env, Napi::Object exports);
void register_grad_ops(Napi::Env env, Napi::Object exports);
void register_runtime(Napi::Env env, Napi::Object exports);
void register_bench(Napi::Env env, Napi::Object exports);
void register_graph(Napi::Env env, Napi::Object exports);

}  // namespace dk::binding

#ifdef DK_WITH_CUDA
#include "../cuda/kernels.h"
#include "../cuda/runtime.h"
#define DK_CUDA_ONLY(...) __VA_ARGS__
#else
#define DK_CUDA_ONLY(...) ::dk::throw_error("this build of diffusekit has no CUDA backend")
#endif
