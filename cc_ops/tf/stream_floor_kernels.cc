// TfquantStreamFloor: a benchmark helper that streams the same bytes as a
// fused fake-quant pass, over the same intra-op pool and tile size, so the
// bandwidth floor is measured with the op machinery, not assumed.

#include <cstdint>

#include "absl/status/status.h"
#include "cc_ops/kernels/fake_quant_plan.h"
#include "cc_ops/kernels/stream_floor.h"
#include "cc_ops/tf/op_checks.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfquant {
namespace tf_ops {
namespace {

class StreamFloorOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    const int num_inputs = ctx->num_inputs();
    const Tensor* b = num_inputs > 1 ? &ctx->input(1) : nullptr;
    OP_REQUIRES(ctx, b == nullptr || b->shape() == a.shape(),
                absl::InvalidArgumentError("inputs must have the same shape"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, a.shape(), &out));
    const float* pa = a.flat<float>().data();
    const float* pb = b ? b->flat<float>().data() : nullptr;
    float* po = out->flat<float>().data();
    const int64_t n = a.NumElements();
    const int64_t tile = k::FakeQuantPlan::kTileElements;
    const int64_t tiles = (n + tile - 1) / tile;
    auto run = [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t lo = t * tile;
        const int64_t len = (n - lo < tile) ? n - lo : tile;
        if (pb) {
          k::StreamAdd(pa + lo, pb + lo, len, po + lo);
        } else {
          k::StreamCopy(pa + lo, len, po + lo);
        }
      }
    };
    RunTilesOnPool(ctx, tiles, 8 * tile, run);
  }
};

}  // namespace

REGISTER_OP("TfquantStreamFloor")
    .Input("inputs: N * float")
    .Output("output: float")
    .Attr("N: int >= 1 = 1")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Benchmark helper: output = inputs[0] (N = 1, 8 bytes per element) or
inputs[0] + inputs[1] (N = 2, 12 bytes per element), streamed over the
intra-op pool in fake-quant-sized tiles. Measures the memory floor of a
fused forward (N = 1) and backward (N = 2) pass.
)doc");

REGISTER_KERNEL_BUILDER(
    Name("TfquantStreamFloor").Device(::tensorflow::DEVICE_CPU),
    StreamFloorOp);

}  // namespace tf_ops
}  // namespace tfquant
