// Hybrid FULLY_CONNECTED (float activations, INT4 / INT2 weights: what a
// weight-only "dynamic range" export writes) on packed weights:
//   y[m, n] = act(xs[m] * sum_k xq[m, k] * q[n, k] * scale[n] + bias[n])
// with the packed kernels' dynamic per-row symmetric int8 activations
// (packed.h: xs = max|x_row| / 127, round half to even). Per output, against
// the float product with the same weights,
//   |y - x @ (q * scale)| <= 0.5 * xs[m] * sum_k |q[n, k] * scale[n]|.
// LiteRT's builtin hybrid kernel quantizes rows too (asymmetrically when the
// model says so), so the two differ by at most the sum of their two bounds,
// not bit for bit. Plain C++ on raw pointers: no TensorFlow or LiteRT header.

#ifndef TFQUANT_CC_OPS_KERNELS_PACKED_HYBRID_FC_H_
#define TFQUANT_CC_OPS_KERNELS_PACKED_HYBRID_FC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "packed.h"
#include "packed_int8_fc.h"
#include "task_pool.h"

namespace tfquant {
namespace kernels {

struct PackedHybridFc {
  int64_t k = 0, n = 0;
  int bits = 4;
  std::vector<uint8_t> packed;  // PackWeights of q^T [K, N]
  std::vector<float> scales;    // [N]
  std::vector<float> bias;      // [N] or empty
  float activation_min = 0.0f, activation_max = 0.0f;
  bool clamp = false;           // a fused activation: clamp to [min, max]
};

struct PackedHybridFcScratch {
  std::vector<int8_t> xq;     // [M, kpad]
  std::vector<float> xs;      // [M]
  std::vector<int32_t> xsum;  // [M]
};

// q_nk: [N, K] signed integers of `bits` bits (the TFLite filter layout);
// filter_scales [num_filter_scales]: 1 or N; bias [N] or nullptr. Returns ""
// or what is wrong.
std::string PreparePackedHybridFc(const int8_t* q_nk, int64_t n, int64_t k, int bits,
                                  const float* filter_scales, int64_t num_filter_scales,
                                  const float* bias, FusedActivation activation,
                                  PackedHybridFc* fc);

// x [M, K] float -> out [M, N] float, column blocks split over `pool`'s threads.
void RunPackedHybridFc(const PackedHybridFc& fc, const PackedKernelTable& kernels,
                       const float* x, int64_t m, float* out, TaskPool* pool,
                       PackedHybridFcScratch* scratch);

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_PACKED_HYBRID_FC_H_
