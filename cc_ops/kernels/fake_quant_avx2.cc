// AVX2 fake quantization kernels (8 floats per vector). Built with -mavx2
// -mfma -mf16c and -ffp-contract=off (setup.py / BUILD give *_avx2.cc those
// flags): FMA is allowed by the flags but never contracted, the forward must
// round like TF. Chosen at run time only if the CPU and OS support AVX2+FMA.

#include <cstdint>

#include "fake_quant.h"

// Only x86 builds with the ISA flags have this code; others get a null table.
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace tfquant {
namespace kernels {

#if defined(__AVX2__)
namespace {

constexpr IsaLevel kIsa = IsaLevel::kAvx2;

// The vector interface fake_quant_simd_body.h is written against.
struct V {
  using F = __m256;
  using M = __m256;  // all-ones / all-zeros lanes
  struct D {
    __m256d lo, hi;
  };
  static constexpr int kWidth = 8;

  static F Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static __m256i FirstLanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // Masked loads/stores never touch the memory of masked-out lanes.
  static F LoadN(const float* p, int n) {
    return _mm256_maskload_ps(p, FirstLanes(n));
  }
  static void StoreN(float* p, F v, int n) {
    _mm256_maskstore_ps(p, FirstLanes(n), v);
  }
  static M FirstLanesMask(int n) { return _mm256_castsi256_ps(FirstLanes(n)); }
  static F Set1(float v) { return _mm256_set1_ps(v); }
  static F Zero() { return _mm256_setzero_ps(); }
  static F Add(F a, F b) { return _mm256_add_ps(a, b); }
  static F Sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F Mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F Div(F a, F b) { return _mm256_div_ps(a, b); }
  // Explicit multiply-adds (one rounding), only for LevelMath::kFmaDivide.
  static F MulAdd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }      // a*b + c
  static F NegMulAdd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a*b
  // minps(a, b) = a < b ? a : b, so a NaN x comes through unchanged.
  static F ClampHi(F x, F hi) { return _mm256_min_ps(hi, x); }  // hi < x ? hi : x
  static F ClampLo(F x, F lo) { return _mm256_max_ps(lo, x); }  // lo > x ? lo : x
  static F Floor(F v) {
    return _mm256_round_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  static M Lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M Le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static M Gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M Ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M And(M a, M b) { return _mm256_and_ps(a, b); }
  static M Or(M a, M b) { return _mm256_or_ps(a, b); }
  static bool Any(M m) { return _mm256_movemask_ps(m) != 0; }
  static M IsNan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static F Select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }

  static D AccZero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
  static void AccAdd(D* acc, F v) {
    acc->lo = _mm256_add_pd(acc->lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    acc->hi = _mm256_add_pd(acc->hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  static double AccSum(const D& acc) {
    alignas(32) double lanes[8];
    _mm256_store_pd(lanes, acc.lo);
    _mm256_store_pd(lanes + 4, acc.hi);
    double s = 0.0;
    for (int j = 0; j < 8; ++j) s += lanes[j];
    return s;
  }
  static void AccAddTo(const D& acc, double* out, int n) {
    alignas(32) double lanes[8];
    _mm256_store_pd(lanes, acc.lo);
    _mm256_store_pd(lanes + 4, acc.hi);
    for (int j = 0; j < n; ++j) out[j] += lanes[j];
  }
};

#include "fake_quant_simd_body.h"

}  // namespace

const FakeQuantKernelTable* Avx2FakeQuantKernels() { return &kTable; }

#else  // not built with AVX2 (a non-x86 build)

const FakeQuantKernelTable* Avx2FakeQuantKernels() { return nullptr; }

#endif

}  // namespace kernels
}  // namespace tfquant
