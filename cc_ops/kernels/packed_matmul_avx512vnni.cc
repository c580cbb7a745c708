// AVX-512 VNNI packed matmul (format and contract: packed.h). One 64-byte
// tile load gives, per field, the 16x4 unsigned weight bytes of one
// vpdpbusd against a broadcast dword of 4 int8 activations.

#include "packed.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include <cstring>

namespace tfquant {
namespace kernels {

namespace {

inline __mmask16 ChannelMask(int64_t n, int64_t nb) {
  const int64_t rem = n - nb * kPackedNBlock;
  return rem >= 16 ? static_cast<__mmask16>(0xFFFF)
                   : static_cast<__mmask16>((1u << rem) - 1u);
}

template <int kBits, int kShift>
inline __m512i Field(__m512i v, __m512i mask) {
  if (kShift == 0) return _mm512_and_si512(v, mask);
  return _mm512_and_si512(_mm512_srli_epi16(v, kShift), mask);
}

// Rows [m, m + MR), column blocks [nb, nb + NB), all groups.
template <int kBits, int MR, int NB>
void Micro(const PackedMatmulArgs& a, int64_t m, int64_t nb) {
  constexpr int kKB = 32 / kBits;
  constexpr int kOffset = 1 << (kBits - 1);
  const int64_t kblocks = a.kpad / kKB;
  const int64_t per_group = a.group_k / kKB;
  const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << kBits) - 1));
  const uint8_t* wp[NB];
  __mmask16 nmask[NB];
  for (int j = 0; j < NB; ++j) {
    wp[j] = a.packed + (nb + j) * kblocks * kPackedTileBytes;
    nmask[j] = ChannelMask(a.n, nb + j);
  }
  const int8_t* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = a.xq + (m + r) * a.kpad;
  __m512 facc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) facc[r][j] = _mm512_setzero_ps();

  for (int64_t g = 0; g < a.num_groups; ++g) {
    __m512i acc[MR][NB];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t kb = g * per_group; kb < (g + 1) * per_group; ++kb) {
      __m512i v[NB];
      for (int j = 0; j < NB; ++j)
        v[j] = _mm512_loadu_si512(wp[j] + kb * kPackedTileBytes);
      const int64_t k0 = kb * kKB;
#define TFQ_STEP(S)                                                   \
  {                                                                   \
    __m512i w[NB];                                                    \
    for (int j = 0; j < NB; ++j) w[j] = Field<kBits, (S) * kBits>(v[j], mask); \
    for (int r = 0; r < MR; ++r) {                                    \
      int32_t xv;                                                     \
      std::memcpy(&xv, xr[r] + k0 + 4 * (S), 4);                      \
      const __m512i xb = _mm512_set1_epi32(xv);                       \
      for (int j = 0; j < NB; ++j)                                    \
        acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], w[j], xb);         \
    }                                                                 \
  }
      TFQ_STEP(0)
      TFQ_STEP(1)
      if (kBits == 2) {
        TFQ_STEP(2)
        TFQ_STEP(3)
      }
#undef TFQ_STEP
    }
    for (int r = 0; r < MR; ++r) {
      const __m512i corr =
          _mm512_set1_epi32(kOffset * a.xsum[(m + r) * a.num_groups + g]);
      for (int j = 0; j < NB; ++j) {
        const __m512 sc = _mm512_maskz_loadu_ps(
            nmask[j], a.scales + g * a.n + (nb + j) * kPackedNBlock);
        const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], corr));
        facc[r][j] = _mm512_add_ps(facc[r][j], _mm512_mul_ps(f, sc));
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512 xs = _mm512_set1_ps(a.xs[m + r]);
    for (int j = 0; j < NB; ++j) {
      __m512 y = _mm512_mul_ps(facc[r][j], xs);
      if (a.bias != nullptr) {
        y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(
                                 nmask[j], a.bias + (nb + j) * kPackedNBlock));
      }
      _mm512_mask_storeu_ps(a.y + (m + r) * a.n + (nb + j) * kPackedNBlock,
                            nmask[j], y);
    }
  }
}

template <int kBits>
void Run(const PackedMatmulArgs& a, int64_t m0, int64_t m1, int64_t nb0,
         int64_t nb1) {
  if (m1 - m0 == 1) {
    int64_t nb = nb0;
    for (; nb + 4 <= nb1; nb += 4) Micro<kBits, 1, 4>(a, m0, nb);
    for (; nb < nb1; ++nb) Micro<kBits, 1, 1>(a, m0, nb);
    return;
  }
  // 4 rows x 4 column blocks: 16 accumulators, one broadcast per 4 vpdpbusd.
  int64_t nb = nb0;
  for (; nb + 4 <= nb1; nb += 4) {
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) Micro<kBits, 4, 4>(a, m, nb);
    for (; m < m1; ++m) Micro<kBits, 1, 4>(a, m, nb);
  }
  for (; nb < nb1; ++nb) {
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) Micro<kBits, 4, 1>(a, m, nb);
    for (; m < m1; ++m) Micro<kBits, 1, 1>(a, m, nb);
  }
}

void Matmul(const PackedMatmulArgs& a, int64_t m0, int64_t m1, int64_t nb0,
            int64_t nb1) {
  if (a.bits == 4) Run<4>(a, m0, m1, nb0, nb1); else Run<2>(a, m0, m1, nb0, nb1);
}

const PackedKernelTable kTable = {"avx512vnni", &Matmul};

}  // namespace

const PackedKernelTable* Avx512VnniPackedKernels() { return &kTable; }

}  // namespace kernels
}  // namespace tfquant

#else  // not built with AVX-512 VNNI

namespace tfquant {
namespace kernels {
const PackedKernelTable* Avx512VnniPackedKernels() { return nullptr; }
}  // namespace kernels
}  // namespace tfquant

#endif
