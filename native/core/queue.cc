#include "queue.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "error.h"
#include "op_profile.h"

#ifdef DK_WITH_CUDA
#include "../cuda/runtime.h"
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DK_PAUSE() _mm_pause()
#else
#define DK_PAUSE() std::this_thread::yield()
#endif

namespace dk {

struct Capture {
  Device device;
  bool ended = false, ok = false, released = false;
  std::string error;                         // first failure seen while recording (queue thread)
  std::vector<std::function<void()>> tasks;  // CPU: the recorded tasks, replayed in order
  std::vector<StoragePtr> keep;              // storages the recording uses but does not own
#ifdef DK_WITH_CUDA
  cuda::Graph* graph = nullptr;              // CUDA: the stream-captured graph and its memory pool
#endif
};

namespace {

// The capture the current queue thread is recording into (CUDA), so that op failures reach it.
thread_local Capture* tl_recording = nullptr;

class OpQueue {
 public:
  explicit OpQueue(Device d) : device_(d), thread_([this] { loop(); }) { thread_.detach(); }

  // The worker is woken only when it sleeps: while it is busy (or spinning) a push costs one
  // uncontended lock, not a futex wake per op.
  void push(std::function<void()> fn) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(fn));
      depth_.fetch_add(1, std::memory_order_relaxed);
      pending_.store(true, std::memory_order_release);
      wake = sleeping_;
    }
    if (wake) cv_.notify_one();
  }

  void sync() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [this] { return depth_.load() == 0; });
  }

  int64_t depth() { return depth_.load(); }

 private:
  void loop() {
#ifdef DK_WITH_CUDA
    if (device_.is_cuda()) cuda::bind_thread_to_device(device_.index);
#endif
    std::deque<std::function<void()>> batch;
    for (;;) {
      // Spin briefly before sleeping: the JS thread enqueues ops a few microseconds apart.
      for (int i = 0; i < 4000 && !pending_.load(std::memory_order_acquire); i++) DK_PAUSE();
      {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_ = true;
        cv_.wait(lock, [this] { return !tasks_.empty(); });
        sleeping_ = false;
        batch.swap(tasks_);
        pending_.store(false, std::memory_order_relaxed);
      }
      while (!batch.empty()) {
        {
          std::function<void()> fn = std::move(batch.front());
          batch.pop_front();
          fn();
        }  // the task is destroyed here: captured storages are released before reporting idle
        if (depth_.fetch_sub(1) == 1) {
          std::lock_guard<std::mutex> lock(mu_);
          idle_cv_.notify_all();
        }
      }
    }
  }

  Device device_;
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> tasks_;
  std::atomic<int64_t> depth_{0};
  std::atomic<bool> pending_{false};
  bool sleeping_ = false;
  std::thread thread_;
};

using Key = std::pair<int, int>;
Key key_of(Device d) { return {static_cast<int>(d.type), d.is_cpu() ? 0 : d.index}; }

OpQueue& queue_for(Device d) {
  static std::mutex mu;
  static auto* queues = new std::map<Key, OpQueue*>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  auto key = key_of(d);
  auto it = queues->find(key);
  if (it != queues->end()) return *it->second;
  auto* q = new OpQueue(d);
  (*queues)[key] = q;
  return *q;
}

// Open captures by device. `open_count` lets enqueue skip the lookup when there is none.
std::mutex capture_mu;
std::map<Key, CapturePtr>& open_captures() {
  static auto* m = new std::map<Key, CapturePtr>();
  return *m;
}
std::atomic<int> open_count{0};

Capture* open_capture(Device d) {
  if (open_count.load(std::memory_order_acquire) == 0) return nullptr;
  std::lock_guard<std::mutex> lock(capture_mu);
  auto it = open_captures().find(key_of(d));
  return it == open_captures().end() ? nullptr : it->second.get();
}

void note_capture_error(const std::string& e) {
  if (tl_recording && tl_recording->error.empty()) tl_recording->error = e;
}

}  // namespace

void enqueue(Device device, const char* op, std::vector<Tensor> inputs, std::vector<Tensor> outputs,
             std::function<void()> fn) {
  Capture* cap = open_capture(device);
  if (cap) {
    // Storages the recording reads or writes but did not allocate from its own pool must
    // outlive it (weights, static inputs, tensors made before the capture).
    auto keep = [cap](const Tensor& t) {
      if (!t.storage) return;
#ifdef DK_WITH_CUDA
      if (cap->graph && cuda::graph_owns(cap->graph, t.storage->data())) return;
#endif
      if (!cap->device.is_cpu()) cap->keep.push_back(t.storage);  // CPU tasks hold their own
    };
    for (const Tensor& t : inputs) keep(t);
    for (const Tensor& t : outputs) keep(t);
  }
  std::string name = op;
  auto task = [name, ins = std::move(inputs), outs = std::move(outputs), f = std::move(fn)]() {
    for (const Tensor& t : ins) {
      if (t.storage && t.storage->failed()) {
        note_capture_error(t.storage->error());
        for (const Tensor& o : outs) o.storage->set_error(t.storage->error());
        return;
      }
    }
    try {
      if (op_profile::enabled()) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        op_profile::record(name, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      } else {
        f();
      }
    } catch (const std::exception& e) {
      note_capture_error(name + ": " + e.what());
      for (const Tensor& o : outs) o.storage->set_error(name + ": " + e.what());
    } catch (...) {
      note_capture_error(name + ": unknown native error");
      for (const Tensor& o : outs) o.storage->set_error(name + ": unknown native error");
    }
  };
  if (cap && cap->device.is_cpu()) {
    cap->tasks.emplace_back(std::move(task));
    return;
  }
  queue_for(device).push(std::move(task));
}

std::function<void()> wait_for_queue(Device src) {
  auto done = std::make_shared<std::promise<void>>();
  std::shared_future<void> fut = done->get_future().share();
  queue_for(src).push([done] { done->set_value(); });
  return [fut] { fut.wait(); };
}

void queue_sync(Device device) { queue_for(device).sync(); }

int64_t queue_depth(Device device) { return queue_for(device).depth(); }

// ------------------------------------------------------------------ capture

bool capture_open(Device device) { return open_capture(device) != nullptr; }

void check_not_capturing(const char* op, Device device) {
  if (capture_open(device))
    throw_error(std::string(op) + " cannot be recorded in a captured graph (" + device.str() +
                " is capturing): host<->device copies and read-backs must happen outside captureGraph()");
}

CapturePtr capture_begin(Device device) {
  auto c = std::make_shared<Capture>();
  c->device = device;
#ifdef DK_WITH_CUDA
  if (device.is_cuda()) c->graph = cuda::graph_create(device.index);
#else
  if (device.is_cuda()) throw_error("this build of diffusekit has no CUDA backend");
#endif
  {
    std::lock_guard<std::mutex> lock(capture_mu);
    auto& open = open_captures();
    if (open.count(key_of(device))) {
#ifdef DK_WITH_CUDA
      if (c->graph) cuda::graph_destroy(c->graph);
#endif
      throw_error("captureGraph: a capture is already open on " + device.str());
    }
    open[key_of(device)] = c;
    open_count.fetch_add(1, std::memory_order_release);
  }
#ifdef DK_WITH_CUDA
  if (c->graph) {
    cuda::graph_alloc_scope(c->graph);  // this (JS) thread's allocations on the device: the pool
    Capture* raw = c.get();
    queue_for(device).push([raw] {
      tl_recording = raw;
      try {
        cuda::graph_begin_capture(raw->graph);
      } catch (const std::exception& e) {
        note_capture_error(std::string("captureGraph: ") + e.what());
      }
    });
  }
#endif
  return c;
}

std::string capture_end(const CapturePtr& c) {
  if (c->ended) return c->ok ? "" : c->error;
  c->ended = true;
  {
    std::lock_guard<std::mutex> lock(capture_mu);
    auto& open = open_captures();
    auto it = open.find(key_of(c->device));
    if (it != open.end() && it->second == c) {
      open.erase(it);
      open_count.fetch_sub(1, std::memory_order_release);
    }
  }
#ifdef DK_WITH_CUDA
  if (c->graph) {
    cuda::graph_alloc_scope(nullptr);
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> fut = done->get_future();
    Capture* raw = c.get();
    queue_for(c->device).push([raw, done] {
      std::string err = cuda::graph_end_capture(raw->graph, raw->error);
      if (raw->error.empty()) raw->error = err;
      tl_recording = nullptr;
      done->set_value();
    });
    fut.wait();  // recording is launch-only work on the queue thread: milliseconds
  }
#endif
  c->ok = c->error.empty();
  return c->error;
}

void capture_launch(const CapturePtr& c, const std::vector<Tensor>& statics, const std::vector<Tensor>& inputs,
                    const std::vector<Tensor>& outputs) {
  if (!c->ended || !c->ok || c->released) throw_error("graph launch: the graph is not ready (capture failed or disposed)");
  check_not_capturing("graph launch", c->device);
  if (statics.size() != inputs.size()) throw_range("graph launch: expected " + std::to_string(statics.size()) + " inputs");
  std::vector<Tensor> ins = inputs, outs = outputs;
  for (const Tensor& s : statics) outs.push_back(s);
  CapturePtr cap = c;
  std::vector<Tensor> dst = statics, src = inputs;
  enqueue(c->device, "graph launch", std::move(ins), std::move(outs), [cap, dst, src] {
    for (size_t i = 0; i < dst.size(); i++) {
      if (dst[i].data() == src[i].data()) continue;
      if (cap->device.is_cpu()) {
        std::memcpy(dst[i].data(), src[i].data(), dst[i].nbytes());
      } else {
#ifdef DK_WITH_CUDA
        cuda::copy_d2d(cap->device.index, dst[i].data(), src[i].data(), dst[i].nbytes());
#endif
      }
    }
    if (cap->device.is_cpu()) {
      for (auto& t : cap->tasks) t();
    } else {
#ifdef DK_WITH_CUDA
      cuda::graph_launch(cap->graph);
#endif
    }
  });
}

void capture_release(const CapturePtr& c) {
  if (c->released) return;
  if (!c->ended) capture_end(c);
  c->released = true;
  CapturePtr cap = c;
  // Direct push (never recorded): runs after every launch enqueued so far.
  queue_for(c->device).push([cap] {
    cap->tasks.clear();
#ifdef DK_WITH_CUDA
    if (cap->graph) cuda::graph_destroy(cap->graph);
    cap->graph = nullptr;
#endif
    cap->keep.clear();
  });
}

}  // namespace dk
