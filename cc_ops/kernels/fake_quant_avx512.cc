// AVX-512 fake quantization kernels (16 floats per vector, mask registers
// for tails and selects). Built with -mavx512f/bw/vl/dq and -ffp-contract=off
// (setup.py / BUILD give *_avx512.cc those flags; no implicit multiply-add, the
// forward must round like TF). Chosen at run time only if the CPU and OS
// support AVX-512 F, BW, VL and DQ.

#include <cstdint>

#include "fake_quant.h"

// Only x86 builds with the ISA flags have this code; others get a null table.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#endif

namespace tfquant {
namespace kernels {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
namespace {

constexpr IsaLevel kIsa = IsaLevel::kAvx512;

// The vector interface fake_quant_simd_body.h is written against.
struct V {
  using F = __m512;
  using M = __mmask16;
  struct D {
    __m512d lo, hi;
  };
  static constexpr int kWidth = 16;

  static F Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static __mmask16 FirstLanes(int n) {
    return static_cast<__mmask16>((1u << n) - 1u);
  }
  // Masked loads/stores never touch the memory of masked-out lanes.
  static F LoadN(const float* p, int n) {
    return _mm512_maskz_loadu_ps(FirstLanes(n), p);
  }
  static void StoreN(float* p, F v, int n) {
    _mm512_mask_storeu_ps(p, FirstLanes(n), v);
  }
  static M FirstLanesMask(int n) { return FirstLanes(n); }
  static F Set1(float v) { return _mm512_set1_ps(v); }
  static F Zero() { return _mm512_setzero_ps(); }
  static F Add(F a, F b) { return _mm512_add_ps(a, b); }
  static F Sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F Div(F a, F b) { return _mm512_div_ps(a, b); }
  // Explicit multiply-adds (one rounding), only for LevelMath::kFmaDivide.
  static F MulAdd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }      // a*b + c
  static F NegMulAdd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a*b
  // vminps(a, b) = a < b ? a : b, so a NaN x comes through unchanged.
  static F ClampHi(F x, F hi) { return _mm512_min_ps(hi, x); }  // hi < x ? hi : x
  static F ClampLo(F x, F lo) { return _mm512_max_ps(lo, x); }  // lo > x ? lo : x
  static F Floor(F v) {
    return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  static M Lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M Le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static M Gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M Ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M And(M a, M b) { return static_cast<M>(a & b); }
  static M Or(M a, M b) { return static_cast<M>(a | b); }
  static bool Any(M m) { return m != 0; }
  static M IsNan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static F Select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }

  static D AccZero() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
  static void AccAdd(D* acc, F v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi =
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    acc->lo = _mm512_add_pd(acc->lo, _mm512_cvtps_pd(lo));
    acc->hi = _mm512_add_pd(acc->hi, _mm512_cvtps_pd(hi));
  }
  static double AccSum(const D& acc) {
    alignas(64) double lanes[16];
    _mm512_store_pd(lanes, acc.lo);
    _mm512_store_pd(lanes + 8, acc.hi);
    double s = 0.0;
    for (int j = 0; j < 16; ++j) s += lanes[j];
    return s;
  }
  static void AccAddTo(const D& acc, double* out, int n) {
    alignas(64) double lanes[16];
    _mm512_store_pd(lanes, acc.lo);
    _mm512_store_pd(lanes + 8, acc.hi);
    for (int j = 0; j < n; ++j) out[j] += lanes[j];
  }
};

#include "fake_quant_simd_body.h"

}  // namespace

const FakeQuantKernelTable* Avx512FakeQuantKernels() { return &kTable; }

#else  // not built with AVX-512 (a non-x86 build)

const FakeQuantKernelTable* Avx512FakeQuantKernels() { return nullptr; }

#endif

}  // namespace kernels
}  // namespace tfquant
