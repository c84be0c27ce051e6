// Benchmark support: measurePeak() runs the machine-ceiling loops of native/cpu/peak.cc;
// conv2dAlgo() / setConv2dAlgo() report and force the CPU conv2d path (direct or Winograd).
#include <sstream>

#include "../cpu/conv2d_winograd.h"
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

const char* algo_name(cpu::ConvAlgo a) {
  switch (a) {
    case cpu::ConvAlgo::Direct: return "direct";
    case cpu::ConvAlgo::Winograd: return "winograd";
    default: return "auto";
  }
}

// conv2dAlgo(xShape [N,H,W,C], wShape [K,R,S,C], stride[2], padding[2], dilation[2], dtype?) ->
// "direct" | "winograd": the path the CPU conv2d takes for that shape and dtype ("float32", the
// default, or "bfloat16") now (no work is done). bf16 without AVX512_BF16 runs the fp32 conv.
Napi::Value Conv2dAlgo(const Napi::CallbackInfo& info) {
  const char* op = "conv2dAlgo";
  std::vector<int64_t> xs = int_list_arg(info, 0, op, "input shape");
  std::vector<int64_t> ws = int_list_arg(info, 1, op, "weight shape");
  std::vector<int64_t> stride = int_list_arg(info, 2, op, "stride");
  std::vector<int64_t> pad = int_list_arg(info, 3, op, "padding");
  std::vector<int64_t> dil = int_list_arg(info, 4, op, "dilation");
  if (xs.size() != 4 || ws.size() != 4) throw_range("conv2dAlgo: input and weight shapes need 4 values each");
  if (stride.size() != 2 || pad.size() != 2 || dil.size() != 2)
    throw_range("conv2dAlgo: stride, padding and dilation need 2 values each");
  for (int64_t v : xs)
    if (v < 1) throw_range("conv2dAlgo: input sizes must be >= 1");
  for (int64_t v : ws)
    if (v < 1) throw_range("conv2dAlgo: weight sizes must be >= 1");
  if (ws[3] != xs[3]) throw_range("conv2dAlgo: weight and input channel counts differ");
  if (stride[0] < 1 || stride[1] < 1 || dil[0] < 1 || dil[1] < 1 || pad[0] < 0 || pad[1] < 0)
    throw_range("conv2dAlgo: stride and dilation must be >= 1 and padding >= 0");
  cpu::Conv2dParams p{};
  p.N = xs[0]; p.H = xs[1]; p.W = xs[2]; p.C = xs[3];
  p.K = ws[0]; p.R = ws[1]; p.S = ws[2];
  p.stride_h = stride[0]; p.stride_w = stride[1]; p.pad_h = pad[0]; p.pad_w = pad[1]; p.dil_h = dil[0]; p.dil_w = dil[1];
  const int64_t eff_r = p.dil_h * (p.R - 1) + 1, eff_s = p.dil_w * (p.S - 1) + 1;
  if (p.H + 2 * p.pad_h < eff_r || p.W + 2 * p.pad_w < eff_s) throw_range("conv2dAlgo: kernel is larger than the padded input");
  p.P = (p.H + 2 * p.pad_h - eff_r) / p.stride_h + 1;
  p.Q = (p.W + 2 * p.pad_w - eff_s) / p.stride_w + 1;
  const std::string dtype = info.Length() > 5 && !info[5].IsUndefined() ? string_arg(info, 5, op, "dtype") : "float32";
  if (dtype != "float32" && dtype != "bfloat16")
    throw_range("conv2dAlgo: dtype must be \"float32\" or \"bfloat16\", got \"" + dtype + "\"");
  const bool bf16 = dtype == "bfloat16" && cpu::cpu_features().avx512_bf16;
  return Napi::String::New(info.Env(), algo_name(bf16 ? cpu::conv2d_algo_bf16(p) : cpu::conv2d_algo(p)));
}

// setConv2dAlgo("auto" | "direct" | "winograd") -> the previous setting. Starts from
// DIFFUSEKIT_CONV_ALGO. Affects CPU conv2d calls enqueued afterwards (the caller synchronizes).
Napi::Value SetConv2dAlgo(const Napi::CallbackInfo& info) {
  const char* op = "setConv2dAlgo";
  const std::string mode = string_arg(info, 0, op, "mode");
  cpu::ConvAlgo a;
  if (mode == "auto") a = cpu::ConvAlgo::Auto;
  else if (mode == "direct") a = cpu::ConvAlgo::Direct;
  else if (mode == "winograd") a = cpu::ConvAlgo::Winograd;
  else throw_range("setConv2dAlgo: mode must be \"auto\", \"direct\" or \"winograd\", got \"" + mode + "\"");
  const cpu::ConvAlgo prev = cpu::conv_algo_setting();
  cpu::set_conv_algo(a);
  return Napi::String::New(info.Env(), algo_name(prev));
}

}  // namespace

void register_bench(Napi::Env env, Napi::Object exports) {
  DK_EXPORT(exports, "measurePeak", MeasurePeak);
  DK_EXPORT(exports, "conv2dAlgo", Conv2dAlgo);
  DK_EXPORT(exports, "setConv2dAlgo", SetConv2dAlgo);
}

}  // namespace dk::binding
