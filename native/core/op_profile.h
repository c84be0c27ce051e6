// Optional per-op timing of the queues: while enabled, every op a queue runs adds its wall time
// to a total per op name. On the CPU that is the op's compute time; on CUDA only the launch
// (kernels run asynchronously), so the profile is a CPU tool.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dk::op_profile {

struct Entry {
  std::string op;
  int64_t count = 0;
  double ms = 0;
};

// Turns timing on (and clears the totals) or off.
void set_enabled(bool on);
bool enabled();
void record(const std::string& op, double ms);
// The totals so far, largest first.
std::vector<Entry> snapshot();

}  // namespace dk::op_profile
