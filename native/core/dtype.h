// Element types a tensor can hold, their sizes and names.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dk {

enum class DType : uint8_t { F32 = 0, F16, BF16, I32, I64, U8, COUNT };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
    default: return 0;
  }
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::U8: return "uint8";
    default: return "invalid";
  }
}

inline bool dtype_from_name(const std::string& s, DType* out) {
  for (int i = 0; i < static_cast<int>(DType::COUNT); i++) {
    if (s == dtype_name(static_cast<DType>(i))) { *out = static_cast<DType>(i); return true; }
  }
  return false;
}

inline bool dtype_is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

}  // namespace dk
