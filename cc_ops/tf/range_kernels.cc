// TfquantMovingAverageRange: MovingAverageQuantizer's range update in one op
// (registered in range_ops.cc). Every step is the float32 arithmetic of the
// composed TensorFlow version in tfquant/quantizers/uniform.py, including
// TF's NaN and signed-zero results, so the two give the same bits. One
// exception: if x holds zeros of both signs and its minimum (maximum) is 0,
// reduce_min (reduce_max) returns the sign of whichever zero its reduction
// order meets, and so does this kernel (in its own order). The two values are
// equal (-0 == +0) and fake-quantize alike.

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "absl/status/status.h"
#include "cc_ops/tf/op_checks.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfquant {
namespace tf_ops {
namespace {

// Elements per tile of the batch min/max pass.
constexpr int64_t kRangeTile = 1 << 15;

struct BatchRange {
  float min = std::numeric_limits<float>::infinity();
  float max = -std::numeric_limits<float>::infinity();
  bool has_nan = false;
};

// min, max and "any NaN" of p[0, n) in one pass. Which zero a minimum or
// maximum of 0 gets when p holds both signs is unspecified (as in Eigen).
BatchRange ScanRange(const float* p, int64_t n) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  bool nan = false;
  int64_t i = 0;
#if defined(__SSE2__)
  // Two accumulators of 4 lanes each; NaN lanes are recorded by the unordered
  // compare (minps/maxps alone would drop them).
  __m128 lo0 = _mm_set1_ps(lo), lo1 = lo0, hi0 = _mm_set1_ps(hi), hi1 = hi0;
  __m128 nan0 = _mm_setzero_ps(), nan1 = nan0;
  for (; i + 8 <= n; i += 8) {
    const __m128 a = _mm_loadu_ps(p + i);
    const __m128 b = _mm_loadu_ps(p + i + 4);
    lo0 = _mm_min_ps(lo0, a);
    lo1 = _mm_min_ps(lo1, b);
    hi0 = _mm_max_ps(hi0, a);
    hi1 = _mm_max_ps(hi1, b);
    nan0 = _mm_or_ps(nan0, _mm_cmpunord_ps(a, a));
    nan1 = _mm_or_ps(nan1, _mm_cmpunord_ps(b, b));
  }
  alignas(16) float lanes_lo[4], lanes_hi[4];
  _mm_store_ps(lanes_lo, _mm_min_ps(lo0, lo1));
  _mm_store_ps(lanes_hi, _mm_max_ps(hi0, hi1));
  nan = _mm_movemask_ps(_mm_or_ps(nan0, nan1)) != 0;
  for (int lane = 0; lane < 4; ++lane) {
    lo = lanes_lo[lane] < lo ? lanes_lo[lane] : lo;
    hi = lanes_hi[lane] > hi ? lanes_hi[lane] : hi;
  }
#endif
  for (; i < n; ++i) {
    const float v = p[i];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    nan = nan || std::isnan(v);
  }
  BatchRange r;
  r.min = lo;
  r.max = hi;
  r.has_nan = nan;
  return r;
}

// tf.minimum(a, 0.0), tf.maximum(a, 0.0) and tf.maximum(a, b) as TF's kernels
// compute them: NaN propagates, and of two equal values (zeros of either sign)
// the first argument is returned.
float MinWithZero(float a) { return (std::isnan(a) || a <= 0.0f) ? a : 0.0f; }
float MaxWithZero(float a) { return (std::isnan(a) || a >= 0.0f) ? a : 0.0f; }
float TfMaximum(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) ? a : b;
  return a >= b ? a : b;
}

class MovingAverageRangeOp : public OpKernel {
 public:
  explicit MovingAverageRangeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("decay", &decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("one_minus_decay", &one_minus_decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("symmetric", &symmetric_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    static const char* const kNames[] = {"old_min", "old_max", "observed", "frozen"};
    for (int i = 1; i <= 4; ++i) {
      TFQ_REQUIRE_EMPTY(ctx, RankError(ctx->input(i), 0,
                                       std::string(kNames[i - 1]) + " must be a scalar"));
    }
    const float old_min = ctx->input(1).scalar<float>()();
    const float old_max = ctx->input(2).scalar<float>()();
    const float observed = ctx->input(3).scalar<float>()();
    const float frozen = ctx->input(4).scalar<float>()();

    const BatchRange batch = ReduceRange(ctx, x);
    // tf.reduce_min/max give NaN if any element is NaN (+inf/-inf if x is empty).
    float batch_min = batch.has_nan ? std::numeric_limits<float>::quiet_NaN() : batch.min;
    float batch_max = batch.has_nan ? std::numeric_limits<float>::quiet_NaN() : batch.max;
    batch_min = MinWithZero(batch_min);
    batch_max = MaxWithZero(batch_max);
    if (symmetric_) {
      batch_max = TfMaximum(-batch_min, batch_max);
      batch_min = -batch_max;
    }
    const bool first = observed < 0.5f;
    float new_min = batch_min;
    float new_max = batch_max;
    if (!first) {
      // Two products rounded to float32, then their sum (no FMA: -ffp-contract=off).
      const float keep_min = decay_ * old_min;
      const float take_min = one_minus_decay_ * batch_min;
      const float keep_max = decay_ * old_max;
      const float take_max = one_minus_decay_ * batch_max;
      new_min = keep_min + take_min;
      new_max = keep_max + take_max;
    }
    const bool finite = std::isfinite(new_min) && std::isfinite(new_max);
    const bool keep = !finite || (frozen > 0.5f && !first);
    if (keep) {
      new_min = old_min;
      new_max = old_max;
    }
    Tensor* out_min = nullptr;
    Tensor* out_max = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out_min));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &out_max));
    out_min->scalar<float>()() = new_min;
    out_max->scalar<float>()() = new_max;
  }

 private:
  // The range of all of x, tiles scanned on the intra-op pool.
  static BatchRange ReduceRange(OpKernelContext* ctx, const Tensor& x) {
    const int64_t n = x.NumElements();
    if (n == 0) return BatchRange();
    const float* p = x.flat<float>().data();
    const int64_t tiles = (n + kRangeTile - 1) / kRangeTile;
    std::vector<BatchRange> partial(tiles);
    // Cost: about a cycle an element (SSE2).
    RunTilesOnPool(ctx, tiles, kRangeTile, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t lo = t * kRangeTile;
        partial[t] = ScanRange(p + lo, n - lo < kRangeTile ? n - lo : kRangeTile);
      }
    });
    BatchRange all = partial[0];
    for (int64_t t = 1; t < tiles; ++t) {
      all.min = partial[t].min < all.min ? partial[t].min : all.min;
      all.max = partial[t].max > all.max ? partial[t].max : all.max;
      all.has_nan = all.has_nan || partial[t].has_nan;
    }
    return all;
  }

  float decay_ = 0.0f;
  float one_minus_decay_ = 1.0f;
  bool symmetric_ = false;
};

}  // namespace

REGISTER_KERNEL_BUILDER(
    Name("TfquantMovingAverageRange").Device(::tensorflow::DEVICE_CPU),
    MovingAverageRangeOp);

}  // namespace tf_ops
}  // namespace tfquant
