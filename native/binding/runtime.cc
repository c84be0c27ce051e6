// Runtime information and control: devices, memory statistics, queue sync, build flags.
#include <thread>

#include "../core/allocator.h"
#include "../core/op_profile.h"
#include "../core/thread_pool.h"
#include "../cpu/cpu_features.h"
#include "common.h"

namespace dk::binding {
namespace {

Napi::Value Devices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array list = Napi::Array::New(env);
  Napi::Object cpu_dev = Napi::Object::New(env);
  cpu_dev.Set("type", "cpu");
  cpu_dev.Set("threads", Napi::Number::New(env, num_threads()));
  cpu_dev.Set("isa", cpu::isa_description());
  list.Set(0u, cpu_dev);
#ifdef DK_WITH_CUDA
  for (int i = 0; i < cuda::device_count(); i++) {
    cuda::DeviceInfo d = cuda::device_info(i);
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", "cuda");
    o.Set("index", Napi::Number::New(env, i));
    o.Set("name", d.name);
    o.Set("memoryBytes", Napi::Number::New(env, static_cast<double>(d.memory_bytes)));
    o.Set("capability", std::to_string(d.major) + "." + std::to_string(d.minor));
    o.Set("multiprocessors", Napi::Number::New(env, d.multiprocessors));
    list.Set(list.Length(), o);
  }
#endif
  return list;
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  const char* op = "memoryStats";
  Device d = device_arg(info, 0, op, "device");
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int64_t in_use = 0, peak = 0, cached = 0;
  if (d.is_cpu()) {
    AllocatorStats s = cpu_allocator_stats();
    in_use = s.bytes_in_use; peak = s.peak_bytes; cached = s.bytes_cached;
  } else {
    DK_CUDA_ONLY(cuda::MemoryStats s = cuda::memory_stats(d.index); in_use = s.bytes_in_use; peak = s.peak_bytes;
                 cached = s.bytes_cached);
  }
  o.Set("bytesInUse", Napi::Number::New(env, static_cast<double>(in_use)));
  o.Set("peakBytes", Napi::Number::New(env, static_cast<double>(peak)));
  o.Set("bytesCached", Napi::Number::New(env, static_cast<double>(cached)));
  return o;
}

Napi::Value ResetPeak(const Napi::CallbackInfo& info) {
  Device d = device_arg(info, 0, "resetPeakMemory", "device");
  if (d.is_cpu()) cpu_allocator_reset_peak();
  else DK_CUDA_ONLY(cuda::reset_peak(d.index));
  return info.Env().Undefined();
}

Napi::Value EmptyCache(const Napi::CallbackInfo& info) {
  Device d = device_arg(info, 0, "emptyCache", "device");
  if (d.is_cpu()) cpu_allocator_empty_cache();
  else DK_CUDA_ONLY(cuda::empty_cache(d.index));
  return info.Env().Undefined();
}

// Resolves once everything enqueued on the device so far has run (without blocking JS).
Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Device d = device_arg(info, 0, "synchronize", "device");
  check_not_capturing("synchronize", d);
  auto deferred = std::make_shared<Napi::Promise::Deferred>(Napi::Promise::Deferred::New(env));
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                            "diffusekit.sync", 0, 1);
  enqueue(d, "synchronize", {}, {}, [d, deferred, tsfn]() mutable {
    std::string err;
    if (d.is_cuda()) {
      try { DK_CUDA_ONLY(cuda::synchronize(d.index)); } catch (const std::exception& e) { err = e.what(); }
    }
    auto* msg = new std::string(err);
    tsfn.BlockingCall(msg, [deferred](Napi::Env env, Napi::Function, std::string* m) {
      if (m->empty()) deferred->Resolve(env.Undefined());
      else deferred->Reject(Napi::Error::New(env, *m).Value());
      delete m;
    });
    tsfn.Release();
  });
  return deferred->Promise();
}

Napi::Value QueueDepth(const Napi::CallbackInfo& info) {
  Device d = device_arg(info, 0, "queueDepth", "device");
  return Napi::Number::New(info.Env(), static_cast<double>(queue_depth(d)));
}

// opProfile(enable?: boolean) -> [{op, count, ms}] totals so far; a boolean first turns timing
// on (clearing the totals) or off.
Napi::Value OpProfile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsBoolean()) throw_type("opProfile: enable must be a boolean");
    op_profile::set_enabled(info[0].As<Napi::Boolean>().Value());
  }
  std::vector<op_profile::Entry> entries = op_profile::snapshot();
  Napi::Array out = Napi::Array::New(env, entries.size());
  for (size_t i = 0; i < entries.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("op", entries[i].op);
    o.Set("count", Napi::Number::New(env, static_cast<double>(entries[i].count)));
    o.Set("ms", Napi::Number::New(env, entries[i].ms));
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#ifdef DK_WITH_CUDA
  o.Set("cuda", true);
  o.Set("cudaDevices", Napi::Number::New(env, cuda::device_count()));
#else
  o.Set("cuda", false);
  o.Set("cudaDevices", Napi::Number::New(env, 0));
#endif
#ifdef DK_X86
  o.Set("x86", true);
#else
  o.Set("x86", false);
#endif
  o.Set("compiler", __VERSION__);
  o.Set("threads", Napi::Number::New(env, num_threads()));
  o.Set("isa", cpu::isa_description());
  return o;
}

}  // namespace

void register_runtime(Napi::Env env, Napi::Object exports) {
  DK_EXPORT(exports, "devices", Devices);
  DK_EXPORT(exports, "memoryStats", MemoryStats);
  DK_EXPORT(exports, "resetPeakMemory", ResetPeak);
  DK_EXPORT(exports, "emptyCache", EmptyCache);
  DK_EXPORT(exports, "synchronize", Synchronize);
  DK_EXPORT(exports, "queueDepth", QueueDepth);
  DK_EXPORT(exports, "opProfile", OpProfile);
  DK_EXPORT(exports, "buildInfo", BuildInfo);
}

}  // namespace dk::binding
