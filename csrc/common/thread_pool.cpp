// The persistent worker pool behind parallel_for (see thread_pool.h).
#include "common/thread_pool.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace bayesq {

namespace {

// How long an idle worker (and a caller waiting for workers) spins before it sleeps.
constexpr std::chrono::microseconds kSpin{100};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until done() holds or kSpin has passed; returns done().
template <class Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return done();
  }
}

class ThreadPool {
 public:
  // threads: the caller plus the workers this job needs (2 .. max_pool_threads()).
  void run(int tasks, int threads, const std::function<void(int)>& task) {
    std::lock_guard<std::mutex> one_job(job_mutex_);
    while (static_cast<int>(workers_.size()) < threads - 1) {
      const int index = static_cast<int>(workers_.size()) + 1;
      // The worker starts from the generation before this job's, so it cannot miss the job
      // however late the thread gets going.
      const std::uint64_t before = generation_.load(std::memory_order_relaxed);
      workers_.emplace_back([this, index, before] { work(index, before); });
      workers_.back().detach();  // the pool lives until the process ends
    }
    errors_.assign(static_cast<std::size_t>(threads), Failure{});
    task_ = &task;
    tasks_ = tasks;
    threads_ = threads;
    // Every worker acknowledges every job, even one with fewer tasks than workers: so no worker
    // can still be reading task_ and tasks_ of a job when the next one overwrites them.
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_tasks(0);
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    task_ = nullptr;
    const Failure* first = nullptr;
    for (const Failure& f : errors_)
      if (f.error && (first == nullptr || f.task < first->task)) first = &f;
    if (first) std::rethrow_exception(first->error);
  }

 private:
  // Thread `index` runs tasks index, index + threads_, index + 2 threads_, ... and keeps the
  // first exception among them (its lowest task index).
  void run_tasks(int index) {
    Failure& failure = errors_[static_cast<std::size_t>(index)];
    for (std::int64_t t = index; t < tasks_; t += threads_) {
      try {
        (*task_)(static_cast<int>(t));
      } catch (...) {  // an exception must not escape a worker thread (std::terminate)
        if (!failure.error) failure = Failure{static_cast<int>(t), std::current_exception()};
      }
    }
  }

  void work(int index, std::uint64_t seen) {
    for (;;) {
      auto started = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(started)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, started);
      }
      seen = generation_.load(std::memory_order_acquire);
      if (index < threads_) run_tasks(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller may be about to wait
        done_.notify_one();
      }
    }
  }

  std::mutex job_mutex_;  // one job at a time
  std::mutex mutex_;      // guards the sleeps on wake_ and done_
  std::condition_variable wake_, done_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // workers yet to finish the current job
  const std::function<void(int)>* task_ = nullptr;
  int tasks_ = 0;
  int threads_ = 1;  // threads of the current job, the caller's included
  struct Failure {
    int task = 0;
    std::exception_ptr error;
  };
  std::vector<Failure> errors_;  // one per thread of the current job
  std::vector<std::thread> workers_;
};

}  // namespace

int max_pool_threads() {
  static const int cap = [] {
    const unsigned cpus = std::thread::hardware_concurrency();  // 0 when unknown
    return kThreadsPerCpu * static_cast<int>(std::max(1u, std::min(cpus, 1u << 16)));
  }();
  return cap;
}

void parallel_for(int tasks, const std::function<void(int)>& task) {
  if (tasks <= 1) {
    if (tasks == 1) task(0);
    return;
  }
  // One pool per process, never destroyed (its detached workers may still be asleep at exit).
  // A forked child has none of its parent's workers: it starts its own pool.
  static std::mutex pools_mutex;
  static ThreadPool* pool = nullptr;
  static pid_t owner = 0;
  ThreadPool* current;
  {
    std::lock_guard<std::mutex> lock(pools_mutex);
    if (pool == nullptr || owner != getpid()) {
      pool = new ThreadPool();
      owner = getpid();
    }
    current = pool;
  }
  current->run(tasks, std::min(tasks, max_pool_threads()), task);
}

}  // namespace bayesq
