#include "queue.h"

#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "error.h"

#ifdef DK_WITH_CUDA
#include "../cuda/runtime.h"
#endif

namespace dk {
namespace {

class OpQueue {
 public:
  explicit OpQueue(Device d) : device_(d), thread_([this] { loop(); }) { thread_.detach(); }

  void push(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(fn));
      depth_++;
    }
    cv_.notify_one();
  }

  void sync() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [this] { return depth_ == 0; });
  }

  int64_t depth() {
    std::lock_guard<std::mutex> lock(mu_);
    return depth_;
  }

 private:
  void loop() {
#ifdef DK_WITH_CUDA
    if (device_.is_cuda()) cuda::bind_thread_to_device(device_.index);
#endif
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !tasks_.empty(); });
        fn = std::move(tasks_.front());
        tasks_.pop_front();
      }
      fn();
      fn = nullptr;  // release captured storages before reporting idle
      {
        std::lock_guard<std::mutex> lock(mu_);
        depth_--;
      }
      idle_cv_.notify_all();
    }
  }

  Device device_;
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> tasks_;
  int64_t depth_ = 0;
  std::thread thread_;
};

OpQueue& queue_for(Device d) {
  static std::mutex mu;
  static auto* queues = new std::map<std::pair<int, int>, OpQueue*>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_pair(static_cast<int>(d.type), d.is_cpu() ? 0 : d.index);
  auto it = queues->find(key);
  if (it != queues->end()) return *it->second;
  auto* q = new OpQueue(d);
  (*queues)[key] = q;
  return *q;
}

}  // namespace

void enqueue(Device device, const char* op, std::vector<Tensor> inputs, std::vector<Tensor> outputs,
             std::function<void()> fn) {
  std::string name = op;
  queue_for(device).push([name, ins = std::move(inputs), outs = std::move(outputs), f = std::move(fn)]() {
    for (const Tensor& t : ins) {
      if (t.storage && t.storage->failed()) {
        for (const Tensor& o : outs) o.storage->set_error(t.storage->error());
        return;
      }
    }
    try {
      f();
    } catch (const std::exception& e) {
      for (const Tensor& o : outs) o.storage->set_error(name + ": " + e.what());
    } catch (...) {
      for (const Tensor& o : outs) o.storage->set_error(name + ": unknown native error");
    }
  });
}

std::function<void()> wait_for_queue(Device src) {
  auto done = std::make_shared<std::promise<void>>();
  std::shared_future<void> fut = done->get_future().share();
  queue_for(src).push([done] { done->set_value(); });
  return [fut] { fut.wait(); };
}

void queue_sync(Device device) { queue_for(device).sync(); }

int64_t queue_depth(Device device) { return queue_for(device).depth(); }

}  // namespace dk
