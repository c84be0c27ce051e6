// Benchmark support: measurePeak() runs the machine-ceiling loops of native/cpu/peak.cc.
#include <sstream>

#include "../cpu/cpu_features.h"
#include "../cpu/peak.h"
#include "common.h"

namespace dk::binding {
namespace {

// measurePeak({ seconds?, bandwidthMiB? }) -> { threads, isa, fp32Kernel, fp32Gflops,
// bf16Gflops (null without AVX512_BF16), fp32GflopsCpu, bf16GflopsCpu (per CPU-second, summed
// over threads), scaleGBs, triadGBs }. Synchronous (a second or two
// on the calling thread plus the pool); the caller synchronizes the CPU queue first.
Napi::Value MeasurePeak(const Napi::CallbackInfo& info) {
  const char* op = "measurePeak";
  Napi::Env env = info.Env();
  double seconds = 0.5;
  int64_t mib = 128;
  if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
    if (!info[0].IsObject()) throw_type(std::string(op) + ": options must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto num = [&](const char* key, double lo, double hi, double dflt) {
      Napi::Value v = o.Get(key);
      if (v.IsUndefined()) return dflt;
      if (!v.IsNumber()) throw_type(std::string(op) + ": " + key + " must be a number");
      double x = v.As<Napi::Number>().DoubleValue();
      if (!(x >= lo && x <= hi)) {
        std::ostringstream msg;
        msg << op << ": " << key << " must be in [" << lo << ", " << hi << "], got " << x;
        throw_range(msg.str());
      }
      return x;
    };
    seconds = num("seconds", 0.01, 60, seconds);
    mib = static_cast<int64_t>(num("bandwidthMiB", 1, 4096, static_cast<double>(mib)));
  }
  cpu::PeakResult r = cpu::measure_peak(seconds, mib);
  Napi::Object out = Napi::Object::New(env);
  out.Set("threads", Napi::Number::New(env, r.threads));
  out.Set("isa", cpu::isa_description());
  out.Set("fp32Kernel", r.fp32_kernel);
  out.Set("fp32Gflops", Napi::Number::New(env, r.fp32_gflops));
  out.Set("bf16Gflops", r.bf16_gflops > 0 ? Napi::Number::New(env, r.bf16_gflops) : env.Null());
  out.Set("fp32GflopsCpu", Napi::Number::New(env, r.fp32_gflops_cpu));
  out.Set("bf16GflopsCpu", r.bf16_gflops_cpu > 0 ? Napi::Number::New(env, r.bf16_gflops_cpu) : env.Null());
  out.Set("scaleGBs", Napi::Number::New(env, r.scale_gbps));
  out.Set("triadGBs", Napi::Number::New(env, r.triad_gbps));
  return out;
}

}  // namespace

void register_bench(Napi::Env env, Napi::Object exports) { DK_EXPORT(exports, "measurePeak", MeasurePeak); }

}  // namespace dk::binding
