// Scalar reference implementation of the fake quantization kernels.
// Must be compiled with -ffp-contract=off: a fused multiply-add would change
// the rounding and break bit identity with TensorFlow. Written branch-free so
// that, with -fno-trapping-math, GCC vectorizes it with baseline SSE2.

#include <cmath>
#include <cstdint>

#include "fake_quant.h"

namespace tfquant {
namespace kernels {

NudgedRange NudgeRange(float min, float max, int quant_min, int quant_max) {
  NudgedRange r;
  r.inv_levels = 1.0f / static_cast<float>(quant_max - quant_min);
  if (min == 0.0f && max == 0.0f) return r;  // zero_range
  r.zero_range = false;
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  r.scale = (max - min) / (qmax - qmin);
  // Computed on its own (not 1 / scale) because TF does so.
  r.inv_scale = (qmax - qmin) / (max - min);
  const float zero_point_from_min = qmin - min / r.scale;
  float zero_point;
  if (zero_point_from_min < qmin) {
    zero_point = qmin;
  } else if (zero_point_from_min > qmax) {
    zero_point = qmax;
  } else if (std::isnan(zero_point_from_min)) {
    // Only when (max - min) underflows to a zero scale with min == 0; TF's
    // cast of NaN is undefined there, we pick the lowest level.
    zero_point = qmin;
  } else {
    zero_point = std::round(zero_point_from_min);  // half away from zero
  }
  r.nudged_min = (qmin - zero_point) * r.scale;
  r.nudged_max = (qmax - zero_point) * r.scale;
  r.quant_zero = std::floor(-r.nudged_min * r.inv_scale + 0.5f);
  r.recip_scale = 1.0f / r.scale;
  r.fma_divide = r.scale >= 0x1p-60f && r.scale <= 0x1p60f;  // false for NaN
  return r;
}

namespace {

// Exact floor (checked against std::floor for all 2^32 floats) without a
// libm call or branches: baseline x86-64 has no roundss, and a call or
// control flow per element stops the compiler from vectorizing the loop.
inline float FloorExact(float v) {
  const bool small = std::fabs(v) < 8388608.0f;  // 2^23; false for NaN, Inf
  const float s = small ? v : 0.0f;
  float t = static_cast<float>(static_cast<int32_t>(s));  // toward zero
  t = (t > s) ? t - 1.0f : t;
  // Larger values are already integral; copysign keeps floor(-0.0f) = -0.0f.
  return small ? std::copysign(t, v) : v;
}

// Same NaN behaviour as Eigen's cwiseMin/cwiseMax (std::min/std::max order):
// a NaN input is returned unchanged, +-Inf is clamped.
inline float ClampToRange(float x, const NudgedRange& r) {
  float c = (r.nudged_max < x) ? r.nudged_max : x;
  c = (c < r.nudged_min) ? r.nudged_min : c;
  return c;
}

// u = (clamp(x) - nudged_min) / scale (TF's per tensor formula) or
// * inv_scale (its per channel one).
template <bool kDivide>
inline float Steps(float x, const NudgedRange& r) {
  const float shifted = ClampToRange(x, r) - r.nudged_min;
  return kDivide ? shifted / r.scale : shifted * r.inv_scale;
}

template <bool kDivide>
inline float Quantize(float x, const NudgedRange& r) {
  return FloorExact(Steps<kDivide>(x, r) - r.quant_zero + 0.5f) * r.scale;
}

// Multiplying by 1.0f/0.0f instead of selecting keeps TF's propagation of
// NaN/Inf gradients (Inf * 0 = NaN) and of signed zeros.
inline void AccumulateGrad(float g, float x, const NudgedRange& r, float* dx,
                           double* sum_min, double* sum_max) {
  const float inside = (x >= r.nudged_min && x <= r.nudged_max) ? 1.0f : 0.0f;
  const float below = (x < r.nudged_min) ? 1.0f : 0.0f;
  const float above = (x > r.nudged_max) ? 1.0f : 0.0f;
  *dx = g * inside;
  *sum_min += static_cast<double>(g * below);
  *sum_max += static_cast<double>(g * above);
}

// Learned range gradient, see fake_quant.h: u as in the matching forward,
// e = q - u taken from the forward's own rounding.
template <bool kDivide>
inline void AccumulateLearnedGrad(float g, float x, const NudgedRange& r,
                                  float* dx, double* sum_min,
                                  double* sum_max) {
  const bool in = x >= r.nudged_min && x <= r.nudged_max;
  const float below = (x < r.nudged_min) ? 1.0f : 0.0f;
  const float above = (x > r.nudged_max) ? 1.0f : 0.0f;
  const float t = Steps<kDivide>(x, r) - r.quant_zero;
  const float e = FloorExact(t + 0.5f) - t;
  // A select, not a product: e is NaN for a NaN x, which must not count.
  const float w = in ? e * r.inv_levels : 0.0f;
  *dx = g * (in ? 1.0f : 0.0f);
  *sum_min += static_cast<double>(g * (below - w));
  *sum_max += static_cast<double>(g * (above + w));
}

template <bool kLearned, bool kDivide>
inline void Accumulate(float g, float x, const NudgedRange& r, float* dx,
                       double* sum_min, double* sum_max) {
  if constexpr (kLearned) {
    AccumulateLearnedGrad<kDivide>(g, x, r, dx, sum_min, sum_max);
  } else {
    AccumulateGrad(g, x, r, dx, sum_min, sum_max);
  }
}

template <bool kDivide>
void ForwardRow(const float* x, int64_t n, const NudgedRange& range,
                float* y) {
  if (range.zero_range) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0.0f;
    return;
  }
  for (int64_t i = 0; i < n; ++i) y[i] = Quantize<kDivide>(x[i], range);
}

template <bool kLearned, bool kDivide>
void GradRow(const float* dy, const float* x, int64_t n,
             const NudgedRange& range, float* dx, double* dmin, double* dmax) {
  if (range.zero_range) {
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i];
    return;
  }
  double sum_min = 0.0, sum_max = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    Accumulate<kLearned, kDivide>(dy[i], x[i], range, &dx[i], &sum_min,
                                  &sum_max);
  }
  *dmin += sum_min;
  *dmax += sum_max;
}

// Strided blocks are per channel: u multiplies by inv_scale.
template <bool kLearned>
void GradStrided(const float* dy, const float* x, int64_t rows,
                 int64_t channels, int64_t row_stride,
                 const NudgedRange* ranges, float* dx, double* dmin,
                 double* dmax) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = r * row_stride;
    for (int64_t c = 0; c < channels; ++c) {
      if (ranges[c].zero_range) {
        dx[off + c] = dy[off + c];
      } else {
        Accumulate<kLearned, false>(dy[off + c], x[off + c], ranges[c],
                                    &dx[off + c], &dmin[c], &dmax[c]);
      }
    }
  }
}

}  // namespace

void FakeQuantRowDivScaleScalar(const float* x, int64_t n,
                                const NudgedRange& range, float* y) {
  ForwardRow<true>(x, n, range, y);
}

void FakeQuantRowMulInvScaleScalar(const float* x, int64_t n,
                                   const NudgedRange& range, float* y) {
  ForwardRow<false>(x, n, range, y);
}

void FakeQuantStridedMulInvScaleScalar(const float* x, int64_t rows,
                                       int64_t channels, int64_t row_stride,
                                       const NudgedRange* ranges, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * row_stride;
    float* yr = y + r * row_stride;
    for (int64_t c = 0; c < channels; ++c) {
      yr[c] = ranges[c].zero_range ? 0.0f : Quantize<false>(xr[c], ranges[c]);
    }
  }
}

void FakeQuantGradRowScalar(const float* dy, const float* x, int64_t n,
                            const NudgedRange& range, float* dx, double* dmin,
                            double* dmax) {
  GradRow<false, false>(dy, x, n, range, dx, dmin, dmax);
}

void FakeQuantGradStridedScalar(const float* dy, const float* x, int64_t rows,
                                int64_t channels, int64_t row_stride,
                                const NudgedRange* ranges, float* dx,
                                double* dmin, double* dmax) {
  GradStrided<false>(dy, x, rows, channels, row_stride, ranges, dx, dmin, dmax);
}

void FakeQuantGradLearnedRowDivScaleScalar(const float* dy, const float* x,
                                           int64_t n, const NudgedRange& range,
                                           float* dx, double* dmin,
                                           double* dmax) {
  GradRow<true, true>(dy, x, n, range, dx, dmin, dmax);
}

void FakeQuantGradLearnedRowMulInvScaleScalar(const float* dy, const float* x,
                                              int64_t n,
                                              const NudgedRange& range,
                                              float* dx, double* dmin,
                                              double* dmax) {
  GradRow<true, false>(dy, x, n, range, dx, dmin, dmax);
}

void FakeQuantGradLearnedStridedScalar(const float* dy, const float* x,
                                       int64_t rows, int64_t channels,
                                       int64_t row_stride,
                                       const NudgedRange* ranges, float* dx,
                                       double* dmin, double* dmax) {
  GradStrided<true>(dy, x, rows, channels, row_stride, ranges, dx, dmin, dmax);
}

const FakeQuantKernelTable& ScalarFakeQuantKernels() {
  static const FakeQuantKernelTable table = {
      IsaLevel::kScalar,
      &FakeQuantRowDivScaleScalar,
      &FakeQuantRowMulInvScaleScalar,
      &FakeQuantStridedMulInvScaleScalar,
      &FakeQuantGradRowScalar,
      &FakeQuantGradStridedScalar,
      &FakeQuantGradLearnedRowDivScaleScalar,
      &FakeQuantGradLearnedRowMulInvScaleScalar,
      &FakeQuantGradLearnedStridedScalar,
  };
  return table;
}

}  // namespace kernels
}  // namespace tfquant
