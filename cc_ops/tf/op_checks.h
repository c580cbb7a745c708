// What the TensorFlow OpKernels in cc_ops/tf/ share: the names they use,
// turning a kernels/ check message into InvalidArgument (never a CHECK
// failure), and running tiles on TF's intra-op pool.

#ifndef TFQUANT_CC_OPS_TF_OP_CHECKS_H_
#define TFQUANT_CC_OPS_TF_OP_CHECKS_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tfquant {
namespace kernels {}

namespace tf_ops {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

namespace k = ::tfquant::kernels;

// Fails the op (construction or Compute) with InvalidArgument unless `expr`,
// a check that returns "" or a message, returns "".
#define TFQ_REQUIRE_EMPTY(ctx, expr)                              \
  do {                                                            \
    const std::string _e = (expr);                                \
    OP_REQUIRES(ctx, _e.empty(), absl::InvalidArgumentError(_e)); \
  } while (0)

// "" if t has `rank` dimensions, else "<what>; got shape [...]".
inline std::string RankError(const Tensor& t, int rank, const std::string& what) {
  return t.dims() == rank ? "" : what + "; got shape " + t.shape().DebugString();
}

// Work (CPU cycles over all tiles) below which one thread runs every tile:
// handing tiles to another thread of the pool costs tens of microseconds
// (about 50 us on the 2-core machine of BENCHMARKS.md, "QAT step time": more
// than the whole fake-quant forward of a 200K-float tensor, 45 us), and
// Eigen's cost model, which would split such work, assumes less.
constexpr int64_t kMinParallelCycles = int64_t{1} << 20;

// Runs fn(begin, end) over tiles [0, num_tiles) on the op's intra-op pool;
// cost: about the CPU cycles of one tile, for the pool's sharding.
inline void RunTilesOnPool(OpKernelContext* ctx, int64_t num_tiles, int64_t cost,
                           const std::function<void(int64_t, int64_t)>& fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  if (pool == nullptr || num_tiles <= 1 || num_tiles * cost < kMinParallelCycles) {
    if (num_tiles > 0) fn(0, num_tiles);
    return;
  }
  pool->ParallelFor(num_tiles, ::tsl::thread::ThreadPool::SchedulingParams::Adaptive(cost),
                    fn);
}

}  // namespace tf_ops
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_TF_OP_CHECKS_H_
