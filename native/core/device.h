// Where a tensor lives: the CPU, or CUDA device N.
#pragma once
#include <string>

namespace dk {

struct Device {
  enum Type : int { CPU = 0, CUDA = 1 };
  Type type = CPU;
  int index = 0;

  bool is_cpu() const { return type == CPU; }
  bool is_cuda() const { return type == CUDA; }
  bool operator==(const Device& o) const { return type == o.type && (type == CPU || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return type == CPU ? "cpu" : "cuda:" + std::to_string(index); }
};

// Parses "cpu", "cuda", "cuda:N". Returns false on anything else.
bool parse_device(const std::string& s, Device* out);

}  // namespace dk
