// A fixed pool of worker threads for data-parallel kernels. Sized to the cores unless
// DIFFUSEKIT_THREADS says otherwise. The calling thread takes part in the work.
#pragma once
#include <cstdint>
#include <functional>

namespace dk {

int num_threads();

// Runs fn(lo, hi) over [0, n) split into chunks of at least `grain` items, on all threads,
// and returns when every chunk is done. Nested calls run serially on the calling thread.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t lo, int64_t hi)>& fn);

// Runs fn(t) once for each t in [0, nthreads) where nthreads = min(num_threads(), max_tasks);
// useful when each thread needs its own scratch buffer.
void parallel_tasks(int max_tasks, const std::function<void(int task, int ntasks)>& fn);

}  // namespace dk
