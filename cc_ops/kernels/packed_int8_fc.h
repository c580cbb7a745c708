// Integer FULLY_CONNECTED with int8 activations on packed 2/4-bit weights,
// with the numbers of TFLite's builtin int8 kernel:
//   acc[m, n] = sum_k (x[m, k] - input_zp) * q[n, k] + bias[n]        (int32)
//   out[m, n] = clamp(MultiplyByQuantizedMultiplier(acc, mult[n], shift[n])
//                     + output_zp, act_min, act_max)                  (int8)
// with mult/shift from QuantizeMultiplier(input_scale * filter_scale[n] /
// output_scale) as TFLite computes them, so the outputs are bit-exact.
//
// The dot products run in the packed matmul kernels (packed.h) unchanged:
// the raw int8 x is the "quantized activation" with row scale 1 and unit
// weight scales, so the kernel's float epilogue returns float(sum_k x * q)
// exactly as long as |sum_k x * q| <= 2^24, i.e. K * 128 * 2^(bits-1) <= 2^24
// (K <= 16384 at 4 bits, 65536 at 2 bits; larger K is rejected at prepare).
// The zero point enters through per-channel column sums folded into the bias.
//
// Cell Division (Park & Yoo, DAC 2019): an int8 filter whose values need b bits
// runs on the c-bit kernels (c = 4 or 2, the cell width) as n = ceil(b / c) cells:
// with B = 2^c, the base-B digits of q + 2^(nc-1), each shifted to the signed
// range [-B/2, B/2 - 1], give (DivideIntoCells)
//   q = sum_i B^i * cell_i + offset,   offset = B/2 * (B^n - 1) / (B - 1) - 2^(nc-1)
// (two INT4 cells: q = 16 * cell_1 + cell_0 + 8), so
//   sum_k x * q = sum_i B^i * sum_k x * cell_i + offset * sum_k x
// holds exactly in integers and the requantized outputs are the int8 kernel's.
// Plain C++ on raw pointers: no TensorFlow or LiteRT header.

#ifndef TFQUANT_CC_OPS_KERNELS_PACKED_INT8_FC_H_
#define TFQUANT_CC_OPS_KERNELS_PACKED_INT8_FC_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "packed.h"
#include "task_pool.h"

namespace tfquant {
namespace kernels {

// TFLite's fused activations of an int8 FULLY_CONNECTED.
enum class FusedActivation { kNone, kRelu, kReluN1To1, kRelu6 };

// The quantization of one FULLY_CONNECTED node, as stored in the model.
struct Int8FcQuantization {
  float input_scale = 0.0f;
  int32_t input_zero_point = 0;
  float output_scale = 0.0f;
  int32_t output_zero_point = 0;
  const float* filter_scales = nullptr;  // [num_filter_scales]: 1 or N
  int64_t num_filter_scales = 0;
  FusedActivation activation = FusedActivation::kNone;
};

// Everything an invoke needs, computed once from the constant filter.
struct PackedInt8Fc {
  int64_t k = 0, n = 0;
  int bits = 4;                         // the packed width (divided: of each cell)
  std::vector<uint8_t> packed;          // PackWeights of q^T [K, N]; empty if divided
  // Divided into cells: PackWeights of each cell^T, least significant first.
  std::vector<std::vector<uint8_t>> cell_packs;
  int32_t cell_offset = 0;
  std::vector<int32_t> bias_minus_zp;   // bias[n] - input_zp * sum_k q[n, k]
  std::vector<int32_t> multiplier;      // [N]
  std::vector<int32_t> shift;           // [N]
  std::vector<float> unit_scales;       // [N] ones: the kernel's weight scales
  int32_t output_zero_point = 0;
  int32_t activation_min = -128, activation_max = 127;
};

// Per-invoke buffers, reused between invokes.
struct PackedInt8FcScratch {
  std::vector<int8_t> xq;     // [M, kpad]
  std::vector<float> ones;    // [M] row scales
  std::vector<int32_t> xsum;  // [M]
  std::vector<float> dots;    // [M, N] exact sum_k x * q; divided: [cells, M, N] x * cell_i
};

// q_nk: [N, K] signed integers of `bits` bits (the TFLite filter layout,
// unpacked). bias: [N] or nullptr. Returns "" or what is wrong.
std::string PreparePackedInt8Fc(const int8_t* q_nk, int64_t n, int64_t k, int bits,
                                const int32_t* bias, const Int8FcQuantization& quant,
                                PackedInt8Fc* fc);

// The TFLite filter layout q_nk [N, K] as the packed kernels' q [K, N].
std::vector<int8_t> TransposeFilter(const int8_t* q_nk, int64_t n, int64_t k);

// Cells of an int8 filter at most: four of 2 bits.
constexpr int kMaxCells = 4;

// How many cells of `cell_bits` bits (2 or 4) the values q [count] need (above).
int CellsNeeded(const int8_t* q, int64_t count, int cell_bits);

// The cells of Cell Division (above): out [cells, count], least significant first;
// *offset the constant. Returns "" or what is wrong (a width, or a value that does
// not fit in cells * cell_bits bits).
std::string DivideIntoCells(const int8_t* q, int64_t count, int cell_bits, int cells,
                            int8_t* out, int32_t* offset);

// As PreparePackedInt8Fc for an int8 filter q_nk, run as CellsNeeded cells of
// `cell_bits` bits.
std::string PrepareCellDividedInt8Fc(const int8_t* q_nk, int64_t n, int64_t k, int cell_bits,
                                     const int32_t* bias, const Int8FcQuantization& quant,
                                     PackedInt8Fc* fc);

// x [M, K] int8 -> out [M, N] int8, column blocks split over the threads of
// `pool` (nullptr: the calling thread only).
void RunPackedInt8Fc(const PackedInt8Fc& fc, const PackedKernelTable& kernels,
                     const int8_t* x, int64_t m, int8_t* out, TaskPool* pool,
                     PackedInt8FcScratch* scratch);

// Calls fn(nb0, nb1) on contiguous runs [nb0, nb1) of the column blocks (16
// outputs each) of an [m, k] x [k, n] product, split over the threads of
// `pool` (nullptr: the calling thread only) when the work pays for it.
void RunOverColumnBlocks(int64_t m, int64_t k, int64_t n, TaskPool* pool,
                         const std::function<void(int64_t, int64_t)>& fn);

// The integer epilogue of rows [0, m) x output columns [c0, c1): dots [m, n]
// (exact integers as floats) -> out [m, n] int8. Raw pointers only, so that
// ISA-specific files need nothing from <vector>.
struct RequantizeArgs {
  const float* dots = nullptr;
  const int32_t* bias_minus_zp = nullptr;  // [n]
  const int32_t* multiplier = nullptr;     // [n]
  const int32_t* shift = nullptr;          // [n]
  // Divided into cells (scalar epilogue only; dots is [cells, m, n]):
  // acc = sum_i 2^(cell_bits * i) * dots[i] + cell_offset * xsum[m] + bias_minus_zp.
  int cells = 1, cell_bits = 0;
  int32_t cell_offset = 0;
  const int32_t* xsum = nullptr;           // [m] sum_k x
  int32_t output_zero_point = 0, activation_min = -128, activation_max = 127;
  int64_t m = 0, n = 0;
  int8_t* out = nullptr;
};
using RequantizeFn = void (*)(const RequantizeArgs& a, int64_t c0, int64_t c1);
void RequantizeScalar(const RequantizeArgs& a, int64_t c0, int64_t c1);
RequantizeFn Avx512Requantize();  // nullptr if not built with AVX-512

// TFLite's QuantizeMultiplier: m = q * 2^shift with q in [2^30, 2^31).
void QuantizeMultiplier(double real_multiplier, int32_t* multiplier, int32_t* shift);
// round(x * multiplier * 2^(shift - 31)) as the builtin FULLY_CONNECTED of
// ai-edge-litert 2.3 computes it: a rounding doubling high multiply, then a
// right shift that rounds ties up (gemmlowp's reference rounds them away
// from zero; that differs on negative ties, see tests/test_delegate.py).
int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t multiplier, int32_t shift);

// TFLite's INT4 / INT2 tensor packing (low bits first) -> one int8 per value.
void UnpackLowBitTensor(const uint8_t* packed, int64_t count, int bits, int8_t* out);

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_PACKED_INT8_FC_H_
