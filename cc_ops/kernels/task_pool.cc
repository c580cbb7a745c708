// Worker threads for parallel kernel calls (task_pool.h).

#include "task_pool.h"

namespace tfquant {
namespace kernels {

namespace {

// Pauses a worker (or the caller) spins through, about 0.1 ms, before it
// sleeps on the condition variable: between back-to-back invokes a futex
// sleep and wake-up costs as much as a whole 1x4096x4096 GEMV (measured: two
// threads were slower than one), while a spinning worker starts at once.
constexpr int kSpins = 4000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
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
    for (int i = 0; i < kSpins && generation_.load(std::memory_order_acquire) == seen &&
                    !stop_.load(std::memory_order_acquire);
         ++i) {
      CpuRelax();
    }
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
  for (int i = 0; i < kSpins && busy_workers_.load(std::memory_order_acquire) != 0; ++i) {
    CpuRelax();
  }
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busy_workers_.load() == 0; });
}

}  // namespace kernels
}  // namespace tfquant
