// Op registrations and shape functions for tfquant's fake quantization.
// The kernels live in fake_quant_kernels.cc; the math in ../kernels/.

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfquant {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// min and max: both scalars (per tensor) or both vectors whose length is
// inputs' dimension `axis` (per channel). Checks only what is known
// statically; the kernel checks everything again at run time.
absl::Status CheckRangeShapes(InferenceContext* c, ShapeHandle inputs,
                              int min_index, int max_index) {
  ShapeHandle min_shape, max_shape;
  TF_RETURN_IF_ERROR(c->WithRankAtMost(c->input(min_index), 1, &min_shape));
  TF_RETURN_IF_ERROR(c->WithRankAtMost(c->input(max_index), 1, &max_shape));
  TF_RETURN_IF_ERROR(c->Merge(min_shape, max_shape, &min_shape));
  if (!c->RankKnown(min_shape) || c->Rank(min_shape) == 0 ||
      !c->RankKnown(inputs)) {
    return absl::OkStatus();
  }
  int64_t axis;
  TF_RETURN_IF_ERROR(c->GetAttr("axis", &axis));
  const int64_t rank = c->Rank(inputs);
  if (axis < -rank || axis >= rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "axis = ", axis, " is out of range for inputs of rank ", rank,
        "; allowed values are ", -rank, "..", rank - 1));
  }
  DimensionHandle channels;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(inputs, axis < 0 ? axis + rank : axis),
                              c->Dim(min_shape, 0), &channels));
  return absl::OkStatus();
}

absl::Status FakeQuantShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(CheckRangeShapes(c, c->input(0), 1, 2));
  c->set_output(0, c->input(0));
  return absl::OkStatus();
}

absl::Status FakeQuantGradShape(InferenceContext* c) {
  ShapeHandle inputs;
  TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &inputs));
  TF_RETURN_IF_ERROR(CheckRangeShapes(c, inputs, 2, 3));
  c->set_output(0, inputs);
  c->set_output(1, c->input(2));
  c->set_output(2, c->input(3));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("TfquantFakeQuant")
    .Input("inputs: float")
    .Input("min: float")
    .Input("max: float")
    .Output("outputs: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("axis: int = -1")
    .Attr("range_gradient: {'clipped', 'learned'} = 'clipped'")
    .SetShapeFn(FakeQuantShape)
    .Doc(R"doc(
Fake-quantizes `inputs` to `num_bits` on the nudged range [min, max], bit for
bit like FakeQuantWithMinMaxVars (scalar min/max) or
FakeQuantWithMinMaxVarsPerChannel along any `axis` (1-D min/max).
`range_gradient` does not change the forward; it tells the registered
gradient which range gradient to compute (see TfquantFakeQuantGrad).
)doc");

REGISTER_OP("TfquantFakeQuantGrad")
    .Input("gradients: float")
    .Input("inputs: float")
    .Input("min: float")
    .Input("max: float")
    .Output("backprops_wrt_input: float")
    .Output("backprop_wrt_min: float")
    .Output("backprop_wrt_max: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("axis: int = -1")
    .Attr("range_gradient: {'clipped', 'learned'} = 'clipped'")
    .SetShapeFn(FakeQuantGradShape)
    .Doc(R"doc(
Straight-through gradient of TfquantFakeQuant with respect to inputs, min and
max (range gradients summed per channel, deterministically). `clipped`: TF's
range gradient (only elements outside the nudged range count). `learned`: the
learned-step-size gradient (LSQ, LSQ+, TQT): elements inside the range add
-(q - u)/N to d/dmin and (q - u)/N to d/dmax, with u the unrounded level.
)doc");

}  // namespace tfquant
