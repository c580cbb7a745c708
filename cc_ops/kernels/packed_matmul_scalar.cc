// Scalar reference of the packed matmul (packed.h). Every SIMD variant must
// give the same bits.

#include "packed.h"

#include <cmath>

namespace tfquant {
namespace kernels {

namespace {

void ScalarMatmul(const PackedMatmulArgs& a, int64_t m0, int64_t m1,
                  int64_t nb0, int64_t nb1) {
  const int bits = a.bits;
  const int64_t kb_len = PackedKBlock(bits);
  const int64_t kblocks = a.kpad / kb_len;
  const int offset = 1 << (bits - 1);
  const int mask = (1 << bits) - 1;
  const int64_t n_end = nb1 * kPackedNBlock < a.n ? nb1 * kPackedNBlock : a.n;
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* xq = a.xq + m * a.kpad;
    for (int64_t n = nb0 * kPackedNBlock; n < n_end; ++n) {
      const uint8_t* col = a.packed + (n / kPackedNBlock) * kblocks * kPackedTileBytes +
                           (n % kPackedNBlock) * 4;
      float facc = 0.0f;
      for (int64_t g = 0; g < a.num_groups; ++g) {
        int32_t acc = 0;
        for (int64_t k = g * a.group_k; k < (g + 1) * a.group_k; ++k) {
          const int64_t kk = k % kb_len;
          const uint8_t byte = col[(k / kb_len) * kPackedTileBytes + kk % 4];
          const int u = (byte >> ((kk / 4) * bits)) & mask;
          acc += u * xq[k];
        }
        acc -= offset * a.xsum[m * a.num_groups + g];
        facc = facc + static_cast<float>(acc) * a.scales[g * a.n + n];
      }
      a.y[m * a.n + n] = PackedEpilogue(facc, a.xs[m], a.bias, n);
    }
  }
}

void ScalarQuantizeRows(const float* x, int64_t k, int64_t kpad,
                        int64_t group_k, int64_t num_groups, int64_t m0,
                        int64_t m1, int8_t* xq, float* xs, int32_t* xsum) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * k;
    float amax = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      const float a = std::fabs(row[i]);
      amax = a > amax ? a : amax;  // NaN never wins
    }
    const float scale = ActivationScale(amax);
    xs[m] = scale;
    int8_t* out = xq + m * kpad;
    for (int64_t i = 0; i < k; ++i) out[i] = QuantizeActivation(row[i], scale);
    for (int64_t i = k; i < kpad; ++i) out[i] = 0;
    for (int64_t g = 0; g < num_groups; ++g) {
      int32_t s = 0;
      for (int64_t i = g * group_k; i < (g + 1) * group_k; ++i) s += out[i];
      xsum[m * num_groups + g] = s;
    }
  }
}

const PackedKernelTable kTable = {IsaLevel::kScalar, &ScalarMatmul, &ScalarQuantizeRows};

}  // namespace

const PackedKernelTable& ScalarPackedKernels() { return kTable; }

}  // namespace kernels
}  // namespace tfquant
