// CPU OpKernels for TfquantFakeQuant and TfquantFakeQuantGrad: validate the
// arguments (never CHECK-fail), then run the plain C++ kernels from
// cc_ops/kernels/ over fixed tiles on TF's intra-op thread pool.

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cc_ops/kernels/fake_quant.h"
#include "cc_ops/kernels/fake_quant_plan.h"
#include "cc_ops/tf/op_checks.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tfquant {
namespace tf_ops {
namespace {

// Attributes, argument checks and the thread-pool runner shared by the
// forward and the gradient kernels.
class FakeQuantOpBase : public OpKernel {
 public:
  explicit FakeQuantOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t num_bits = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_bits", &num_bits));
    TFQ_REQUIRE_EMPTY(ctx, k::CheckNumBits(num_bits));
    num_bits_ = static_cast<int>(num_bits);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("narrow_range", &narrow_range_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
    std::string range_gradient;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("range_gradient", &range_gradient));
    TFQ_REQUIRE_EMPTY(ctx, k::ParseRangeGradient(range_gradient, &range_gradient_));
  }

 protected:
  // What the checked inputs x, min, max give.
  struct Prepared {
    k::FakeQuantShape shape;
    std::vector<k::NudgedRange> ranges;
  };

  // x, min, max are inputs x_index, x_index + 1, x_index + 2. On failure
  // sets the context status and returns false.
  bool Prepare(OpKernelContext* ctx, int x_index, Prepared* p) const {
    const Tensor& inputs = ctx->input(x_index);
    const Tensor& min = ctx->input(x_index + 1);
    const Tensor& max = ctx->input(x_index + 2);
    const auto dims = inputs.shape().dim_sizes();
    const std::vector<int64_t> dims_vec(dims.begin(), dims.end());
    std::string error = k::ResolveFakeQuantShape(
        dims_vec.data(), inputs.dims(), min.dims(), min.NumElements(),
        max.dims(), max.NumElements(), axis_, &p->shape);
    if (error.empty()) {
      error = k::CheckRangeValues(min.flat<float>().data(),
                                  max.flat<float>().data(), min.NumElements(),
                                  p->shape.per_channel);
    }
    if (!error.empty()) {
      ctx->CtxFailure(__FILE__, __LINE__, absl::InvalidArgumentError(error));
      return false;
    }
    p->ranges = k::NudgeRanges(min.flat<float>().data(),
                               max.flat<float>().data(), min.NumElements(),
                               num_bits_, narrow_range_);
    return true;
  }

  // cycles_per_element: measured single-threaded on L2-resident tensors
  // (AVX-512, about 0.7 forward and 1.5 backward), rounded up.
  static k::TileRunner PoolRunner(OpKernelContext* ctx,
                                  const k::FakeQuantPlan& plan,
                                  int64_t cycles_per_element) {
    const int64_t cost = cycles_per_element * plan.tile_elements();
    return [ctx, cost](int64_t num_tiles,
                       const std::function<void(int64_t, int64_t)>& fn) {
      RunTilesOnPool(ctx, num_tiles, cost, fn);
    };
  }

  int num_bits_ = 8;
  bool narrow_range_ = false;
  int64_t axis_ = -1;
  k::RangeGradient range_gradient_ = k::RangeGradient::kClipped;
};

// Inputs: x, min, max.
class FakeQuantOp : public FakeQuantOpBase {
 public:
  using FakeQuantOpBase::FakeQuantOpBase;

  void Compute(OpKernelContext* ctx) override {
    Prepared p;
    if (!Prepare(ctx, /*x_index=*/0, &p)) return;
    const Tensor& inputs = ctx->input(0);
    Tensor* outputs = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output(
                            {0}, 0, inputs.shape(), &outputs));
    const k::FakeQuantPlan plan(p.shape, k::FakeQuantFamily().selected());
    plan.Forward(inputs.flat<float>().data(), p.ranges.data(),
                 outputs->flat<float>().data(), PoolRunner(ctx, plan, 1));
  }
};

// Inputs: dy, x, min, max.
class FakeQuantGradOp : public FakeQuantOpBase {
 public:
  using FakeQuantOpBase::FakeQuantOpBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& gradients = ctx->input(0);
    const Tensor& inputs = ctx->input(1);
    OP_REQUIRES(ctx, gradients.shape() == inputs.shape(),
                absl::InvalidArgumentError(
                    absl::StrCat("gradients shape ",
                                 gradients.shape().DebugString(),
                                 " must equal inputs shape ",
                                 inputs.shape().DebugString())));
    Prepared p;
    if (!Prepare(ctx, /*x_index=*/1, &p)) return;
    Tensor* dx = nullptr;
    Tensor* dmin = nullptr;
    Tensor* dmax = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output(
                            {0}, 0, inputs.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(2).shape(), &dmin));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(3).shape(), &dmax));
    const k::FakeQuantPlan plan(p.shape, k::FakeQuantFamily().selected());
    plan.Backward(gradients.flat<float>().data(), inputs.flat<float>().data(),
                  p.ranges.data(), range_gradient_, dx->flat<float>().data(),
                  dmin->flat<float>().data(), dmax->flat<float>().data(),
                  PoolRunner(ctx, plan, 2));
  }
};

REGISTER_KERNEL_BUILDER(
    Name("TfquantFakeQuant").Device(::tensorflow::DEVICE_CPU), FakeQuantOp);
REGISTER_KERNEL_BUILDER(
    Name("TfquantFakeQuantGrad").Device(::tensorflow::DEVICE_CPU),
    FakeQuantGradOp);

}  // namespace
}  // namespace tf_ops
}  // namespace tfquant
