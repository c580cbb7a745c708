// Op registration and shape function for the moving-average range update of
// MovingAverageQuantizer. The kernel lives in range_kernels.cc.

#include "absl/status/status.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfquant {
namespace {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// old_min, old_max, observed, frozen (inputs 1..4): scalars; both outputs are
// scalars. Checks what is known statically; the kernel checks again.
absl::Status MovingAverageRangeShape(InferenceContext* c) {
  for (int i = 1; i <= 4; ++i) {
    ShapeHandle scalar;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &scalar));
  }
  c->set_output(0, c->Scalar());
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("TfquantMovingAverageRange")
    .Input("x: float")
    .Input("old_min: float")
    .Input("old_max: float")
    .Input("observed: float")
    .Input("frozen: float")
    .Output("new_min: float")
    .Output("new_max: float")
    .Attr("decay: float")
    .Attr("one_minus_decay: float")
    .Attr("symmetric: bool = false")
    .SetShapeFn(MovingAverageRangeShape)
    .Doc(R"doc(
The range MovingAverageQuantizer keeps, updated from the batch x, in float32
as its composed TensorFlow version computes it: b_min = min(reduce_min(x), 0),
b_max = max(reduce_max(x), 0) (a NaN anywhere in x makes both NaN, as
reduce_min/max do; an empty x gives 0, 0); symmetric: b_max = max(-b_min,
b_max), b_min = -b_max. The first batch (observed < 0.5) sets the range, later
ones give decay*old + one_minus_decay*b. The old range is kept if the new one
is not finite, or if frozen > 0.5 after the first batch. `one_minus_decay` is
the float32 of 1 - decay computed in double (as Python computes it), passed
separately since a float attr holds decay only to float32. Not differentiable.
)doc");

}  // namespace tfquant
