#include "op_profile.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>

namespace dk::op_profile {
namespace {
std::atomic<bool> g_on{false};
std::mutex g_mu;
std::map<std::string, Entry>& totals() {
  static auto* m = new std::map<std::string, Entry>();  // never destroyed: queues outlive statics
  return *m;
}
}  // namespace

void set_enabled(bool on) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (on) totals().clear();
  g_on.store(on, std::memory_order_release);
}

bool enabled() { return g_on.load(std::memory_order_acquire); }

void record(const std::string& op, double ms) {
  std::lock_guard<std::mutex> lock(g_mu);
  Entry& e = totals()[op];
  e.op = op;
  e.count++;
  e.ms += ms;
}

std::vector<Entry> snapshot() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<Entry> out;
  for (const auto& kv : totals()) out.push_back(kv.second);
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.ms > b.ms; });
  return out;
}

}  // namespace dk::op_profile
