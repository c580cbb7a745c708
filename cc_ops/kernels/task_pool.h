// A fixed set of worker threads that run the tasks of one parallel call at a
// time, so that a kernel invoked thousands of times does not pay a thread
// start per call (measured: a std::thread start costs about as much as the
// whole 1x4096x4096 packed GEMV it would share). Plain C++, no TF header.

#ifndef TFQUANT_CC_OPS_KERNELS_TASK_POOL_H_
#define TFQUANT_CC_OPS_KERNELS_TASK_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tfquant {
namespace kernels {

class TaskPool {
 public:
  // num_threads - 1 workers; the thread calling Run is the last one.
  // Throws std::system_error if a thread cannot be started.
  explicit TaskPool(int num_threads);
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls task(i) for i in [0, num_tasks) on the workers and the caller;
  // returns when all are done. Calls from several threads take turns.
  // `task` must not throw.
  void Run(int64_t num_tasks, const std::function<void(int64_t)>& task);

 private:
  void WorkerLoop();
  void StopWorkers();
  void RunTasks();

  std::mutex run_mutex_;  // one Run at a time
  std::mutex mutex_;      // guards the fields below (see generation_)
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t num_tasks_ = 0;
  // Written under mutex_, read by spinning threads without it.
  std::atomic<int64_t> generation_{0};
  std::atomic<int> busy_workers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> next_task_{0};
  std::vector<std::thread> workers_;
};

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_TASK_POOL_H_
