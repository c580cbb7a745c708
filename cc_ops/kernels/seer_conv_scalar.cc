// The reference kernels of the SeerNet layer (contract: seer_conv.h): the
// sparse dot one output at a time, summed in (i, j, c) order. The SIMD
// variants are tested against them.

#include <cmath>

#include "seer_conv.h"

namespace tfquant {
namespace kernels {

namespace {

float AbsMaxScalar(const float* x, int64_t count) {
  float amax = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    const float a = std::fabs(x[i]);
    amax = a > amax ? a : amax;
  }
  return amax;
}

void QuantizePixelsScalar(const float* x, int64_t pixels, int64_t cin, float scale,
                          int8_t* xq, int32_t* pixel_sums) {
  for (int64_t p = 0; p < pixels; ++p) {
    int32_t sum = 0;
    for (int64_t c = 0; c < cin; ++c) {
      xq[p * cin + c] = QuantizeActivation(x[p * cin + c], scale);
      sum += xq[p * cin + c];
    }
    pixel_sums[p] = sum;
  }
}

void SelectScalar(const float* pred, int64_t rows, int64_t wo, int64_t cout,
                  int64_t pool, float threshold, uint16_t* selected) {
  const int64_t cblocks = CeilDiv(cout, 16);
  for (int64_t i = 0; i < rows * wo * cblocks; ++i) selected[i] = 0;
  auto set = [&](int64_t p, int64_t c) {
    selected[p * cblocks + c / 16] |= static_cast<uint16_t>(1u << (c % 16));
  };
  if (pool == 1) {
    for (int64_t p = 0; p < rows * wo; ++p) {
      for (int64_t c = 0; c < cout; ++c) {
        if (pred[p * cout + c] > threshold) set(p, c);
      }
    }
    return;
  }
  for (int64_t r = 0; r + 1 < rows; r += 2) {
    for (int64_t col = 0; col + 1 < wo; col += 2) {
      const int64_t p00 = r * wo + col;
      const int64_t pos[4] = {p00, p00 + 1, p00 + wo, p00 + wo + 1};
      for (int64_t c = 0; c < cout; ++c) {
        int64_t best = pos[0];
        for (int t = 1; t < 4; ++t) {
          if (pred[pos[t] * cout + c] > pred[best * cout + c]) best = pos[t];
        }
        if (pred[best * cout + c] > threshold) set(best, c);
      }
    }
  }
}

void SparseDotScalar(const SparseDotArgs& a, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t p = a.pixels[i], c = a.channels[i];
    const float* w = a.filter_t + c * a.kh * a.row_len;
    float s = 0.0f;
    for (int64_t r = 0; r < a.kh; ++r) {
      const float* x = a.input + a.in_offset[p] + r * a.row_stride;
      for (int64_t v = 0; v < a.row_len; ++v) s += x[v] * w[r * a.row_len + v];
    }
    a.y[a.out_offset[p] + c] = SeerRelu(s + a.bias[c]);
  }
}

}  // namespace

const SeerConvKernelTable& ScalarSeerConvKernels() {
  static const SeerConvKernelTable table{IsaLevel::kScalar, &AbsMaxScalar,
                                         &QuantizePixelsScalar, &SelectScalar,
                                         &SparseDotScalar};
  return table;
}

}  // namespace kernels
}  // namespace tfquant
