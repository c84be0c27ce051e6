// Which SIMD level the CPU kernels may use, detected once at run time.
// DIFFUSEKIT_ISA=generic|avx2|avx512 caps it (for testing the fallbacks).
#pragma once
#include <string>

namespace dk::cpu {

enum class Isa : int { Generic = 0, AVX2 = 1, AVX512 = 2 };

struct CpuFeatures {
  Isa isa = Isa::Generic;   // best level usable for the hot kernels (AVX2 implies FMA)
  bool avx512_bf16 = false; // vdpbf16ps available
  bool f16c = false;
};

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
// e.g. "avx512" or "avx512+bf16"
std::string isa_description();

}  // namespace dk::cpu
