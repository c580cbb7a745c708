// Worker threads for parallel kernel calls (task_pool.h).

#include "task_pool.h"

#include <chrono>

namespace tfquant {
namespace kernels {

namespace {

// How long a waiting worker (or the caller) spins before it sleeps on the
// condition variable. A futex wake-up of a sleeping thread took about
// 0.25 ms on the 2-core VM, more than a whole cache-hot 1x4096x4096 GEMV, and
// inside tf.function about 0.1 ms passes between two calls (measured: 4-bit
// GEMV in tf.function 0.29 ms with a 0.1 ms spin, 0.06 ms with 1 ms). Spinning
// with sched_yield instead was worse: LiteRT invokes then often waited the
// whole wake-up (0.25-0.3 ms medians, measured), so the spin is pause-only.
constexpr auto kSpinWindow = std::chrono::microseconds(1000);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Returns once done() holds or kSpinWindow has passed.
template <typename Done>
void AwaitBriefly(const Done& done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinWindow;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return;
      CpuRelax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return;
  }
}

}  // namespace

TaskPool::TaskPool(int num_threads) {
  try {
    for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  } catch (...) {
    StopWorkers();  // the ones already started
    throw;
  }
}

TaskPool::~TaskPool() { StopWorkers(); }

void TaskPool::StopWorkers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
}

void TaskPool::RunTasks() {
  for (int64_t i = next_task_.fetch_add(1); i < num_tasks_; i = next_task_.fetch_add(1)) {
    (*task_)(i);
  }
}

void TaskPool::WorkerLoop() {
  int64_t seen = 0;
  for (;;) {
    AwaitBriefly([&] {
      return generation_.load(std::memory_order_acquire) != seen ||
             stop_.load(std::memory_order_acquire);
    });
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
      if (stop_.load()) return;
      seen = generation_.load();
    }
    RunTasks();
    if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

void TaskPool::Run(int64_t num_tasks, const std::function<void(int64_t)>& task) {
  if (num_tasks <= 1 || workers_.empty()) {
    for (int64_t i = 0; i < num_tasks; ++i) task(i);
    return;
  }
  std::lock_guard<std::mutex> turn(run_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    num_tasks_ = num_tasks;
    next_task_.store(0);
    busy_workers_.store(static_cast<int>(workers_.size()));
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  RunTasks();
  AwaitBriefly([&] { return busy_workers_.load(std::memory_order_acquire) == 0; });
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busy_workers_.load() == 0; });
}

}  // namespace kernels
}  // namespace tfquant
