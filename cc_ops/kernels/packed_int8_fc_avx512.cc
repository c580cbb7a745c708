// AVX-512 integer epilogue of the packed int8 FULLY_CONNECTED (contract:
// packed_int8_fc.h): the same integers as RequantizeScalar, 16 channels at a
// time. Per channel m in [0, 2^31) (QuantizeMultiplier), so TFLite's
// saturating rounding doubling high multiply is exactly
// floor((x * m + 2^30) / 2^31): for x * m < 0 its nudge 1 - 2^30 and the
// truncating division give the same floor. Then a right shift rounding ties
// up, as RoundingShiftRight.

#include "packed_int8_fc.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

#include "avx512_tail_mask.h"

namespace tfquant {
namespace kernels {

namespace {

// (x * m + 2^30) >> 31, then (h + 2^(r-1)) >> r, in the 8 int64 lanes that
// hold the even (or, after a 32-bit shift, the odd) channels.
inline __m512i ScaleLanes(__m512i x, __m512i m, __m512i right, __m512i round) {
  const __m512i half = _mm512_set1_epi64(int64_t{1} << 30);
  const __m512i high = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, m), half), 31);
  return _mm512_srav_epi64(_mm512_add_epi64(high, round), right);
}

void RequantizeAvx512(const RequantizeArgs& a, int64_t c0, int64_t c1) {
  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi64(1);
  const __m512i zp = _mm512_set1_epi32(a.output_zero_point);
  const __m512i lo = _mm512_set1_epi32(a.activation_min);
  const __m512i hi = _mm512_set1_epi32(a.activation_max);
  for (int64_t c = c0; c < c1; c += 16) {
    const __mmask16 valid = TailMask(c1 - c);
    const __m512i bias = _mm512_maskz_loadu_epi32(valid, a.bias_minus_zp + c);
    const __m512i mult = _mm512_maskz_loadu_epi32(valid, a.multiplier + c);
    const __m512i shift = _mm512_maskz_loadu_epi32(valid, a.shift + c);
    const __m512i left = _mm512_max_epi32(shift, zero);
    const __m512i right = _mm512_max_epi32(_mm512_sub_epi32(zero, shift), zero);
    // Per-lane int64 shift counts and rounding terms for even and odd channels;
    // a count of -1 (no right shift) makes vpsllvq give 0.
    const __m512i right_even = _mm512_srli_epi64(_mm512_slli_epi64(right, 32), 32);
    const __m512i right_odd = _mm512_srli_epi64(right, 32);
    const __m512i round_even = _mm512_sllv_epi64(one, _mm512_sub_epi64(right_even, one));
    const __m512i round_odd = _mm512_sllv_epi64(one, _mm512_sub_epi64(right_odd, one));
    const __m512i mult_odd = _mm512_srli_epi64(mult, 32);
    for (int64_t r = 0; r < a.m; ++r) {
      const __m512 dots = _mm512_maskz_loadu_ps(valid, a.dots + r * a.n + c);
      const __m512i x = _mm512_sllv_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(dots), bias), left);
      const __m512i even = ScaleLanes(x, mult, right_even, round_even);
      const __m512i odd = ScaleLanes(_mm512_srli_epi64(x, 32), mult_odd, right_odd, round_odd);
      __m512i v = _mm512_mask_blend_epi32(static_cast<__mmask16>(0xAAAA), even,
                                          _mm512_slli_epi64(odd, 32));
      v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, zp), lo), hi);
      _mm512_mask_cvtepi32_storeu_epi8(a.out + r * a.n + c, valid, v);
    }
  }
}

}  // namespace

RequantizeFn Avx512Requantize() { return &RequantizeAvx512; }

}  // namespace kernels
}  // namespace tfquant

#else  // not built with AVX-512

namespace tfquant {
namespace kernels {
RequantizeFn Avx512Requantize() { return nullptr; }
}  // namespace kernels
}  // namespace tfquant

#endif
