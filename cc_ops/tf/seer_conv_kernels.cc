// The TfquantSeerConv2D kernel: validates every input, transposes the filter
// to [cout, K] for the sparse dot and runs the two phases of seer_conv.h on
// TF's intra-op pool (a task is tens of microseconds of work).

#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cc_ops/kernels/packed.h"
#include "cc_ops/kernels/seer_conv.h"
#include "cc_ops/tf/op_checks.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfquant {
namespace tf_ops {
namespace {

class SeerConvOp : public OpKernel {
 public:
  explicit SeerConvOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stride_h", &stride_h_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stride_w", &stride_w_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pool", &pool_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &bits_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("threshold", &threshold_));
    same_ = padding == "SAME";
    TFQ_REQUIRE_EMPTY(ctx, k::CheckPackedBits(bits_));
    OP_REQUIRES(ctx, !std::isnan(threshold_),
                absl::InvalidArgumentError("threshold must not be NaN"));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& filter = ctx->input(1);
    const Tensor& bias = ctx->input(2);
    const Tensor& predictor = ctx->input(3);
    const Tensor& scales = ctx->input(4);
    TFQ_REQUIRE_EMPTY(ctx, RankError(x, 4, "x must be 4-D [batch, height, width, channels]"));
    TFQ_REQUIRE_EMPTY(ctx, RankError(filter, 4, "filter must be 4-D [kh, kw, cin, cout]"));
    TFQ_REQUIRE_EMPTY(ctx, RankError(predictor, 1, "predictor must be 1-D (packed)"));
    OP_REQUIRES(ctx, filter.dim_size(2) == x.dim_size(3),
                absl::InvalidArgumentError(
                    "filter has " + std::to_string(filter.dim_size(2)) +
                    " input channels but x has " + std::to_string(x.dim_size(3))));
    const int64_t cout = filter.dim_size(3);
    OP_REQUIRES(ctx, bias.dims() == 1 && bias.dim_size(0) == cout,
                absl::InvalidArgumentError("bias must be [" + std::to_string(cout) +
                                           "]; got shape " + bias.shape().DebugString()));
    k::SeerConvGeometry g;
    TFQ_REQUIRE_EMPTY(ctx, k::MakeSeerConvGeometry(
                               x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3),
                               filter.dim_size(0), filter.dim_size(1), cout, stride_h_,
                               stride_w_, same_, pool_, &g));
    const int64_t kk = g.patch_size();
    const auto sd = scales.shape().dim_sizes();
    TFQ_REQUIRE_EMPTY(ctx, k::CheckPackedMatmul(kk, cout, bits_, 0, predictor.NumElements(),
                                                std::vector<int64_t>(sd.begin(), sd.end()),
                                                cout));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({g.batch, g.out_h(), g.out_w(), cout}), &y));
    Tensor* computed = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &computed));
    computed->scalar<int64_t>()() = 0;
    if (g.batch == 0) return;

    Tensor filter_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({cout, kk}), &filter_t));
    float* ft = filter_t.flat<float>().data();
    k::SeerConvFilterRows(filter.flat<float>().data(), kk, cout, ft);
    k::SeerConvArgs a;
    a.g = g;
    a.x = x.flat<float>().data();
    a.filter_t = ft;
    a.bias = bias.flat<float>().data();
    a.predictor = predictor.flat<uint8_t>().data();
    a.predictor_scales = scales.flat<float>().data();
    a.bits = static_cast<int>(bits_);
    a.threshold = threshold_;
    a.y = y->flat<float>().data();
    Tensor xs;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({g.batch}), &xs));
    a.xs = xs.flat<float>().data();

    const k::SeerConvKernelTable& table = k::SeerConvFamily().selected();
    RunTilesOnPool(ctx, g.batch, g.h * g.w * g.cin * 4, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) k::SeerConvImageScale(a, table, b);
    });
    std::atomic<int64_t> total{0};
    const int64_t cost = 64 * kk * cout;  // multiply-adds of a dense band
    RunTilesOnPool(ctx, k::SeerConvTasks(g), cost, [&](int64_t t0, int64_t t1) {
      int64_t sum = 0;
      for (int64_t t = t0; t < t1; ++t) sum += k::SeerConvTask(a, table, t);
      total += sum;
    });
    computed->scalar<int64_t>()() = total.load();
  }

 private:
  int64_t stride_h_ = 1, stride_w_ = 1, pool_ = 1, bits_ = 4;
  float threshold_ = 0.0f;
  bool same_ = true;
};

REGISTER_KERNEL_BUILDER(Name("TfquantSeerConv2D").Device(::tensorflow::DEVICE_CPU), SeerConvOp);

}  // namespace
}  // namespace tf_ops
}  // namespace tfquant
