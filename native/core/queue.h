// Per-device in-order op queue. Ops are validated and their outputs allocated on the JS thread;
// the computation is pushed here and runs on the device's worker thread, in submission order.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace dk {

// Enqueues `fn` on `device`'s queue. If any input storage already failed, the error is copied
// to the outputs and `fn` is skipped; if `fn` throws, the outputs are marked failed with its
// message (prefixed by `op`). Captured tensors keep their storage alive until `fn` has run.
// While a capture is open on `device` (below) the op is recorded into it instead.
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

// ---- graph capture: record the ops of a repeated computation once, replay them many times.
//
// Between capture_begin() and capture_end() (both on the JS thread, with only synchronous op
// calls between them) every op enqueued on the device is recorded, not run: on a CUDA device
// the queue thread records its kernel launches into a CUDA graph (stream capture); on the CPU
// the queued tasks themselves are kept. Tensors allocated on a CUDA device while the capture is
// open come from a pool the capture owns (their memory stays reserved for it after they are
// disposed), and storages the recorded ops use but did not allocate (weights, the static
// inputs) are kept alive by the capture. Outputs of recorded ops hold no values until the first
// capture_launch(). Host<->device copies and read-backs cannot be recorded (the binding refuses
// them while a capture is open).
struct Capture;
using CapturePtr = std::shared_ptr<Capture>;

// Throws when a capture is already open on `device`.
CapturePtr capture_begin(Device device);
// Closes the capture and waits until the queue has recorded every op; returns "" when it can be
// replayed, else why not (the capture is then unusable and should be released).
std::string capture_end(const CapturePtr& c);
// Enqueues: copy each of `inputs` into the matching (same shape, dtype, device, contiguous)
// `statics` buffer, then one replay. `outputs` are the recorded outputs (errors propagate to them).
void capture_launch(const CapturePtr& c, const std::vector<Tensor>& statics, const std::vector<Tensor>& inputs,
                    const std::vector<Tensor>& outputs);
// Frees the recording once everything enqueued so far has run (idempotent).
void capture_release(const CapturePtr& c);
// Whether a capture is open on `device` (JS thread view).
bool capture_open(Device device);
// Throws dk::Error naming `op` when a capture is open on `device` (ops that cannot be recorded).
void check_not_capturing(const char* op, Device device);

}  // namespace dk
