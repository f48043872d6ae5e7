// A persistent pool of worker threads for the bit-serial kernels.
//
// Why not a std::thread per call: at batch 1 a whole 4096 x 4096 binary GEMV takes some tens of
// microseconds, about what starting and joining a thread costs. The pool's workers live for the
// process; between jobs they spin for a short while (a GEMV that follows another finds them
// awake) and then sleep on a condition variable, so they do not take cores from torch's own
// OpenMP threads between calls. Each task index always goes to the same worker, so a GEMV split
// by weight rows keeps each worker's share of the weights in its core's L2 across calls.
#ifndef BAYESQ_THREAD_POOL_H_
#define BAYESQ_THREAD_POOL_H_

#include <functional>

namespace bayesq {

// Runs task(t) for t = 0 .. tasks - 1, task 0 on the calling thread and task t on worker t,
// and returns when all have finished. An exception thrown by a task is rethrown here (the one
// of the lowest task index). Jobs from different calling threads run one after another.
// tasks <= 1 runs inline without touching the pool. After fork() the child starts a new pool.
void parallel_for(int tasks, const std::function<void(int)>& task);

}  // namespace bayesq

#endif  // BAYESQ_THREAD_POOL_H_
