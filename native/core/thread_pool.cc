#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace dk {
namespace {

thread_local bool tl_in_parallel = false;

class Pool {
 public:
  explicit Pool(int n) : nthreads_(n) {
    for (int i = 1; i < n; i++) workers_.emplace_back([this, i] { worker(i); });
  }
  // Threads are detached at exit on purpose: joining during static destruction can deadlock
  // when the process exits while a worker is parked.
  ~Pool() { for (auto& t : workers_) t.detach(); }

  int size() const { return nthreads_; }

  void run(int ntasks, const std::function<void(int, int)>& fn) {
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    ntasks = std::min(ntasks, nthreads_);
    if (ntasks <= 1) { fn(0, 1); return; }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      job_tasks_ = ntasks;
      next_task_.store(1);
      pending_.store(ntasks - 1);
      generation_++;
    }
    cv_.notify_all();
    tl_in_parallel = true;
    fn(0, ntasks);
    // The caller also helps with tasks not yet claimed.
    for (int t; (t = next_task_.fetch_add(1)) < ntasks;) { fn(t, ntasks); pending_.fetch_sub(1); }
    tl_in_parallel = false;
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_.load() == 0 && active_ == 0; });
    job_ = nullptr;
  }

 private:
  void worker(int) {
    uint64_t seen = 0;
    tl_in_parallel = true;
    for (;;) {
      const std::function<void(int, int)>* job;
      int ntasks;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
        ntasks = job_tasks_;
        if (job) active_++;
      }
      if (!job) continue;
      for (int t; (t = next_task_.fetch_add(1)) < ntasks;) {
        (*job)(t, ntasks);
        if (pending_.fetch_sub(1) == 1) {
          std::lock_guard<std::mutex> lock(mu_);
          done_cv_.notify_all();
        }
      }
      // Checking out lets run() return only when no worker still holds this job's pointer.
      std::lock_guard<std::mutex> lock(mu_);
      active_--;
      done_cv_.notify_all();
    }
  }

  int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  int job_tasks_ = 0;
  int active_ = 0;  // workers inside the current job (guarded by mu_)
  uint64_t generation_ = 0;
  std::atomic<int> next_task_{0};
  std::atomic<int> pending_{0};
};

int configured_threads() {
  if (const char* s = std::getenv("DIFFUSEKIT_THREADS")) {
    int n = std::atoi(s);
    if (n > 0) return std::min(n, 256);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

Pool& pool() {
  static Pool* p = new Pool(configured_threads());
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_tasks(int max_tasks, const std::function<void(int, int)>& fn) {
  if (max_tasks <= 1 || tl_in_parallel || pool().size() == 1) {
    fn(0, 1);
    return;
  }
  pool().run(max_tasks, fn);
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t max_chunks = (n + grain - 1) / grain;
  int nt = static_cast<int>(std::min<int64_t>(max_chunks, num_threads()));
  if (nt <= 1 || tl_in_parallel) {
    fn(0, n);
    return;
  }
  parallel_tasks(nt, [&](int t, int ntasks) {
    int64_t lo = n * t / ntasks, hi = n * (t + 1) / ntasks;
    if (lo < hi) fn(lo, hi);
  });
}

}  // namespace dk
