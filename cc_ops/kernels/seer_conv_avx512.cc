// AVX-512 kernels of the SeerNet layer (contract: seer_conv.h).
//
// Sparse dot: the selected (p, c), pixel-major, go in groups of 8 whose 8
// independent FMA chains cover the FMA latency; a kernel row (kw * cin
// contiguous floats) at a time from the padded input rows, so no float
// im2col is written. When the 8 are one pixel's, each input slice is loaded
// once for the 8 filter rows. The filter rows stream from L2 (a 3x3x128x128
// kernel is 590 KB), which bounds the speed; a channel-major order, sharing
// the filter slices instead, measured 10-40 % slower: a band selects only a
// few pixels per channel. The chains are summed across lanes together
// (Sum8), about 5 instructions an output.

#include "seer_conv.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>

#include "avx512_activation.h"
#include "avx512_tail_mask.h"

namespace tfquant {
namespace kernels {

namespace {

float AbsMax(const float* x, int64_t count) { return AbsMaxAvx512(x, count); }

void QuantizePixelsAvx512(const float* x, int64_t pixels, int64_t cin, float scale,
                          int8_t* xq, int32_t* pixel_sums) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t p = 0; p < pixels; ++p) {
    __m512i sum = _mm512_setzero_si512();
    for (int64_t c = 0; c < cin; c += 16) {
      const __mmask16 t = TailMask(cin - c);
      const __m512i q = QuantizeActivation16(_mm512_maskz_loadu_ps(t, x + p * cin + c), vscale);
      sum = _mm512_add_epi32(sum, q);
      _mm512_mask_cvtepi32_storeu_epi8(xq + p * cin + c, t, q);
    }
    pixel_sums[p] = _mm512_reduce_add_epi32(sum);
  }
}

void SelectAvx512(const float* pred, int64_t rows, int64_t wo, int64_t cout, int64_t pool,
                  float threshold, uint16_t* selected) {
  const int64_t cblocks = CeilDiv(cout, 16);
  const __m512 thr = _mm512_set1_ps(threshold);
  if (pool == 1) {
    for (int64_t p = 0; p < rows * wo; ++p) {
      for (int64_t cb = 0; cb < cblocks; ++cb) {
        const __mmask16 valid = TailMask(cout - cb * 16);
        const __m512 v = _mm512_maskz_loadu_ps(valid, pred + p * cout + cb * 16);
        selected[p * cblocks + cb] = _mm512_mask_cmp_ps_mask(valid, v, thr, _CMP_GT_OQ);
      }
    }
    return;
  }
  for (int64_t i = 0; i < rows * wo * cblocks; ++i) selected[i] = 0;
  for (int64_t r = 0; r + 1 < rows; r += 2) {
    for (int64_t col = 0; col + 1 < wo; col += 2) {
      const int64_t p00 = r * wo + col;
      const int64_t pos[4] = {p00, p00 + 1, p00 + wo, p00 + wo + 1};
      for (int64_t cb = 0; cb < cblocks; ++cb) {
        const __mmask16 valid = TailMask(cout - cb * 16);
        // The first position of the largest prediction per lane, as the
        // scalar loop's strict `>` keeps it.
        __m512 best = _mm512_maskz_loadu_ps(valid, pred + pos[0] * cout + cb * 16);
        __mmask16 at[4] = {valid, 0, 0, 0};
        for (int t = 1; t < 4; ++t) {
          const __m512 v = _mm512_maskz_loadu_ps(valid, pred + pos[t] * cout + cb * 16);
          const __mmask16 gt = _mm512_mask_cmp_ps_mask(valid, v, best, _CMP_GT_OQ);
          best = _mm512_mask_mov_ps(best, gt, v);
          for (int u = 0; u < t; ++u) at[u] &= static_cast<__mmask16>(~gt);
          at[t] = gt;
        }
        const __mmask16 keep = _mm512_mask_cmp_ps_mask(valid, best, thr, _CMP_GT_OQ);
        for (int t = 0; t < 4; ++t) selected[pos[t] * cblocks + cb] |= at[t] & keep;
      }
    }
  }
}

// The lane sums of a[0..7] as 8 floats, in order.
inline __m256 Sum8(const __m512 (&a)[8]) {
  __m256 h[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]), _mm512_extractf32x8_ps(a[i], 1));
  }
  // hadd(x, y) per 128-bit half: x0+x1, x2+x3, y0+y1, y2+y3.
  const __m256 h01 = _mm256_hadd_ps(h[0], h[1]), h23 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 h45 = _mm256_hadd_ps(h[4], h[5]), h67 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  // q0 = [s0 s1 s2 s3 | s0' s1' s2' s3'] (the two 128-bit halves' partials).
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20),
                       _mm256_permute2f128_ps(q0, q1, 0x31));
}

// The dot products of 8 selected (p, c). kSharedX: all 8 are one pixel's, so
// each input slice is loaded once for the 8 filter rows.
template <bool kSharedX>
inline __m256 Dot8(const SparseDotArgs& a, const int32_t* px, const int32_t* ch) {
  __m512 acc[8];
  const float* x[8];
  const float* w[8];
  const int64_t len = a.row_len;
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    acc[i] = _mm512_setzero_ps();
    x[i] = a.input + a.in_offset[px[i]];
    w[i] = a.filter_t + ch[i] * a.kh * len;
  }
  for (int64_t r = 0; r < a.kh; ++r) {
    const int64_t off = r * a.row_stride, woff = r * len;
    int64_t v = 0;
    for (; v + 16 <= len; v += 16) {
      if constexpr (kSharedX) {
        const __m512 xv = _mm512_loadu_ps(x[0] + off + v);
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
          acc[i] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w[i] + woff + v), acc[i]);
        }
      } else {
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
          acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(x[i] + off + v),
                                   _mm512_loadu_ps(w[i] + woff + v), acc[i]);
        }
      }
    }
    if (v < len) {
      const __mmask16 m = TailMask(len - v);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        acc[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x[i] + off + v),
                                 _mm512_maskz_loadu_ps(m, w[i] + woff + v), acc[i]);
      }
    }
  }
  return Sum8(acc);
}

void SparseDotAvx512(const SparseDotArgs& a, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 8) {
    const int n = i1 - i >= 8 ? 8 : static_cast<int>(i1 - i);
    int32_t px[8], ch[8];
    for (int j = 0; j < 8; ++j) {  // a short last group repeats its last pair
      px[j] = a.pixels[i + (j < n ? j : n - 1)];
      ch[j] = a.channels[i + (j < n ? j : n - 1)];
    }
    float res[8];
    _mm256_storeu_ps(res, px[0] == px[7] ? Dot8<true>(a, px, ch) : Dot8<false>(a, px, ch));
    for (int j = 0; j < n; ++j) {
      a.y[a.out_offset[px[j]] + ch[j]] = SeerRelu(res[j] + a.bias[ch[j]]);
    }
  }
}

}  // namespace

const SeerConvKernelTable* Avx512SeerConvKernels() {
  static const SeerConvKernelTable table{IsaLevel::kAvx512, &AbsMax,
                                         &QuantizePixelsAvx512, &SelectAvx512,
                                         &SparseDotAvx512};
  return &table;
}

}  // namespace kernels
}  // namespace tfquant

#else  // not built with AVX-512

namespace tfquant {
namespace kernels {
const SeerConvKernelTable* Avx512SeerConvKernels() { return nullptr; }
}  // namespace kernels
}  // namespace tfquant

#endif
