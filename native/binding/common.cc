#include "common.h"

#include <cmath>
#include <cstring>

#include "../cpu/kernels.h"

namespace dk::binding {

// ------------------------------------------------------------------ NativeTensor

Napi::Function NativeTensor::Define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {
                         InstanceAccessor<&NativeTensor::Shape>("shape"),
                         InstanceAccessor<&NativeTensor::Strides>("strides"),
                         InstanceAccessor<&NativeTensor::DTypeName>("dtype"),
                         InstanceAccessor<&NativeTensor::DeviceName>("device"),
                         InstanceAccessor<&NativeTensor::NBytes>("nbytes"),
                         InstanceAccessor<&NativeTensor::IsDisposed>("disposed"),
                         InstanceAccessor<&NativeTensor::IsContiguous>("contiguous"),
                         InstanceMethod<&NativeTensor::Dispose>("dispose"),
                         InstanceMethod<&NativeTensor::Read>("read"),
                     });
}

Napi::Object NativeTensor::Wrap(Napi::Env env, Tensor t) {
  AddonData* data = env.GetInstanceData<AddonData>();
  Napi::Object obj = data->tensor_ctor.New({});
  NativeTensor* self = Unwrap(obj);
  self->external_bytes_ = static_cast<int64_t>(t.storage->bytes());
  self->tensor_ = std::move(t);
  // Tell V8 about native memory so GC pressure reflects it (safety net only).
  Napi::MemoryManagement::AdjustExternalMemory(env, self->external_bytes_);
  return obj;
}

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {}

NativeTensor::~NativeTensor() { tensor_.reset(); }

void NativeTensor::release() {
  if (!tensor_) return;
  tensor_.reset();
  Napi::MemoryManagement::AdjustExternalMemory(Env(), -external_bytes_);
  external_bytes_ = 0;
}

static Napi::Array to_js_array(Napi::Env env, const dk::Shape& s) {
  Napi::Array a = Napi::Array::New(env, s.size());
  for (size_t i = 0; i < s.size(); i++) a.Set(i, Napi::Number::New(env, static_cast<double>(s[i])));
  return a;
}

static void throw_disposed(Napi::Env env) { throw Napi::TypeError::New(env, "Tensor is disposed"); }

Napi::Value NativeTensor::Shape(const Napi::CallbackInfo& info) {
  if (disposed()) throw_disposed(info.Env());
  return to_js_array(info.Env(), tensor_->shape);
}
Napi::Value NativeTensor::Strides(const Napi::CallbackInfo& info) {
  if (disposed()) throw_disposed(info.Env());
  return to_js_array(info.Env(), tensor_->strides);
}
Napi::Value NativeTensor::DTypeName(const Napi::CallbackInfo& info) {
  if (disposed()) throw_disposed(info.Env());
  return Napi::String::New(info.Env(), dtype_name(tensor_->dtype));
}
Napi::Value NativeTensor::DeviceName(const Napi::CallbackInfo& info) {
  if (disposed()) throw_disposed(info.Env());
  return Napi::String::New(info.Env(), tensor_->device().str());
}
Napi::Value NativeTensor::NBytes(const Napi::CallbackInfo& info) {
  if (disposed()) throw_disposed(info.Env());
  return Napi::Number::New(info.Env(), static_cast<double>(tensor_->nbytes()));
}
Napi::Value NativeTensor::IsDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), disposed());
}
Napi::Value NativeTensor::IsContiguous(const Napi::CallbackInfo& info) {
  if (disposed()) throw_disposed(info.Env());
  return Napi::Boolean::New(info.Env(), tensor_->is_contiguous());
}
Napi::Value NativeTensor::Dispose(const Napi::CallbackInfo& info) {
  release();
  return info.Env().Undefined();
}

// Read-back: the bytes are written by the device queue straight into a fresh ArrayBuffer, and
// a thread-safe function resolves the promise on the JS thread when the queue gets there.
namespace {
struct ReadJob {
  Napi::Promise::Deferred deferred;
  Napi::Reference<Napi::ArrayBuffer> buffer;
  std::string error;
  explicit ReadJob(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};
}  // namespace

Napi::Value NativeTensor::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed()) throw_disposed(env);
  if (capture_open(tensor_->device()))
    throw Napi::Error::New(env, "read: values cannot be read back while " + tensor_->device().str() +
                                    " is capturing a graph (read after captureGraph() returns)");
  Tensor src = contiguous(*tensor_);
  auto* job = new ReadJob(env);
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, src.nbytes());
  job->buffer = Napi::Persistent(ab);
  void* dst = ab.Data();
  Napi::Promise promise = job->deferred.Promise();
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                            "diffusekit.read", 0, 1);
  enqueue(src.device(), "read", {}, {}, [src, dst, job, tsfn]() mutable {
    try {
      if (src.storage->failed()) {
        job->error = src.storage->error();
      } else if (src.device().is_cpu()) {
        std::memcpy(dst, src.data(), src.nbytes());
      } else {
        DK_CUDA_ONLY(cuda::copy_d2h(src.device().index, dst, src.data(), src.nbytes()));
      }
    } catch (const std::exception& e) {
      job->error = std::string("read: ") + e.what();
    }
    src = Tensor();  // drop the storage reference on the queue thread
    tsfn.BlockingCall(job, [](Napi::Env env, Napi::Function, ReadJob* j) {
      if (j->error.empty()) j->deferred.Resolve(j->buffer.Value());
      else j->deferred.Reject(Napi::Error::New(env, j->error).Value());
      j->buffer.Reset();
      delete j;
    });
    tsfn.Release();
  });
  return promise;
}

// ------------------------------------------------------------------ arguments

static std::string where(const char* op, const char* name) { return std::string(op) + ": " + name; }

const Tensor& tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Napi::Value v = info[i];
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->tensor_ctor.Value()))
    throw_type(where(op, name) + " must be a Tensor");
  NativeTensor* t = NativeTensor::Unwrap(v.As<Napi::Object>());
  if (t->disposed()) throw_type(where(op, name) + " is disposed");
  return t->tensor();
}

std::optional<Tensor> opt_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (info[i].IsUndefined() || info[i].IsNull()) return std::nullopt;
  return tensor_arg(info, i, op, name);
}

std::vector<Tensor> tensor_list_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (!info[i].IsArray()) throw_type(where(op, name) + " must be an array of Tensors");
  Napi::Array a = info[i].As<Napi::Array>();
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  std::vector<Tensor> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->tensor_ctor.Value()))
      throw_type(where(op, name) + "[" + std::to_string(k) + "] must be a Tensor");
    NativeTensor* t = NativeTensor::Unwrap(v.As<Napi::Object>());
    if (t->disposed()) throw_type(where(op, name) + "[" + std::to_string(k) + "] is disposed");
    out.push_back(t->tensor());
  }
  return out;
}

static int64_t to_int(Napi::Value v, const std::string& what) {
  if (!v.IsNumber()) throw_type(what + " must be an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d)) throw_type(what + " must be an integer, got " + std::to_string(d));
  if (std::fabs(d) > 9007199254740991.0) throw_range(what + " is out of range");
  return static_cast<int64_t>(d);
}

std::vector<int64_t> int_list_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (!info[i].IsArray()) throw_type(where(op, name) + " must be an array of integers");
  Napi::Array a = info[i].As<Napi::Array>();
  if (a.Length() > 16) throw_range(where(op, name) + " has too many entries (" + std::to_string(a.Length()) + ")");
  std::vector<int64_t> out;
  for (uint32_t k = 0; k < a.Length(); k++) out.push_back(to_int(a.Get(k), where(op, name) + "[" + std::to_string(k) + "]"));
  return out;
}

Shape shape_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Shape s = int_list_arg(info, i, op, name);
  if (s.size() > 8) throw_range(where(op, name) + " has rank " + std::to_string(s.size()) + "; at most 8 dims");
  checked_numel(s, where(op, name));
  return s;
}

double number_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (!info[i].IsNumber()) throw_type(where(op, name) + " must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  return to_int(info[i], where(op, name));
}

bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (!info[i].IsBoolean()) throw_type(where(op, name) + " must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

std::string string_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (!info[i].IsString()) throw_type(where(op, name) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

DType dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  std::string s = string_arg(info, i, op, name);
  DType t;
  if (!dtype_from_name(s, &t))
    throw_type(where(op, name) + " must be one of float32, float16, bfloat16, int32, int64, uint8; got \"" + s + "\"");
  return t;
}

Device device_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  std::string s = string_arg(info, i, op, name);
  Device d;
  if (!parse_device(s, &d)) throw_type(where(op, name) + " must be \"cpu\", \"cuda\" or \"cuda:N\"; got \"" + s + "\"");
  check_device_usable(op, d);
  return d;
}

// ------------------------------------------------------------------ checks

void check_device_usable(const char* op, Device d) {
  if (d.is_cpu()) return;
#ifdef DK_WITH_CUDA
  int n = cuda::device_count();
  if (d.index >= n)
    throw_range(std::string(op) + ": " + d.str() + " is not available (" + std::to_string(n) + " CUDA device(s) found)");
#else
  throw_range(std::string(op) + ": " + d.str() + " is not available: this build of diffusekit has no CUDA backend");
#endif
}

void check_compute_dtype(const char* op, const char* name, const Tensor& t, bool cpu_bf16) {
  if (t.dtype == DType::F32) return;
  if (t.device().is_cuda() && (t.dtype == DType::F16 || t.dtype == DType::BF16)) return;
  if (t.device().is_cpu() && cpu_bf16 && t.dtype == DType::BF16) return;
  throw_type(where(op, name) +
             (t.device().is_cpu() ? (cpu_bf16 ? " must be float32 or bfloat16 on cpu" : " must be float32 on cpu")
                                  : " must be float32, float16 or bfloat16") +
             ", got " + dtype_name(t.dtype) + " on " + t.device().str());
}

void check_same(const char* op, const char* name, const Tensor& ref, const Tensor& t) {
  if (t.device() != ref.device())
    throw_type(where(op, name) + " must be on " + ref.device().str() + ", got " + t.device().str());
  if (t.dtype != ref.dtype)
    throw_type(where(op, name) + " must be " + dtype_name(ref.dtype) + " like the input, got " + dtype_name(t.dtype));
}

void check_rank(const char* op, const char* name, const Tensor& t, int64_t min_rank, int64_t max_rank) {
  if (t.ndim() < min_rank || t.ndim() > max_rank)
    throw_range(where(op, name) + " must have " +
                (min_rank == max_rank ? std::to_string(min_rank) : std::to_string(min_rank) + " to " + std::to_string(max_rank)) +
                " dims, got shape " + shape_str(t.shape));
}

int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim) {
  if (dim < -ndim || dim >= ndim || ndim == 0)
    throw_range(std::string(op) + ": dim " + std::to_string(dim) + " is out of range for " + std::to_string(ndim) + " dims");
  return dim < 0 ? dim + ndim : dim;
}

// Op outputs: lazy on the CPU, so the queue allocates them when it reaches the op.
Tensor new_like(const Tensor& ref, const Shape& shape) { return empty_tensor(shape, ref.dtype, ref.device(), true); }

Tensor contiguous(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = new_like(t, t.shape);
  const int nd = static_cast<int>(t.ndim());
  run_op("contiguous", t.device(), {t}, {out},
         [=] { cpu::strided_copy(nd, t.shape.data(), t.data(), t.strides.data(), dtype_size(t.dtype), out.data()); },
         [=] { DK_CUDA_ONLY(cuda::strided_copy(t.device().index, nd, t.shape.data(), t.data(), t.strides.data(),
                                               dtype_size(t.dtype), out.data())); });
  return out;
}

void run_op(const char* op, Device d, std::vector<Tensor> ins, std::vector<Tensor> outs, std::function<void()> cpu_fn,
            std::function<void()> cuda_fn) {
  enqueue(d, op, std::move(ins), std::move(outs), d.is_cpu() ? std::move(cpu_fn) : std::move(cuda_fn));
}

Napi::Value guarded(const Napi::CallbackInfo& info, Entry fn) {
  Napi::Env env = info.Env();
  try {
    return fn(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    switch (e.kind) {
      case ErrorKind::Type: throw Napi::TypeError::New(env, e.what());
      case ErrorKind::Range: throw Napi::RangeError::New(env, e.what());
      case ErrorKind::OutOfMemory: {
        Napi::Error err = Napi::Error::New(env, e.what());
        err.Set("code", Napi::String::New(env, "ERR_OUT_OF_MEMORY"));
        throw err;
      }
      default: throw Napi::Error::New(env, e.what());
    }
  } catch (const std::bad_alloc&) {
    Napi::Error err = Napi::Error::New(env, "out of host memory");
    err.Set("code", Napi::String::New(env, "ERR_OUT_OF_MEMORY"));
    throw err;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

}  // namespace dk::binding
