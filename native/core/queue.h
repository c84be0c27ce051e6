// Per-device in-order op queue. Ops are validated and their outputs allocated on the JS thread;
// the computation is pushed here and runs on the device's worker thread, in submission order.
#pragma once
#include <functional>
#include <vector>

#include "tensor.h"

namespace dk {

// Enqueues `fn` on `device`'s queue. If any input storage already failed, the error is copied
// to the outputs and `fn` is skipped; if `fn` throws, the outputs are marked failed with its
// message (prefixed by `op`). Captured tensors keep their storage alive until `fn` has run.
void enqueue(Device device, const char* op, std::vector<Tensor> inputs, std::vector<Tensor> outputs,
             std::function<void()> fn);

// Makes work enqueued on `dst` after this call wait until everything enqueued on `src` so far
// has run: returns a task for `dst` that blocks on a marker pushed to `src` now. Used by
// cross-device copies. FIFO queues + markers pushed before their waiters cannot deadlock.
std::function<void()> wait_for_queue(Device src);

// Blocks until everything enqueued on `device` so far has run (used by tests and shutdown).
void queue_sync(Device device);

// Number of ops waiting or running on `device`'s queue.
int64_t queue_depth(Device device);

}  // namespace dk
