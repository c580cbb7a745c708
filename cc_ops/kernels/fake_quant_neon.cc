// NEON fake quantization kernels for AArch64 (4 floats per vector). NEON is
// mandatory on AArch64, so no extra flags are needed; on other targets this
// file compiles to a null table. Built with -ffp-contract=off: no fused
// multiply-add, the forward must round like TF.
//
// Not exercised by the x86 test machine; tests/test_kernel_variants.py runs
// it against the scalar kernels wherever it is available.

#include <cstdint>

#include "fake_quant.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace tfquant {
namespace kernels {

#if defined(__aarch64__)
namespace {

constexpr IsaLevel kIsa = IsaLevel::kNeon;

// The vector interface fake_quant_simd_body.h is written against.
struct V {
  using F = float32x4_t;
  using M = uint32x4_t;
  struct D {
    float64x2_t lo, hi;
  };
  static constexpr int kWidth = 4;

  static F Load(const float* p) { return vld1q_f32(p); }
  static void Store(float* p, F v) { vst1q_f32(p, v); }
  // No masked memory access: go through a small buffer.
  static F LoadN(const float* p, int n) {
    float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < n; ++j) buf[j] = p[j];
    return vld1q_f32(buf);
  }
  static void StoreN(float* p, F v, int n) {
    float buf[4];
    vst1q_f32(buf, v);
    for (int j = 0; j < n; ++j) p[j] = buf[j];
  }
  static M FirstLanesMask(int n) {
    const uint32_t iota[4] = {0, 1, 2, 3};
    return vcltq_u32(vld1q_u32(iota), vdupq_n_u32(static_cast<uint32_t>(n)));
  }
  static F Set1(float v) { return vdupq_n_f32(v); }
  static F Zero() { return vdupq_n_f32(0.0f); }
  static F Add(F a, F b) { return vaddq_f32(a, b); }
  static F Sub(F a, F b) { return vsubq_f32(a, b); }
  static F Mul(F a, F b) { return vmulq_f32(a, b); }
  static F Div(F a, F b) { return vdivq_f32(a, b); }
  // Explicit multiply-adds (one rounding), only for LevelMath::kFmaDivide.
  static F MulAdd(F a, F b, F c) { return vfmaq_f32(c, a, b); }     // a*b + c
  static F NegMulAdd(F a, F b, F c) { return vfmsq_f32(c, a, b); }  // c - a*b
  // vminq/vmaxq return NaN for a NaN operand; the scalar clamp keeps a NaN x
  // and clamps +-Inf, which compare-and-select reproduces.
  static F ClampHi(F x, F hi) { return vbslq_f32(vcltq_f32(hi, x), hi, x); }
  static F ClampLo(F x, F lo) { return vbslq_f32(vcltq_f32(x, lo), lo, x); }
  static F Floor(F v) { return vrndmq_f32(v); }
  static M Lt(F a, F b) { return vcltq_f32(a, b); }
  static M Le(F a, F b) { return vcleq_f32(a, b); }
  static M Gt(F a, F b) { return vcgtq_f32(a, b); }
  static M Ge(F a, F b) { return vcgeq_f32(a, b); }
  static M And(M a, M b) { return vandq_u32(a, b); }
  static M Or(M a, M b) { return vorrq_u32(a, b); }
  static bool Any(M m) { return vmaxvq_u32(m) != 0; }
  static M IsNan(F a) { return vmvnq_u32(vceqq_f32(a, a)); }
  static F Select(M m, F a, F b) { return vbslq_f32(m, a, b); }

  static D AccZero() { return {vdupq_n_f64(0.0), vdupq_n_f64(0.0)}; }
  static void AccAdd(D* acc, F v) {
    acc->lo = vaddq_f64(acc->lo, vcvt_f64_f32(vget_low_f32(v)));
    acc->hi = vaddq_f64(acc->hi, vcvt_high_f64_f32(v));
  }
  static double AccSum(const D& acc) {
    return ((vgetq_lane_f64(acc.lo, 0) + vgetq_lane_f64(acc.lo, 1)) +
            vgetq_lane_f64(acc.hi, 0)) +
           vgetq_lane_f64(acc.hi, 1);
  }
  static void AccAddTo(const D& acc, double* out, int n) {
    double lanes[4];
    vst1q_f64(lanes, acc.lo);
    vst1q_f64(lanes + 2, acc.hi);
    for (int j = 0; j < n; ++j) out[j] += lanes[j];
  }
};

#include "fake_quant_simd_body.h"

}  // namespace

const FakeQuantKernelTable* NeonFakeQuantKernels() { return &kTable; }

#else

const FakeQuantKernelTable* NeonFakeQuantKernels() { return nullptr; }

#endif

}  // namespace kernels
}  // namespace tfquant
