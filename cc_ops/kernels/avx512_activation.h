// The AVX-512 form of packed.h's dynamic int8 activation quantization
// (ActivationScale's max |x| and QuantizeActivation), for the kernels that
// quantize activations. Include only from files built with AVX-512 flags;
// internal linkage, as avx512_tail_mask.h.

#ifndef TFQUANT_CC_OPS_KERNELS_AVX512_ACTIVATION_H_
#define TFQUANT_CC_OPS_KERNELS_AVX512_ACTIVATION_H_

#include <immintrin.h>

#include <cstdint>

#include "avx512_tail_mask.h"

namespace tfquant {
namespace kernels {

// max |x[i]| over n floats (0 if n == 0). vmaxps returns its second operand
// when the first is NaN, so NaN never wins, as in the scalar
// `a > amax ? a : amax`.
static inline float AbsMaxAvx512(const float* x, int64_t n) {
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  __m512 amax0 = _mm512_setzero_ps(), amax1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    amax0 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i), abs_mask), amax0);
    amax1 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i + 16), abs_mask), amax1);
  }
  for (; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(TailMask(n - i), x + i);
    amax0 = _mm512_max_ps(_mm512_and_ps(v, abs_mask), amax0);
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(amax0, amax1));
}

// QuantizeActivation(x, scale) of 16 lanes, as int32: the same IEEE
// division and round-half-even, clamped to [-127, 127], NaN -> 0.
static inline __m512i QuantizeActivation16(__m512 x, __m512 vscale) {
  const __m512 v = _mm512_roundscale_ps(_mm512_div_ps(x, vscale),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 not_nan = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  const __m512 clamped =
      _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  return _mm512_cvtps_epi32(_mm512_maskz_mov_ps(not_nan, clamped));
}

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_AVX512_ACTIVATION_H_
