// Module entry. Context-aware: each environment (main thread, worker_threads) gets its own
// Tensor class; native queues and allocators are process-wide and thread-safe.
#include "common.h"

namespace dk::binding {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  Napi::Function ctor = NativeTensor::Define(env);
  data->tensor_ctor = Napi::Persistent(ctor);
  env.SetInstanceData<AddonData>(data);
  exports.Set("NativeTensor", ctor);
  register_tensor_ops(env, exports);
  register_math_ops(env, exports);
  register_nn_ops(env, exports);
  register_grad_ops(env, exports);
  register_runtime(env, exports);
  register_bench(env, exports);
  register_graph(env, exports);
  return exports;
}

}  // namespace dk::binding

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return dk::binding::Init(env, exports); }

NODE_API_MODULE(diffusekit, InitAddon)
