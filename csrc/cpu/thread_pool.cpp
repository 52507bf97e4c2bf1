#include "cpu/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FUSEDOPT_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define FUSEDOPT_PAUSE() asm volatile("yield")
#else
#define FUSEDOPT_PAUSE() ((void)0)
#endif

namespace fusedopt {
namespace cpu {
namespace {

// Spin this many pause instructions (tens of microseconds) before sleeping: an optimizer
// step is often a burst of calls, one per parameter group, and waking a sleeping thread
// costs more than such a short wait.
constexpr int kSpinIterations = 20000;

int threads_from_env() {
  const char* env = std::getenv("FUSEDOPT_NUM_THREADS");
  if (env != nullptr) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  return available_cores();
}

class Pool {
 public:
  ~Pool() = delete;  // leaked on purpose: no join at interpreter exit, none after fork

  void run(int n_tasks, const std::function<void(int)>& task, int max_threads) {
    if (n_tasks <= 0) return;
    const int helpers = std::min(n_tasks, max_threads) - 1;
    // Another caller holds the pool (GIL released, two Python threads): run inline rather
    // than queue behind it; the results are the same either way.
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (helpers <= 0 || !busy.owns_lock()) {
      for (int i = 0; i < n_tasks; ++i) task(i);
      return;
    }
    grow(helpers);
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &task;
      n_tasks_ = n_tasks;
      next_ = 0;
      pending_.store(n_tasks, std::memory_order_relaxed);
      gen = generation_.load(std::memory_order_relaxed) + 1;
      generation_.store(gen, std::memory_order_release);
    }
    wake_.notify_all();
    work(gen);
    for (int k = 0; k < kSpinIterations && pending_.load(std::memory_order_acquire) != 0; ++k)
      FUSEDOPT_PAUSE();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    job_ = nullptr;
  }

 private:
  void grow(int helpers) {
    while (static_cast<int>(workers_.size()) < helpers) {
      workers_.emplace_back([this] { worker_loop(); });
      workers_.back().detach();
    }
  }

  // Claims one task of generation `gen`; false when that job has no task left.
  bool claim(uint64_t gen, int* index, const std::function<void(int)>** job) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (generation_.load(std::memory_order_relaxed) != gen || next_ >= n_tasks_) return false;
    *index = next_++;
    *job = job_;
    return true;
  }

  void work(uint64_t gen) {
    int index;
    const std::function<void(int)>* job;
    while (claim(gen, &index, &job)) {
      (*job)(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_all();
      }
    }
  }

  void worker_loop() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      for (int k = 0; k < kSpinIterations && generation_.load(std::memory_order_acquire) == seen; ++k)
        FUSEDOPT_PAUSE();
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      work(seen);
    }
  }

  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;      // guards the job fields below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  const std::function<void(int)>* job_ = nullptr;
  int n_tasks_ = 0;
  int next_ = 0;
  std::atomic<int> pending_{0};
};

Pool* g_pool = nullptr;
std::atomic<int> g_num_threads{0};
std::once_flag g_once;

// After fork() the child has none of the parent's threads: start from a fresh pool
// (the old one is abandoned, since its mutexes may have been held at the fork).
void reset_after_fork() { g_pool = new Pool(); }

Pool& pool() {
  std::call_once(g_once, [] {
    g_pool = new Pool();
    pthread_atfork(nullptr, nullptr, reset_after_fork);
  });
  return *g_pool;
}

}  // namespace

int available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n >= 1 ? static_cast<int>(n) : 1;
}

int get_num_threads() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = threads_from_env();
    g_num_threads.store(n, std::memory_order_relaxed);
  }
  return n;
}

void set_num_threads(int n) { g_num_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

void parallel_for(int n_tasks, const std::function<void(int)>& task) {
  pool().run(n_tasks, task, get_num_threads());
}

}  // namespace cpu
}  // namespace fusedopt
