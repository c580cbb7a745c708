// SeerNet (Cao et al., "SeerNet: Predicting Convolutional Neural Network
// Feature-Map Sparsity through Low-Bit Quantization", CVPR 2019): a
// Conv2D + bias + ReLU (optionally followed by a 2x2 max-pool of stride 2)
// whose full-precision convolution is computed only where a low-bit copy of
// the layer predicts a non-zero output. Plain C++, no TensorFlow header.
//
// The layer runs in two phases:
//   1. per image b: one int8 scale xs_b = ActivationScale(max |x_b|)
//      (packed.h) for the predictor's input;
//   2. per band of output rows of one image:
//      a. the band's input rows, zero padded so that every window lies
//         inside: in float, and in int8 (QuantizeActivation with xs_b) with
//         the sum of each pixel's cin values;
//      b. predictor: the int8 im2col patches [P, K] (K = kh * kw * cin in
//         (i, j, c) order, the order of a Keras kernel [kh, kw, cin, cout]
//         reshaped to [K, cout]) times the packed 2/4-bit weights
//         (packed.h), plus the bias: pred [P, cout];
//      c. selection (SelectFn, per ISA): without pooling, (p, c) is
//         computed where pred[p, c] > threshold; with the 2x2 pool, in each
//         window and channel only the first position of the largest pred,
//         if above threshold; as 16-channel bit masks per pixel, then a list
//         of the selected (p, c) in pixel-major order;
//      d. sparse dot (SparseDotFn, per ISA): at the selected (p, c),
//         y = max(0, bias[c] + window(p) . filter_t[c]) in float, read from
//         the padded rows a kernel row (kw * cin contiguous floats) at a
//         time, written into y (for the pool, into the window's output);
//         y is 0 elsewhere.
// Only positions predicted zero (or not the window's maximum) differ from
// the dense layer, and only where the prediction was wrong.

#ifndef TFQUANT_CC_OPS_KERNELS_SEER_CONV_H_
#define TFQUANT_CC_OPS_KERNELS_SEER_CONV_H_

#include <cstdint>
#include <string>
#include <vector>

#include "isa_dispatch.h"
#include "packed.h"

namespace tfquant {
namespace kernels {

// The selected (p, c) of a band: pixels[i], channels[i] for i < count,
// pixel-major. Pixel p's window: kh kernel rows of row_len = kw * cin
// floats, row i at input + in_offset[p] + i * row_stride; its output goes
// to y[out_offset[p] + c].
struct SparseDotArgs {
  const float* input = nullptr;         // the padded band rows
  const int64_t* in_offset = nullptr;   // [P]
  const float* filter_t = nullptr;      // [cout, kh * row_len]
  const float* bias = nullptr;          // [cout]
  const int32_t* pixels = nullptr;      // [count]
  const int32_t* channels = nullptr;    // [count]
  const int64_t* out_offset = nullptr;  // [P]
  float* y = nullptr;
  int64_t kh = 0, row_len = 0, row_stride = 0;
};

// y[out_offset[p] + c] = max(0, bias[c] + sum_i sum_v
// input[in_offset[p] + i * row_stride + v] * filter_t[c, i * row_len + v])
// for the selected (p, c) [i0, i1). Variants sum in different orders, so
// they agree to float rounding, not bit for bit.
using SparseDotFn = void (*)(const SparseDotArgs& a, int64_t i0, int64_t i1);

// Step c: pred [rows * wo, cout] of `rows` conv rows (even when pool == 2)
// -> selected [rows * wo, ceil(cout / 16)]: bit j of selected[p, b] for
// channel 16 b + j. Identical across variants.
using SelectFn = void (*)(const float* pred, int64_t rows, int64_t wo,
                          int64_t cout, int64_t pool, float threshold,
                          uint16_t* selected);

// max |x[i]| over count floats; NaN never wins.
using AbsMaxFn = float (*)(const float* x, int64_t count);

// xq = QuantizeActivation(x, scale) for pixels * cin floats, and
// pixel_sums[i] = the sum of pixel i's cin values of xq. Identical across
// variants.
using QuantizePixelsFn = void (*)(const float* x, int64_t pixels, int64_t cin,
                                  float scale, int8_t* xq, int32_t* pixel_sums);

// ReLU that keeps NaN, as tf.nn.relu does.
inline float SeerRelu(float v) { return v < 0.0f ? 0.0f : v; }

struct SeerConvKernelTable {
  IsaLevel isa;
  AbsMaxFn abs_max;
  QuantizePixelsFn quantize_pixels;
  SelectFn select;
  SparseDotFn sparse_dot;
};

const SeerConvKernelTable& ScalarSeerConvKernels();
const SeerConvKernelTable* Avx512SeerConvKernels();  // nullptr if not built
// Rules in isa_dispatch.h (TFQUANT_KERNELS caps it).
const KernelFamily<SeerConvKernelTable>& SeerConvFamily();

struct SeerConvGeometry {
  int64_t batch = 0, h = 0, w = 0, cin = 0;
  int64_t kh = 0, kw = 0, cout = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0;
  int64_t ho = 0, wo = 0;  // convolution output
  int64_t pool = 1;        // 1: none; 2: 2x2 max-pool, stride 2, VALID
  int64_t out_h() const { return ho / pool; }
  int64_t out_w() const { return wo / pool; }
  int64_t patch_size() const { return kh * kw * cin; }
};

// The geometry of x [batch, h, w, cin] and a [kh, kw, cin, cout] kernel with
// TF's "SAME" (same_padding) or "VALID" rules; "" or an error naming the bad
// argument.
std::string MakeSeerConvGeometry(int64_t batch, int64_t h, int64_t w,
                                 int64_t cin, int64_t kh, int64_t kw,
                                 int64_t cout, int64_t stride_h,
                                 int64_t stride_w, bool same_padding,
                                 int64_t pool, SeerConvGeometry* g);

struct SeerConvArgs {
  SeerConvGeometry g;
  const float* x = nullptr;         // [batch, h, w, cin]
  const float* filter_t = nullptr;  // [cout, K]
  const float* bias = nullptr;      // [cout]
  // The predictor: packed low-bit weights of [K, cout] (packed.h) with
  // per-channel scales [cout]; bits 2 or 4.
  const uint8_t* predictor = nullptr;
  const float* predictor_scales = nullptr;
  int bits = 4;
  float threshold = 0.0f;
  float* xs = nullptr;  // [batch], phase 1 writes it
  float* y = nullptr;   // [batch, out_h, out_w, cout]
};

// filter [K, cout] (a Keras kernel's memory) -> filter_t [cout, K].
void SeerConvFilterRows(const float* filter, int64_t k, int64_t cout,
                        float* filter_t);

// Phase 1 for image b (tasks: one per image).
void SeerConvImageScale(const SeerConvArgs& a, const SeerConvKernelTable& table,
                           int64_t b);

// Phase 2 is split into independent tasks, one band of about 64 output
// pixels (whole conv rows, a multiple of pool) of one image each; tasks
// write disjoint parts of y. SeerConvTask computes task t with the kernels
// of `table` and returns how many (p, c) the float convolution computed.
int64_t SeerConvTasks(const SeerConvGeometry& g);
int64_t SeerConvTask(const SeerConvArgs& a, const SeerConvKernelTable& table,
                     int64_t t);

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_SEER_CONV_H_
