#include "cpu_features.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dk::cpu {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  f.f16c = __builtin_cpu_supports("f16c");
  f.isa = avx512 ? Isa::AVX512 : avx2 ? Isa::AVX2 : Isa::Generic;
#if defined(__GNUC__) && __GNUC__ >= 12
  f.avx512_bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
#endif
#endif
  if (const char* cap = std::getenv("DIFFUSEKIT_ISA")) {
    Isa want = !std::strcmp(cap, "generic") ? Isa::Generic : !std::strcmp(cap, "avx2") ? Isa::AVX2 : Isa::AVX512;
    if (*cap && std::strcmp(cap, "generic") && std::strcmp(cap, "avx2") && std::strcmp(cap, "avx512"))
      std::fprintf(stderr, "diffusekit: DIFFUSEKIT_ISA=%s is not generic, avx2 or avx512; not capping\n", cap);
    if (static_cast<int>(want) < static_cast<int>(f.isa)) f.isa = want;
    if (f.isa != Isa::AVX512) f.avx512_bf16 = false;
  }
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::AVX512: return "avx512";
    case Isa::AVX2: return "avx2";
    default: return "generic";
  }
}

std::string isa_description() {
  const CpuFeatures& f = cpu_features();
  std::string s = isa_name(f.isa);
  if (f.avx512_bf16) s += "+bf16";
  return s;
}

}  // namespace dk::cpu
