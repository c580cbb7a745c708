// Ops on packed 2/4-bit weights (format: cc_ops/kernels/packed.h):
// TfquantPackWeights, TfquantUnpackWeights, TfquantPackedMatmul. Every
// argument is validated with OP_REQUIRES; the matmul runs on as many threads
// as TF's intra-op pool has, through a spinning TaskPool of its own.

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include "absl/status/status.h"
#include "cc_ops/kernels/packed.h"
#include "cc_ops/kernels/task_pool.h"
#include "cc_ops/tf/op_checks.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfquant {
namespace tf_ops {
namespace {

using ::tensorflow::shape_inference::InferenceContext;

// One TaskPool per thread count, shared by all op instances and never freed
// (its threads end with the process). TF's own pool puts idle workers to
// sleep, and the futex wake-up of every call cost more than it saved on a
// 1x4096x4096 GEMV (measured: two threads through ParallelFor 109 us, one
// thread 93 us, from L3); TaskPool workers spin briefly between calls.
// nullptr if the threads cannot be started. A forked child inherits the
// pools but not their threads, so it starts its own (the parent's leak).
k::TaskPool* SharedTaskPool(int threads) {
  static std::mutex mutex;
  static auto* pools = new std::map<int, k::TaskPool*>();
  static pid_t owner = getpid();
  std::lock_guard<std::mutex> lock(mutex);
  if (getpid() != owner) {
    pools = new std::map<int, k::TaskPool*>();
    owner = getpid();
  }
  k::TaskPool*& pool = (*pools)[threads];
  if (pool == nullptr) {
    try {
      pool = new k::TaskPool(threads);
    } catch (const std::system_error&) {
      return nullptr;
    }
  }
  return pool;
}

}  // namespace

REGISTER_OP("TfquantPackWeights")
    .Input("q: int32")
    .Output("packed: uint8")
    .Attr("bits: int")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc("Packs integer weights q [K, N] into the layout of packed.h (1-D uint8).");

REGISTER_OP("TfquantUnpackWeights")
    .Input("packed: uint8")
    .Output("q: int8")
    .Attr("bits: int")
    .Attr("k: int")
    .Attr("n: int")
    .SetShapeFn([](InferenceContext* c) {
      int64_t kk, n;
      TF_RETURN_IF_ERROR(c->GetAttr("k", &kk));
      TF_RETURN_IF_ERROR(c->GetAttr("n", &n));
      c->set_output(0, c->Matrix(kk, n));
      return absl::OkStatus();
    })
    .Doc("Inverse of TfquantPackWeights: int8 [k, n].");

REGISTER_OP("TfquantPackedMatmul")
    .Input("x: float")
    .Input("packed: uint8")
    .Input("scales: float")
    .Input("bias: float")
    .Output("y: float")
    .Attr("bits: int")
    .Attr("n: int")
    .Attr("group_size: int = 0")
    .Attr("has_bias: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      int64_t n;
      TF_RETURN_IF_ERROR(c->GetAttr("n", &n));
      ::tensorflow::shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      c->set_output(0, c->Matrix(c->Dim(x, 0), n));
      return absl::OkStatus();
    })
    .Doc(R"doc(
y = x [M, K] times packed 2/4-bit weights [K, n] (+ bias), with x quantized
dynamically to int8 per row, int32 accumulation and per-channel or per-group
float scales (cc_ops/kernels/packed.h).
)doc");

namespace {

// The "bits" attribute every packed op has, read and checked.
class PackedOpBase : public OpKernel {
 public:
  explicit PackedOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &bits_));
    TFQ_REQUIRE_EMPTY(ctx, k::CheckPackedBits(bits_));
  }

 protected:
  int bits_ = 4;
};

class PackWeightsOp : public PackedOpBase {
 public:
  using PackedOpBase::PackedOpBase;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    TFQ_REQUIRE_EMPTY(ctx, RankError(q, 2, "q must be 2-D [K, N]"));
    const int64_t kk = q.dim_size(0), n = q.dim_size(1);
    TFQ_REQUIRE_EMPTY(ctx, k::CheckPackedDims(kk, n));
    const int32_t* src = q.flat<int32_t>().data();
    const int64_t lo = -(int64_t{1} << (bits_ - 1)), hi = -lo - 1;
    std::vector<int8_t> narrow(kk * n);
    for (int64_t i = 0; i < kk * n; ++i) {
      OP_REQUIRES(ctx, src[i] >= lo && src[i] <= hi,
                  absl::InvalidArgumentError(
                      "value " + std::to_string(src[i]) + " at [" +
                      std::to_string(i / n) + ", " + std::to_string(i % n) +
                      "] does not fit in " + std::to_string(bits_) +
                      " bits (allowed " + std::to_string(lo) + ".." +
                      std::to_string(hi) + ")"));
      narrow[i] = static_cast<int8_t>(src[i]);
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({k::PackedBytes(kk, n, bits_)}), &out));
    TFQ_REQUIRE_EMPTY(ctx, k::PackWeights(narrow.data(), kk, n, bits_,
                                          out->flat<uint8_t>().data()));
  }
};

class UnpackWeightsOp : public PackedOpBase {
 public:
  explicit UnpackWeightsOp(OpKernelConstruction* ctx) : PackedOpBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("n", &n_));
    TFQ_REQUIRE_EMPTY(ctx, k::CheckPackedDims(k_, n_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& packed = ctx->input(0);
    const int64_t want = k::PackedBytes(k_, n_, bits_);
    OP_REQUIRES(ctx, packed.dims() == 1 && packed.NumElements() == want,
                absl::InvalidArgumentError(
                    "packed has shape " + packed.shape().DebugString() +
                    ", but k=" + std::to_string(k_) + ", n=" + std::to_string(n_) +
                    " at " + std::to_string(bits_) + " bits need [" +
                    std::to_string(want) + "]"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k_, n_}), &out));
    k::UnpackWeights(packed.flat<uint8_t>().data(), k_, n_, bits_,
                     out->flat<int8_t>().data());
  }

 private:
  int64_t k_ = 0, n_ = 0;
};

class PackedMatmulOp : public PackedOpBase {
 public:
  explicit PackedMatmulOp(OpKernelConstruction* ctx) : PackedOpBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("n", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("group_size", &group_size_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_bias", &has_bias_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& packed = ctx->input(1);
    const Tensor& scales = ctx->input(2);
    const Tensor& bias = ctx->input(3);
    TFQ_REQUIRE_EMPTY(ctx, RankError(x, 2, "x must be 2-D [M, K]"));
    TFQ_REQUIRE_EMPTY(ctx, RankError(packed, 1, "packed must be 1-D"));
    const int64_t m = x.dim_size(0), kk = x.dim_size(1);
    const auto sd = scales.shape().dim_sizes();
    TFQ_REQUIRE_EMPTY(ctx, k::CheckPackedMatmul(
                               kk, n_, bits_, group_size_, packed.NumElements(),
                               std::vector<int64_t>(sd.begin(), sd.end()),
                               has_bias_ ? bias.NumElements() : -1));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m, n_}), &y));
    if (m == 0) return;
    k::PackedMatmulArgs a = k::MakePackedMatmulArgs(m, kk, n_, bits_, group_size_);
    Tensor xq, xs, xsum;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_INT8,
                                           TensorShape({m * a.kpad}), &xq));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({m}), &xs));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_INT32,
                                           TensorShape({m * a.num_groups}), &xsum));
    a.xq = xq.flat<int8_t>().data();
    a.xs = xs.flat<float>().data();
    a.xsum = xsum.flat<int32_t>().data();
    a.packed = packed.flat<uint8_t>().data();
    a.scales = scales.flat<float>().data();
    a.bias = has_bias_ ? bias.flat<float>().data() : nullptr;
    a.y = y->flat<float>().data();

    const int threads = std::max(
        1, ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads());
    k::TaskPool* pool = SharedTaskPool(threads);  // with 1 thread: no workers
    OP_REQUIRES(ctx, pool != nullptr,
                absl::ResourceExhaustedError(
                    "packed_matmul could not start its " + std::to_string(threads) +
                    " worker threads"));
    const float* xp = x.flat<float>().data();
    int8_t* xqp = xq.flat<int8_t>().data();
    float* xsp = xs.flat<float>().data();
    int32_t* xsump = xsum.flat<int32_t>().data();
    const k::PackedKernelTable& table = k::PackedFamily().selected();
    // A few rows quantize in well under a microsecond: no thread hop then.
    const int64_t quantize_chunk =
        m * kk <= (int64_t{1} << 16) ? m : k::CeilDiv(m, threads);
    pool->Run(k::CeilDiv(m, quantize_chunk), [&](int64_t t) {
      const int64_t m0 = t * quantize_chunk;
      table.quantize_rows(xp, kk, a.kpad, a.group_k, a.num_groups, m0,
                          std::min(m, m0 + quantize_chunk), xqp, xsp, xsump);
    });

    // Tasks of row_chunk rows x nb_chunk column blocks.
    // Rows: 64 int8 rows of x stay in L2 while a task sweeps its weights.
    // Column blocks: split so that there are about `threads` tasks (GEMV,
    // one contiguous stream of weights per thread) or 2 * threads (GEMM,
    // some slack for load balance); multiples of 4 blocks suit the kernels.
    const int64_t nblocks = k::CeilDiv(n_, k::kPackedNBlock);
    const int64_t row_chunk = std::min<int64_t>(m, 64);
    const int64_t row_tasks = k::CeilDiv(m, row_chunk);
    const int64_t want_tasks = m < 4 ? threads : 2 * threads;
    const int64_t nb_tasks_wanted = std::max<int64_t>(1, want_tasks / row_tasks);
    const int64_t nb_chunk =
        k::CeilDiv(k::CeilDiv(nblocks, nb_tasks_wanted), 4) * 4;
    const int64_t nb_tasks = k::CeilDiv(nblocks, nb_chunk);
    pool->Run(row_tasks * nb_tasks, [&](int64_t t) {
      const int64_t nb0 = (t % nb_tasks) * nb_chunk;
      const int64_t m0 = (t / nb_tasks) * row_chunk;
      table.matmul(a, m0, std::min(m, m0 + row_chunk), nb0,
                   std::min(nblocks, nb0 + nb_chunk));
    });
  }

 private:
  int64_t n_ = 0, group_size_ = 0;
  bool has_bias_ = false;
};

REGISTER_KERNEL_BUILDER(
    Name("TfquantPackWeights").Device(::tensorflow::DEVICE_CPU), PackWeightsOp);
REGISTER_KERNEL_BUILDER(
    Name("TfquantUnpackWeights").Device(::tensorflow::DEVICE_CPU), UnpackWeightsOp);
REGISTER_KERNEL_BUILDER(
    Name("TfquantPackedMatmul").Device(::tensorflow::DEVICE_CPU), PackedMatmulOp);

}  // namespace
}  // namespace tf_ops
}  // namespace tfquant
