// Op registration and shape function of the SeerNet convolution
// (cc_ops/kernels/seer_conv.h). The kernel lives in seer_conv_kernels.cc.

#include <string>

#include "absl/status/status.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfquant {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Output spatial size along one axis, or unknown.
DimensionHandle OutputDim(InferenceContext* c, DimensionHandle in, DimensionHandle kernel,
                          int64_t stride, bool same, int64_t pool) {
  if (!c->ValueKnown(in) || !c->ValueKnown(kernel)) return c->UnknownDim();
  const int64_t n = c->Value(in), kk = c->Value(kernel);
  const int64_t conv = same ? (n + stride - 1) / stride : (n >= kk ? (n - kk) / stride + 1 : 0);
  return c->MakeDim(conv / pool);
}

absl::Status SeerConvShape(InferenceContext* c) {
  ShapeHandle x, filter;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &filter));
  int64_t stride_h, stride_w, pool;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("stride_h", &stride_h));
  TF_RETURN_IF_ERROR(c->GetAttr("stride_w", &stride_w));
  TF_RETURN_IF_ERROR(c->GetAttr("pool", &pool));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  if (stride_h < 1 || stride_w < 1 || (pool != 1 && pool != 2)) {
    return absl::InvalidArgumentError("strides must be >= 1 and pool 1 or 2");
  }
  const bool same = padding == "SAME";
  c->set_output(0, c->MakeShape({c->Dim(x, 0),
                                 OutputDim(c, c->Dim(x, 1), c->Dim(filter, 0), stride_h, same, pool),
                                 OutputDim(c, c->Dim(x, 2), c->Dim(filter, 1), stride_w, same, pool),
                                 c->Dim(filter, 3)}));
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("TfquantSeerConv2D")
    .Input("x: float")
    .Input("filter: float")
    .Input("bias: float")
    .Input("predictor: uint8")
    .Input("predictor_scales: float")
    .Output("y: float")
    .Output("computed: int64")
    .Attr("stride_h: int = 1")
    .Attr("stride_w: int = 1")
    .Attr("padding: {'SAME', 'VALID'} = 'SAME'")
    .Attr("pool: int = 1")
    .Attr("bits: int = 4")
    .Attr("threshold: float = 0.0")
    .SetShapeFn(SeerConvShape)
    .Doc(R"doc(
SeerNet's Conv2D + bias + ReLU (pool=2: then a 2x2 max-pool of stride 2,
VALID): x [batch, h, w, cin] (NHWC), filter [kh, kw, cin, cout], bias [cout].
A low-bit predictor, the packed 2/4-bit weights of filter reshaped to
[kh*kw*cin, cout] with per-channel scales [cout], run on int8 activations,
decides where the float convolution is computed: where its output exceeds
threshold (pool=2: at the window's largest prediction only); y is 0
elsewhere. computed: how many outputs the float convolution computed.
Inference only (no gradient).
)doc");

}  // namespace tfquant
