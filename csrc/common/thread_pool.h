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

// The most threads one job runs on, the caller's included: kThreadsPerCpu times the CPU count
// (std::thread::hardware_concurrency, at least 1). The pool never holds more than
// max_pool_threads() - 1 workers, whatever `tasks` callers ask for: a thread count taken from
// user input cannot make the process create (and keep) thousands of threads.
constexpr int kThreadsPerCpu = 4;
int max_pool_threads();

// Runs task(t) for t = 0 .. tasks - 1 and returns when all have finished. With T =
// min(tasks, max_pool_threads()) threads, task t runs on thread t mod T: thread 0 is the
// caller, thread i > 0 pool worker i (so with tasks <= T, task t always goes to worker t).
// An exception thrown by a task is rethrown here (the one of the lowest task index). Jobs from
// different calling threads run one after another. tasks <= 1 runs inline without touching the
// pool. After fork() the child starts a new pool.
void parallel_for(int tasks, const std::function<void(int)>& task);

}  // namespace bayesq

#endif  // BAYESQ_THREAD_POOL_H_
