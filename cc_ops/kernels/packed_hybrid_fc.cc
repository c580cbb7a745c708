// Hybrid FULLY_CONNECTED on packed weights (contract: packed_hybrid_fc.h).
// Compiled without ISA flags: the row quantization and the dot products run in
// the dispatched packed kernels; what is here is the bookkeeping around them.

#include "packed_hybrid_fc.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tfquant {
namespace kernels {

std::string PreparePackedHybridFc(const int8_t* q_nk, int64_t n, int64_t k, int bits,
                                  const float* filter_scales, int64_t num_filter_scales,
                                  const float* bias, FusedActivation activation,
                                  PackedHybridFc* fc) {
  std::string error = CheckPackedBits(bits);
  if (error.empty()) error = CheckPackedDims(k, n);
  if (!error.empty()) return error;
  if (num_filter_scales != 1 && num_filter_scales != n) {
    return "the filter has " + std::to_string(num_filter_scales) +
           " scales; allowed: 1 or N=" + std::to_string(n);
  }
  fc->k = k;
  fc->n = n;
  fc->bits = bits;
  fc->scales.resize(n);
  for (int64_t c = 0; c < n; ++c) {
    const float s = filter_scales[num_filter_scales == 1 ? 0 : c];
    if (!std::isfinite(s)) {
      return "channel " + std::to_string(c) + ": filter scale " + std::to_string(s) +
             " is not finite";
    }
    fc->scales[c] = s;
  }
  fc->bias.clear();
  if (bias != nullptr) fc->bias.assign(bias, bias + n);
  const std::vector<int8_t> q_kn = TransposeFilter(q_nk, n, k);
  fc->packed.assign(PackedBytes(k, n, bits), 0);
  error = PackWeights(q_kn.data(), k, n, bits, fc->packed.data());
  if (!error.empty()) return error;
  const float inf = std::numeric_limits<float>::infinity();
  fc->clamp = activation != FusedActivation::kNone;
  switch (activation) {
    case FusedActivation::kNone:
      fc->activation_min = -inf, fc->activation_max = inf;
      break;
    case FusedActivation::kRelu:
      fc->activation_min = 0.0f, fc->activation_max = inf;
      break;
    case FusedActivation::kReluN1To1:
      fc->activation_min = -1.0f, fc->activation_max = 1.0f;
      break;
    case FusedActivation::kRelu6:
      fc->activation_min = 0.0f, fc->activation_max = 6.0f;
      break;
  }
  return "";
}

void RunPackedHybridFc(const PackedHybridFc& fc, const PackedKernelTable& kernels,
                       const float* x, int64_t m, float* out, TaskPool* pool,
                       PackedHybridFcScratch* scratch) {
  PackedMatmulArgs a = MakePackedMatmulArgs(m, fc.k, fc.n, fc.bits, /*group_size=*/0);
  scratch->xq.resize(static_cast<size_t>(m * a.kpad));
  scratch->xs.resize(m);
  scratch->xsum.resize(static_cast<size_t>(m * a.num_groups));
  kernels.quantize_rows(x, fc.k, a.kpad, a.group_k, a.num_groups, 0, m, scratch->xq.data(),
                        scratch->xs.data(), scratch->xsum.data());
  a.xq = scratch->xq.data();
  a.xs = scratch->xs.data();
  a.xsum = scratch->xsum.data();
  a.packed = fc.packed.data();
  a.scales = fc.scales.data();
  a.bias = fc.bias.empty() ? nullptr : fc.bias.data();
  a.y = out;
  RunOverColumnBlocks(m, fc.k, fc.n, pool, [&](int64_t nb0, int64_t nb1) {
    kernels.matmul(a, 0, m, nb0, nb1);
    if (!fc.clamp) return;
    const int64_t c0 = nb0 * kPackedNBlock, c1 = std::min(fc.n, nb1 * kPackedNBlock);
    for (int64_t r = 0; r < m; ++r) {
      float* row = out + r * fc.n;
      // NaN stays NaN, as in LiteRT's float activation functions.
      for (int64_t c = c0; c < c1; ++c) {
        row[c] = std::min(std::max(row[c], fc.activation_min), fc.activation_max);
      }
    }
  });
}

}  // namespace kernels
}  // namespace tfquant
