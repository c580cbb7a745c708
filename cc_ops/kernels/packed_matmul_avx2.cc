// AVX2 packed matmul (format and contract: packed.h): vpmaddubsw (unsigned
// weights x signed activations, no saturation possible: 2*15*127 < 2^15)
// then vpmaddwd with ones. The two 32-byte halves of a tile are channels
// n0..n0+7 and n0+8..n0+15.

#include "packed.h"

#if defined(__AVX2__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tfquant {
namespace kernels {

namespace {

// ------------------------------------------------------------ activations

void QuantizeRowsAvx2(const float* x, int64_t k, int64_t kpad, int64_t group_k,
                      int64_t num_groups, int64_t m0, int64_t m1, int8_t* xq,
                      float* xs, int32_t* xsum) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
  // After two saturating packs, dword 0 of each 128-bit lane holds its 4 values.
  const __m256i gather = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * k;
    // vmaxps returns its second operand when the first is NaN: NaN never wins.
    __m256 amax8 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
      amax8 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(row + i), abs_mask), amax8);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, amax8);
    float amax = 0.0f;
    for (float v : lanes) amax = v > amax ? v : amax;
    for (; i < k; ++i) {
      const float v = std::fabs(row[i]);
      amax = v > amax ? v : amax;
    }
    const float scale = ActivationScale(amax);
    xs[m] = scale;
    const __m256 vscale = _mm256_set1_ps(scale);
    int8_t* out = xq + m * kpad;
    for (int64_t g = 0; g < num_groups; ++g) {
      const int64_t end = std::min(k, (g + 1) * group_k);
      __m256i sum8 = _mm256_setzero_si256();
      int64_t j = g * group_k;
      for (; j + 8 <= end; j += 8) {
        // The same IEEE division and round-half-even as QuantizeActivation.
        const __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(row + j), vscale),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256 not_nan = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
        const __m256i q = _mm256_cvtps_epi32(
            _mm256_and_ps(not_nan, _mm256_min_ps(_mm256_max_ps(v, lo), hi)));
        sum8 = _mm256_add_epi32(sum8, q);
        const __m256i w = _mm256_packs_epi32(q, q);
        const __m256i b = _mm256_packs_epi16(w, w);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + j),
                         _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, gather)));
      }
      alignas(32) int32_t parts[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(parts), sum8);
      int32_t sum = 0;
      for (int32_t p : parts) sum += p;
      for (; j < end; ++j) {
        out[j] = QuantizeActivation(row[j], scale);
        sum += out[j];
      }
      xsum[m * num_groups + g] = sum;
    }
    if (kpad > k) std::memset(out + k, 0, kpad - k);
  }
}

// ---------------------------------------------------------------- matmul

template <int kShift>
inline __m256i Field(__m256i v, __m256i mask) {
  if (kShift == 0) return _mm256_and_si256(v, mask);
  return _mm256_and_si256(_mm256_srli_epi16(v, kShift), mask);
}

// 16 floats of a column block, zero beyond N.
inline void LoadBlock(const float* p, int64_t valid, float* out) {
  for (int i = 0; i < 16; ++i) out[i] = i < valid ? p[i] : 0.0f;
}

template <int kBits, int MR>
void Micro(const PackedMatmulArgs& a, int64_t m, int64_t nb) {
  constexpr int kKB = 32 / kBits;
  constexpr int kOffset = 1 << (kBits - 1);
  const int64_t kblocks = a.kpad / kKB;
  const int64_t per_group = a.group_k / kKB;
  const int64_t n0 = nb * kPackedNBlock;
  const int64_t valid = a.n - n0 < 16 ? a.n - n0 : 16;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << kBits) - 1));
  const __m256i ones = _mm256_set1_epi16(1);
  const uint8_t* wp = a.packed + nb * kblocks * kPackedTileBytes;
  const int8_t* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = a.xq + (m + r) * a.kpad;
  __m256 facc[MR][2];
  for (int r = 0; r < MR; ++r) facc[r][0] = facc[r][1] = _mm256_setzero_ps();
  alignas(32) float buf[16];

  for (int64_t g = 0; g < a.num_groups; ++g) {
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t kb = g * per_group; kb < (g + 1) * per_group; ++kb) {
      const uint8_t* t = wp + kb * kPackedTileBytes;
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 32));
      const int64_t k0 = kb * kKB;
#define TFQ_STEP(S)                                                         \
  {                                                                         \
    const __m256i w0 = Field<(S) * kBits>(v0, mask);                        \
    const __m256i w1 = Field<(S) * kBits>(v1, mask);                        \
    for (int r = 0; r < MR; ++r) {                                          \
      int32_t xv;                                                           \
      std::memcpy(&xv, xr[r] + k0 + 4 * (S), 4);                            \
      const __m256i xb = _mm256_set1_epi32(xv);                             \
      acc[r][0] = _mm256_add_epi32(                                         \
          acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(w0, xb), ones)); \
      acc[r][1] = _mm256_add_epi32(                                         \
          acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(w1, xb), ones)); \
    }                                                                       \
  }
      TFQ_STEP(0)
      TFQ_STEP(1)
      if (kBits == 2) {
        TFQ_STEP(2)
        TFQ_STEP(3)
      }
#undef TFQ_STEP
    }
    const float* sp = a.scales + g * a.n + n0;
    if (valid < 16) {
      LoadBlock(sp, valid, buf);
      sp = buf;
    }
    const __m256 sc0 = _mm256_loadu_ps(sp);
    const __m256 sc1 = _mm256_loadu_ps(sp + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256i corr =
          _mm256_set1_epi32(kOffset * a.xsum[(m + r) * a.num_groups + g]);
      facc[r][0] = _mm256_add_ps(facc[r][0], _mm256_mul_ps(_mm256_cvtepi32_ps(
                                     _mm256_sub_epi32(acc[r][0], corr)), sc0));
      facc[r][1] = _mm256_add_ps(facc[r][1], _mm256_mul_ps(_mm256_cvtepi32_ps(
                                     _mm256_sub_epi32(acc[r][1], corr)), sc1));
    }
  }
  __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
  if (a.bias != nullptr) {
    const float* bp = a.bias + n0;
    if (valid < 16) {
      LoadBlock(bp, valid, buf);
      bp = buf;
    }
    b0 = _mm256_loadu_ps(bp);
    b1 = _mm256_loadu_ps(bp + 8);
  }
  for (int r = 0; r < MR; ++r) {
    const __m256 xs = _mm256_set1_ps(a.xs[m + r]);
    __m256 y0 = _mm256_mul_ps(facc[r][0], xs);
    __m256 y1 = _mm256_mul_ps(facc[r][1], xs);
    if (a.bias != nullptr) {
      y0 = _mm256_add_ps(y0, b0);
      y1 = _mm256_add_ps(y1, b1);
    }
    float* out = a.y + (m + r) * a.n + n0;
    if (valid == 16) {
      _mm256_storeu_ps(out, y0);
      _mm256_storeu_ps(out + 8, y1);
    } else {
      _mm256_store_ps(buf, y0);
      _mm256_store_ps(buf + 8, y1);
      for (int64_t i = 0; i < valid; ++i) out[i] = buf[i];
    }
  }
}

template <int kBits>
void Run(const PackedMatmulArgs& a, int64_t m0, int64_t m1, int64_t nb0,
         int64_t nb1) {
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    int64_t m = m0;
    for (; m + 2 <= m1; m += 2) Micro<kBits, 2>(a, m, nb);
    for (; m < m1; ++m) Micro<kBits, 1>(a, m, nb);
  }
}

void Matmul(const PackedMatmulArgs& a, int64_t m0, int64_t m1, int64_t nb0,
            int64_t nb1) {
  if (a.bits == 4) Run<4>(a, m0, m1, nb0, nb1); else Run<2>(a, m0, m1, nb0, nb1);
}

const PackedKernelTable kTable = {IsaLevel::kAvx2, &Matmul, &QuantizeRowsAvx2};

}  // namespace

const PackedKernelTable* Avx2PackedKernels() { return &kTable; }

}  // namespace kernels
}  // namespace tfquant

#else  // not built with AVX2

namespace tfquant {
namespace kernels {
const PackedKernelTable* Avx2PackedKernels() { return nullptr; }
}  // namespace kernels
}  // namespace tfquant

#endif
