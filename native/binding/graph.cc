// Graph capture entries (native/core/queue.h): graphBegin, graphEnd, graphLaunch, graphDispose,
// graphCapturing. lib/graph.ts builds captureGraph() on them.
#include "common.h"

namespace dk::binding {
namespace {

// The JS handle: an External holding the capture; collected handles release their recording.
struct GraphHandle {
  CapturePtr capture;
};

Napi::Value wrap_graph(Napi::Env env, CapturePtr c) {
  auto* h = new GraphHandle{std::move(c)};
  return Napi::External<GraphHandle>::New(env, h, [](Napi::Env, GraphHandle* g) {
    try {
      capture_release(g->capture);
    } catch (...) {
    }
    delete g;
  });
}

GraphHandle& graph_arg(const Napi::CallbackInfo& info, size_t i, const char* op) {
  if (!info[i].IsExternal()) throw_type(std::string(op) + ": graph must be a handle from graphBegin()");
  return *info[i].As<Napi::External<GraphHandle>>().Data();
}

// graphBegin(device) -> handle: opens a capture on the device.
Napi::Value GraphBegin(const Napi::CallbackInfo& info) {
  Device d = device_arg(info, 0, "graphBegin", "device");
  return wrap_graph(info.Env(), capture_begin(d));
}

// graphEnd(handle) -> null when the graph can be replayed, else the reason it cannot.
Napi::Value GraphEnd(const Napi::CallbackInfo& info) {
  GraphHandle& g = graph_arg(info, 0, "graphEnd");
  std::string err = capture_end(g.capture);
  if (err.empty()) return info.Env().Null();
  return Napi::String::New(info.Env(), err);
}

// graphLaunch(handle, statics, inputs, outputs): statics[i] <- inputs[i], then one replay.
Napi::Value GraphLaunch(const Napi::CallbackInfo& info) {
  const char* op = "graphLaunch";
  GraphHandle& g = graph_arg(info, 0, op);
  std::vector<Tensor> statics = tensor_list_arg(info, 1, op, "statics");
  std::vector<Tensor> inputs = tensor_list_arg(info, 2, op, "inputs");
  std::vector<Tensor> outputs = tensor_list_arg(info, 3, op, "outputs");
  if (inputs.size() != statics.size())
    throw_range(std::string(op) + ": expected " + std::to_string(statics.size()) + " inputs, got " + std::to_string(inputs.size()));
  for (size_t i = 0; i < inputs.size(); i++) {
    const std::string name = "inputs[" + std::to_string(i) + "]";
    if (!statics[i].is_contiguous()) throw_type(std::string(op) + ": statics[" + std::to_string(i) + "] must be contiguous");
    check_same(op, name.c_str(), statics[i], inputs[i]);
    if (inputs[i].shape != statics[i].shape)
      throw_range(std::string(op) + ": " + name + " has shape " + shape_str(inputs[i].shape) + ", the graph was captured with " +
                  shape_str(statics[i].shape));
    inputs[i] = contiguous(inputs[i]);
  }
  capture_launch(g.capture, statics, inputs, outputs);
  return info.Env().Undefined();
}

Napi::Value GraphDispose(const Napi::CallbackInfo& info) {
  capture_release(graph_arg(info, 0, "graphDispose").capture);
  return info.Env().Undefined();
}

Napi::Value GraphCapturing(const Napi::CallbackInfo& info) {
  Device d = device_arg(info, 0, "graphCapturing", "device");
  return Napi::Boolean::New(info.Env(), capture_open(d));
}

}  // namespace

void register_graph(Napi::Env env, Napi::Object exports) {
  DK_EXPORT(exports, "graphBegin", GraphBegin);
  DK_EXPORT(exports, "graphEnd", GraphEnd);
  DK_EXPORT(exports, "graphLaunch", GraphLaunch);
  DK_EXPORT(exports, "graphDispose", GraphDispose);
  DK_EXPORT(exports, "graphCapturing", GraphCapturing);
}

}  // namespace dk::binding
