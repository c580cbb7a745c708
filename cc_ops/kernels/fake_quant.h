// Fake quantization kernels: plain C++ on raw float pointers.
//
// No TensorFlow or Eigen header may be included here or in any kernels/ file:
// each ISA gets its own translation unit and a dispatch table picks one at
// load time (isa_dispatch.h), so no ISA-specific code may leak into shared
// inline functions.
//
// Every kernel variant (scalar, avx2, avx512, neon) gives the same y and dx
// bits, NaN/Inf cases included; dmin/dmax are sums of the same float terms in
// double, added in a variant-specific order, so they agree to a few ulp of
// the double sum (far below float precision after the final cast, except when
// the sum cancels to near zero: compare with a tolerance of ~1e-6 * sum|dy|).
//
// Numbers are bit-identical to TensorFlow's FakeQuantWithMinMaxVars
// (per tensor) and FakeQuantWithMinMaxVarsPerChannel (per channel), whose
// arithmetic is (all in float, no fused multiply-add):
//
//   scale       = (max - min) / (qmax - qmin)
//   inv_scale   = (qmax - qmin) / (max - min)      // separately, not 1/scale
//   zp_from_min = qmin - min / scale
//   zero_point  = qmin if zp_from_min < qmin, qmax if > qmax,
//                 else round-half-away(zp_from_min)
//   nudged_min  = (qmin - zero_point) * scale
//   nudged_max  = (qmax - zero_point) * scale
//   quant_zero  = floor(-nudged_min * inv_scale + 0.5f)
//   c           = clamp(x, nudged_min, nudged_max)
//   per tensor:   q = (c - nudged_min) / scale
//   per channel:  q = (c - nudged_min) * inv_scale
//   y           = floor(q - quant_zero + 0.5f) * scale
//
// with qmin = narrow_range ? 1 : 0 and qmax = 2^num_bits - 1. A range with
// min == max == 0 gives y = 0 and passes the whole gradient to the input.
//
// Gradient (straight-through estimator), as TF computes it:
//   dx   = dy * (nudged_min <= x <= nudged_max ? 1.0f : 0.0f)
//   dmin = sum(dy * (x < nudged_min ? 1.0f : 0.0f))
//   dmax = sum(dy * (x > nudged_max ? 1.0f : 0.0f))
// The multiplications by 0/1 are kept (not replaced by selects) so that
// non-finite dy propagates exactly as in TF: a NaN or Inf dy anywhere in a
// channel makes that channel's dmin and dmax NaN. Sums are accumulated in
// double by the caller-visible accumulators below.
//
// Non-finite inputs x (measured on TF 2.21 and matched here):
//   NaN  -> y = NaN;        dx = dy * 0; counts towards neither dmin nor dmax.
//   -Inf -> y = nudged_min; dx = dy * 0; counts towards dmin.
//   +Inf -> y = nudged_max; dx = dy * 0; counts towards dmax.
// In a min == max == 0 range every x, NaN included, gives y = 0, dx = dy.
// A range with min == max != 0 has scale 0 and gives NaN, as in TF.
//
// Learned-range gradient (RangeGradient::kLearned; LSQ, LSQ+, TQT in the
// (min, max) parametrization). The forward and dx are unchanged. With
// N = qmax - qmin, and u, t, r computed with the forward's own arithmetic
// (u = (clamp(x) - nudged_min) / scale per tensor, * inv_scale per channel):
//   t = u - quant_zero,  r = floor(t + 0.5f),  e = r - t
// (e is q - u up to the float rounding of t; r - t itself is exact).
//   w = inside ? e * inv_levels : 0                          (inv_levels = 1/N)
//   dmin = sum(dy * (below - w)),  dmax = sum(dy * (above + w))
// i.e. dy/dmin = -(q - u)/N inside, 1 below; dy/dmax = (q - u)/N inside,
// 1 above. Non-finite x as in the clipped mode (NaN counts nowhere, -Inf
// below, +Inf above); a NaN/Inf dy makes the channel's sums NaN; zero ranges
// give zero range gradients and dx = dy. The per-element products are float,
// the sums double, so every kernel variant gives the same per-element terms
// and only the summation order differs.
//
// The kernels below only accumulate; tiling, threading and the final
// deterministic reduction live in fake_quant_plan.h.

#ifndef TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_H_
#define TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_H_

#include <cstdint>

#include "isa_dispatch.h"

namespace tfquant {
namespace kernels {

// The quantization grid of one channel (or of the whole tensor) after
// nudging the range so that real zero is exactly representable.
struct NudgedRange {
  float nudged_min = 0.0f;
  float nudged_max = 0.0f;
  float scale = 1.0f;
  float inv_scale = 1.0f;
  float quant_zero = 0.0f;
  float inv_levels = 1.0f;  // 1 / (qmax - qmin), for the learned gradient
  // 1 / scale rounded to nearest, and whether the SIMD forward may divide by
  // scale with it: q = x*recip, r = fma(-q, scale, x), q + r*recip rounded is
  // x/scale correctly rounded (Markstein 1990, Thm. 1: recip within 1/2 ulp of
  // 1/scale, q within 1 ulp of x/scale, no overflow or underflow), at the cost
  // of three multiply-adds instead of a divide. Only for scales in
  // [2^-60, 2^60], where none of the terms can overflow, and quotients that
  // matter (u >= 2^-25: smaller ones round to the same level either way) stay
  // far from underflow.
  float recip_scale = 1.0f;
  bool fma_divide = false;
  // min == max == 0: forward yields zeros, backward passes dy through.
  bool zero_range = true;
};

// How the gradient w.r.t. min and max is defined.
enum class RangeGradient {
  kClipped,  // TF's: only elements outside the nudged range contribute.
  kLearned,  // learned step size: inside elements contribute -(q-u)/N, (q-u)/N.
};

inline int QuantMin(bool narrow_range) { return narrow_range ? 1 : 0; }
inline int QuantMax(int num_bits) { return (1 << num_bits) - 1; }

// Computes the nudged grid for [min, max]; see the formulas above.
NudgedRange NudgeRange(float min, float max, int quant_min, int quant_max);

// Forward over n contiguous elements sharing one range, dividing by scale
// (TF's per-tensor formula).
using FakeQuantRowFn = void (*)(const float* x, int64_t n,
                                const NudgedRange& range, float* y);

// Forward over a [rows, channels] block whose rows are row_stride elements
// apart; element (r, c) uses ranges[c]. Multiplies by inv_scale (TF's
// per-channel formula). This is the channels-last layout.
using FakeQuantStridedFn = void (*)(const float* x, int64_t rows,
                                    int64_t channels, int64_t row_stride,
                                    const NudgedRange* ranges, float* y);

// Backward over n contiguous elements sharing one range: writes dx and adds
// this row's contributions to *dmin and *dmax (summed in order).
using FakeQuantGradRowFn = void (*)(const float* dy, const float* x,
                                    int64_t n, const NudgedRange& range,
                                    float* dx, double* dmin, double* dmax);

// Backward over a strided [rows, channels] block; adds to dmin[c], dmax[c]
// row by row.
using FakeQuantGradStridedFn = void (*)(const float* dy, const float* x,
                                        int64_t rows, int64_t channels,
                                        int64_t row_stride,
                                        const NudgedRange* ranges, float* dx,
                                        double* dmin, double* dmax);

// One implementation of every kernel, for one instruction set.
struct FakeQuantKernelTable {
  IsaLevel isa;
  FakeQuantRowFn forward_row_div_scale;  // per tensor
  FakeQuantRowFn forward_row_mul_inv_scale;  // per channel, inner > 1
  FakeQuantStridedFn forward_strided_mul_inv_scale;  // per channel, inner == 1
  FakeQuantGradRowFn backward_row;
  FakeQuantGradStridedFn backward_strided;
  // RangeGradient::kLearned; u divides by scale (per tensor) or multiplies
  // by inv_scale (per channel), as the matching forward does.
  FakeQuantGradRowFn backward_row_learned_div_scale;
  FakeQuantGradRowFn backward_row_learned_mul_inv_scale;
  FakeQuantGradStridedFn backward_strided_learned;
};

// Scalar reference kernels (fake_quant_scalar.cc).
void FakeQuantRowDivScaleScalar(const float* x, int64_t n,
                                const NudgedRange& range, float* y);
void FakeQuantRowMulInvScaleScalar(const float* x, int64_t n,
                                   const NudgedRange& range, float* y);
void FakeQuantStridedMulInvScaleScalar(const float* x, int64_t rows,
                                       int64_t channels, int64_t row_stride,
                                       const NudgedRange* ranges, float* y);
void FakeQuantGradRowScalar(const float* dy, const float* x, int64_t n,
                            const NudgedRange& range, float* dx, double* dmin,
                            double* dmax);
void FakeQuantGradStridedScalar(const float* dy, const float* x, int64_t rows,
                                int64_t channels, int64_t row_stride,
                                const NudgedRange* ranges, float* dx,
                                double* dmin, double* dmax);

void FakeQuantGradLearnedRowDivScaleScalar(const float* dy, const float* x,
                                           int64_t n, const NudgedRange& range,
                                           float* dx, double* dmin,
                                           double* dmax);
void FakeQuantGradLearnedRowMulInvScaleScalar(const float* dy, const float* x,
                                              int64_t n,
                                              const NudgedRange& range,
                                              float* dx, double* dmin,
                                              double* dmax);
void FakeQuantGradLearnedStridedScalar(const float* dy, const float* x,
                                       int64_t rows, int64_t channels,
                                       int64_t row_stride,
                                       const NudgedRange* ranges, float* dx,
                                       double* dmin, double* dmax);

const FakeQuantKernelTable& ScalarFakeQuantKernels();

// The ISA tables (fake_quant_avx2.cc, fake_quant_avx512.cc,
// fake_quant_neon.cc); nullptr where this build has no such code.
const FakeQuantKernelTable* Avx2FakeQuantKernels();
const FakeQuantKernelTable* Avx512FakeQuantKernels();
const FakeQuantKernelTable* NeonFakeQuantKernels();

// The tables above and the one the ops use (fake_quant_dispatch.cc): its
// selected(), names() of the runnable ones ("scalar", "avx2", ...), named().
const KernelFamily<FakeQuantKernelTable>& FakeQuantFamily();

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_H_
