// AVX-512 VNNI packed matmul and activation quantization (format and
// contract: packed.h). One 64-byte tile load gives, per field, the 16x4
// unsigned weight bytes of one vpdpbusd against a broadcast dword of 4 int8
// activations.
//
// GEMM (several rows): a micro-kernel of MR rows x NB column blocks keeps
// MR*NB int32 accumulators in registers, so each unpacked weight vector
// (one shift + and) feeds MR vpdpbusd; the float per-group sums live in y
// between groups, which frees the registers for accumulators.
// GEMV (one row): the weights are streamed once, so it must keep pace with
// memory: fewer instructions per tile (fields by mask only), software
// prefetch, NB column blocks read side by side.

#include "packed.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "avx512_activation.h"
#include "avx512_tail_mask.h"

namespace tfquant {
namespace kernels {

namespace {

// ------------------------------------------------------------ activations

void QuantizeRowsAvx512(const float* x, int64_t k, int64_t kpad,
                        int64_t group_k, int64_t num_groups, int64_t m0,
                        int64_t m1, int8_t* xq, float* xs, int32_t* xsum) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * k;
    const float scale = ActivationScale(AbsMaxAvx512(row, k));
    xs[m] = scale;
    const __m512 vscale = _mm512_set1_ps(scale);
    int8_t* out = xq + m * kpad;
    for (int64_t g = 0; g < num_groups; ++g) {
      const int64_t end = std::min(k, (g + 1) * group_k);
      __m512i sum = _mm512_setzero_si512();
      for (int64_t j = g * group_k; j < end; j += 16) {
        const __mmask16 t = TailMask(end - j);
        const __m512i q = QuantizeActivation16(_mm512_maskz_loadu_ps(t, row + j), vscale);
        sum = _mm512_add_epi32(sum, q);
        _mm512_mask_cvtepi32_storeu_epi8(out + j, t, q);
      }
      xsum[m * num_groups + g] = _mm512_reduce_add_epi32(sum);
    }
    if (kpad > k) std::memset(out + k, 0, kpad - k);
  }
}

// ---------------------------------------------------------------- matmul

// GCC keeps arrays of vectors in registers only when their loops are
// unrolled early; without this the accumulators are spilled every step.
#define TFQ_UNROLL _Pragma("GCC unroll 16")

// acc += dot4(u8 weights w, s8 activations x) per int32 lane. As inline asm
// with the accumulator as an in-out operand: with the intrinsic, GCC 12
// copies every accumulator to a temporary register and back around each
// vpdpbusd, which halves the GEMV speed (measured).
inline __m512i Dpbusd(__m512i acc, __m512i w, __m512i x) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
  return acc;
}

inline __m512i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Group epilogue for rows [m, m + MR) x column blocks [nb, nb + NB):
// facc = facc + float(sum - offset * xsum) * scale, kept in y between
// groups; after the last group y = facc * xs (+ bias). The same IEEE
// operations in the same order as the scalar kernel.
template <int kBits, int MR, int NB>
inline void GroupEpilogue(const PackedMatmulArgs& a, int64_t m, int64_t nb,
                          int64_t g, const __m512i (&sum)[MR][NB]) {
  constexpr int kOffset = 1 << (kBits - 1);
  const bool first = g == 0, last = g + 1 == a.num_groups;
  TFQ_UNROLL for (int r = 0; r < MR; ++r) {
    const __m512i corr = _mm512_set1_epi32(kOffset * a.xsum[(m + r) * a.num_groups + g]);
    const __m512 xs = _mm512_set1_ps(a.xs[m + r]);
    TFQ_UNROLL for (int j = 0; j < NB; ++j) {
      const int64_t n0 = (nb + j) * kPackedNBlock;
      const __mmask16 valid = TailMask(a.n - n0);
      float* yp = a.y + (m + r) * a.n + n0;
      const __m512 sc = _mm512_maskz_loadu_ps(valid, a.scales + g * a.n + n0);
      const __m512 prev = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(valid, yp);
      __m512 f = _mm512_add_ps(
          prev, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum[r][j], corr)), sc));
      if (last) {
        f = _mm512_mul_ps(f, xs);
        if (a.bias != nullptr) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(valid, a.bias + n0));
      }
      _mm512_mask_storeu_ps(yp, valid, f);
    }
  }
}

// GEMM micro-kernel: rows [m, m + MR) x column blocks [nb, nb + NB), all
// groups. Each unpacked field (shift + and) feeds MR vpdpbusd.
template <int kBits, int MR, int NB>
void Micro(const PackedMatmulArgs& a, int64_t m, int64_t nb) {
  constexpr int kKB = 32 / kBits;
  constexpr int kFields = 8 / kBits;
  const int64_t kblocks = a.kpad / kKB;
  const int64_t per_group = a.group_k / kKB;
  const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << kBits) - 1));
  const uint8_t* wp[NB];
  TFQ_UNROLL for (int j = 0; j < NB; ++j) wp[j] = a.packed + (nb + j) * kblocks * kPackedTileBytes;
  const int8_t* xr[MR];
  TFQ_UNROLL for (int r = 0; r < MR; ++r) xr[r] = a.xq + (m + r) * a.kpad;

  for (int64_t g = 0; g < a.num_groups; ++g) {
    __m512i acc[MR][NB];
    TFQ_UNROLL for (int r = 0; r < MR; ++r)
      TFQ_UNROLL for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t kb = g * per_group; kb < (g + 1) * per_group; ++kb) {
      __m512i v[NB];
      TFQ_UNROLL for (int j = 0; j < NB; ++j) v[j] = _mm512_loadu_si512(wp[j] + kb * kPackedTileBytes);
      TFQ_UNROLL for (int s = 0; s < kFields; ++s) {
        __m512i w[NB];
        TFQ_UNROLL for (int j = 0; j < NB; ++j) {
          w[j] = _mm512_and_si512(s == 0 ? v[j] : _mm512_srli_epi16(v[j], s * kBits), mask);
        }
        TFQ_UNROLL for (int r = 0; r < MR; ++r) {
          const __m512i xb = Broadcast4(xr[r] + kb * kKB + 4 * s);
          TFQ_UNROLL for (int j = 0; j < NB; ++j) acc[r][j] = Dpbusd(acc[r][j], w[j], xb);
        }
      }
    }
    GroupEpilogue<kBits, MR, NB>(a, m, nb, g, acc);
  }
}

// Bytes ahead of the tile being read that GEMV prefetches in each stream.
constexpr int64_t kPrefetchBytes = 1024;

// GEMV kernel: one row, column blocks [nb, nb + NB). The weights are read
// once, so the kernel must keep up with memory: field s is taken with a
// mask only, w_s = v & (mask << s*bits) = 2^(s*bits) * u_s (no shift), into
// its own accumulator. Every kFlushTiles tiles the accumulators are shifted
// back (exact: they hold multiples of 2^(s*bits)) before they can overflow:
// |acc_s| <= 2^(s*bits) * (2^bits - 1) * 127 * 4 per tile and field, i.e.
// < 2^31 for 2048 tiles at either width.
constexpr int64_t kFlushTiles = 2048;

template <int kBits, int NB>
void Gemv(const PackedMatmulArgs& a, int64_t m, int64_t nb) {
  constexpr int kKB = 32 / kBits;
  constexpr int kFields = 8 / kBits;
  const int64_t kblocks = a.kpad / kKB;
  const int64_t per_group = a.group_k / kKB;
  __m512i field_mask[kFields];
  TFQ_UNROLL for (int s = 0; s < kFields; ++s) {
    field_mask[s] = _mm512_set1_epi8(static_cast<char>(((1 << kBits) - 1) << (s * kBits)));
  }
  const uint8_t* wp[NB];
  TFQ_UNROLL for (int j = 0; j < NB; ++j) wp[j] = a.packed + (nb + j) * kblocks * kPackedTileBytes;
  const int8_t* xr = a.xq + m * a.kpad;

  for (int64_t g = 0; g < a.num_groups; ++g) {
    __m512i sum[1][NB];
    TFQ_UNROLL for (int j = 0; j < NB; ++j) sum[0][j] = _mm512_setzero_si512();
    const int64_t group_end = (g + 1) * per_group;
    for (int64_t kb0 = g * per_group; kb0 < group_end; kb0 += kFlushTiles) {
      const int64_t kb1 = std::min(group_end, kb0 + kFlushTiles);
      __m512i acc[kFields][NB];
      TFQ_UNROLL for (int s = 0; s < kFields; ++s)
        TFQ_UNROLL for (int j = 0; j < NB; ++j) acc[s][j] = _mm512_setzero_si512();
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        __m512i v[NB];
        TFQ_UNROLL for (int j = 0; j < NB; ++j) {
          const uint8_t* tile = wp[j] + kb * kPackedTileBytes;
          _mm_prefetch(reinterpret_cast<const char*>(tile) + kPrefetchBytes, _MM_HINT_T0);
          v[j] = _mm512_loadu_si512(tile);
        }
        TFQ_UNROLL for (int s = 0; s < kFields; ++s) {
          const __m512i xb = Broadcast4(xr + kb * kKB + 4 * s);
          TFQ_UNROLL for (int j = 0; j < NB; ++j) {
            acc[s][j] = Dpbusd(acc[s][j], _mm512_and_si512(v[j], field_mask[s]), xb);
          }
        }
      }
      TFQ_UNROLL for (int s = 0; s < kFields; ++s)
        TFQ_UNROLL for (int j = 0; j < NB; ++j) {
          sum[0][j] = _mm512_add_epi32(sum[0][j], _mm512_srai_epi32(acc[s][j], s * kBits));
        }
    }
    GroupEpilogue<kBits, 1, NB>(a, m, nb, g, sum);
  }
}

// GEMM register blocking: 4 rows x 4 column blocks = 16 accumulators, with
// the 4 loaded tiles, their 4 unpacked fields, the mask and a broadcast: 26
// of the 32 zmm registers. 6 x 4 or 7 x 3 need more than 32, and GCC's
// spills then make them 25-35 % slower (measured).
constexpr int kRows = 4;
constexpr int kBlocks = 4;

template <int kBits, int NB, int MR = kRows>
void RowTail(const PackedMatmulArgs& a, int64_t rows, int64_t m, int64_t nb) {
  if constexpr (MR > 1) {
    if (rows == MR - 1) return Micro<kBits, MR - 1, NB>(a, m, nb);
    return RowTail<kBits, NB, MR - 1>(a, rows, m, nb);
  }
}

template <int kBits, int NB>
void Rows(const PackedMatmulArgs& a, int64_t m0, int64_t m1, int64_t nb) {
  int64_t m = m0;
  for (; m + kRows <= m1; m += kRows) Micro<kBits, kRows, NB>(a, m, nb);
  if (m < m1) RowTail<kBits, NB>(a, m1 - m, m, nb);
}

template <int kBits>
void Run(const PackedMatmulArgs& a, int64_t m0, int64_t m1, int64_t nb0,
         int64_t nb1) {
  if (m1 - m0 == 1) {
    int64_t nb = nb0;
    for (; nb + kBlocks <= nb1; nb += kBlocks) Gemv<kBits, kBlocks>(a, m0, nb);
    for (; nb < nb1; ++nb) Gemv<kBits, 1>(a, m0, nb);
    return;
  }
  int64_t nb = nb0;
  for (; nb + kBlocks <= nb1; nb += kBlocks) Rows<kBits, kBlocks>(a, m0, m1, nb);
  for (; nb < nb1; ++nb) Rows<kBits, 1>(a, m0, m1, nb);
}

void Matmul(const PackedMatmulArgs& a, int64_t m0, int64_t m1, int64_t nb0,
            int64_t nb1) {
  if (a.bits == 4) Run<4>(a, m0, m1, nb0, nb1); else Run<2>(a, m0, m1, nb0, nb1);
}

const PackedKernelTable kTable = {IsaLevel::kAvx512Vnni, &Matmul, &QuantizeRowsAvx512};

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
