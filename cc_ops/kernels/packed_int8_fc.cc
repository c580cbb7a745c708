// Integer FULLY_CONNECTED on packed weights (contract: packed_int8_fc.h).
// Compiled without ISA flags: the dot products run in the dispatched packed
// matmul kernels; what is here is the integer bookkeeping around them.

#include "packed_int8_fc.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

namespace tfquant {
namespace kernels {

void QuantizeMultiplier(double real_multiplier, int32_t* multiplier, int32_t* shift) {
  if (real_multiplier == 0.0) {
    *multiplier = 0;
    *shift = 0;
    return;
  }
  int exponent = 0;
  const double fraction = std::frexp(real_multiplier, &exponent);
  int64_t fixed = static_cast<int64_t>(std::round(fraction * (int64_t{1} << 31)));
  if (fixed == (int64_t{1} << 31)) {  // the fraction rounded up to 1
    fixed /= 2;
    ++exponent;
  }
  if (exponent < -31) {  // too small for any int32 accumulator to reach 1
    exponent = 0;
    fixed = 0;
  }
  *multiplier = static_cast<int32_t>(fixed);
  *shift = exponent;
}

namespace {

// gemmlowp's rounding high multiply: round(a * b / 2^31), saturating.
int32_t RoundingDoublingHighMul(int32_t a, int32_t b) {
  if (a == b && a == std::numeric_limits<int32_t>::min()) {
    return std::numeric_limits<int32_t>::max();
  }
  const int64_t ab = static_cast<int64_t>(a) * b;
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : 1 - (int64_t{1} << 30);
  return static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));
}

// x / 2^exponent rounded to nearest, ties upward. (gemmlowp's
// RoundingDivideByPOT rounds ties away from zero; the builtin kernel of
// ai-edge-litert 2.3 rounds them up: measured on negative outputs of an
// FC without activation, see tests/test_delegate.py.)
int32_t RoundingShiftRight(int32_t x, int exponent) {
  if (exponent == 0) return x;
  return static_cast<int32_t>((static_cast<int64_t>(x) + (int64_t{1} << (exponent - 1))) >>
                              exponent);
}

// Saturates to int32: a tiny scale or an extreme zero point (a corrupt model) must not
// overflow; the callers clamp to int8 anyway.
int32_t QuantizeToOutput(float value, float scale, int32_t zero_point) {
  const double q = static_cast<double>(zero_point) + std::round(value / scale);
  if (!(q > -2147483648.0)) return std::numeric_limits<int32_t>::min();  // NaN too
  if (q > 2147483647.0) return std::numeric_limits<int32_t>::max();
  return static_cast<int32_t>(q);
}

std::string Str(double v) { return std::to_string(v); }

}  // namespace

int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t multiplier, int32_t shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  // The left shift wraps like TFLite's int32 multiply (without the UB).
  const int32_t shifted = static_cast<int32_t>(static_cast<uint32_t>(x) << left);
  return RoundingShiftRight(RoundingDoublingHighMul(shifted, multiplier), right);
}

void UnpackLowBitTensor(const uint8_t* packed, int64_t count, int bits, int8_t* out) {
  const int per_byte = 8 / bits;
  const int sign_shift = 8 - bits;
  for (int64_t i = 0; i < count; ++i) {
    const int field = (packed[i / per_byte] >> ((i % per_byte) * bits)) & ((1 << bits) - 1);
    // Sign-extend the low `bits` bits.
    out[i] = static_cast<int8_t>(static_cast<int8_t>(field << sign_shift) >> sign_shift);
  }
}

std::vector<int8_t> TransposeFilter(const int8_t* q_nk, int64_t n, int64_t k) {
  std::vector<int8_t> q_kn(static_cast<size_t>(k * n));
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t i = 0; i < k; ++i) q_kn[i * n + c] = q_nk[c * k + i];
  }
  return q_kn;
}

int CellsNeeded(const int8_t* q, int64_t count, int cell_bits) {
  int lo = 0, hi = 0;
  for (int64_t i = 0; i < count; ++i) {
    lo = std::min<int>(lo, q[i]);
    hi = std::max<int>(hi, q[i]);
  }
  int width = 1;
  while (lo < -(1 << (width - 1)) || hi > (1 << (width - 1)) - 1) ++width;
  return (width + cell_bits - 1) / cell_bits;
}

std::string DivideIntoCells(const int8_t* q, int64_t count, int cell_bits, int cells,
                            int8_t* out, int32_t* offset) {
  std::string error = CheckPackedBits(cell_bits);
  if (!error.empty()) return error;
  const int width = cell_bits * cells;
  if (cells < 1 || width > 8 + cell_bits - 1) {
    return "cells=" + std::to_string(cells) + " of " + std::to_string(cell_bits) +
           " bits is not allowed; 1.." + std::to_string((8 + cell_bits - 1) / cell_bits);
  }
  const int half_range = 1 << (width - 1), digit_mask = (1 << cell_bits) - 1;
  const int half_digit = 1 << (cell_bits - 1);
  for (int64_t i = 0; i < count; ++i) {
    if (q[i] < -half_range || q[i] > half_range - 1) {
      return "value " + std::to_string(q[i]) + " at " + std::to_string(i) +
             " does not fit in " + std::to_string(cells) + " cells of " +
             std::to_string(cell_bits) + " bits";
    }
  }
  int32_t constant = -half_range;
  for (int c = 0; c < cells; ++c) {
    constant += half_digit << (cell_bits * c);
    int8_t* cell = out + c * count;
    for (int64_t i = 0; i < count; ++i) {
      const int digit = ((q[i] + half_range) >> (cell_bits * c)) & digit_mask;
      cell[i] = static_cast<int8_t>(digit - half_digit);
    }
  }
  *offset = constant;
  return "";
}

namespace {

// PreparePackedInt8Fc, and with cells > 1 the same for an int8 q_nk run as `cells`
// cells of `bits` bits.
std::string PrepareInt8Fc(const int8_t* q_nk, int64_t n, int64_t k, int bits, int cells,
                          const int32_t* bias, const Int8FcQuantization& quant,
                          PackedInt8Fc* fc) {
  std::string error = CheckPackedBits(bits);
  if (error.empty()) error = CheckPackedDims(k, n);
  if (!error.empty()) return error;
  // float(sum_k x * q) must be exact: |x| <= 128, |q| <= 2^(bits-1).
  const int64_t max_k = (int64_t{1} << 24) / (128 * (int64_t{1} << (bits - 1)));
  if (k > max_k) {
    return "K=" + std::to_string(k) + " is too large for exact int8 accumulation at " +
           std::to_string(bits) + " bits; at most " + std::to_string(max_k);
  }
  if (quant.num_filter_scales != 1 && quant.num_filter_scales != n) {
    return "the filter has " + std::to_string(quant.num_filter_scales) +
           " scales; allowed: 1 or N=" + std::to_string(n);
  }
  if (!(quant.input_scale > 0.0f) || !(quant.output_scale > 0.0f)) {
    return "input and output scales must be > 0; got " + Str(quant.input_scale) + " and " +
           Str(quant.output_scale);
  }
  fc->k = k;
  fc->n = n;
  fc->bits = bits;
  const std::vector<int8_t> q_kn = TransposeFilter(q_nk, n, k);
  fc->bias_minus_zp.assign(n, 0);
  for (int64_t c = 0; c < n; ++c) {
    int64_t column_sum = 0;
    for (int64_t i = 0; i < k; ++i) column_sum += q_nk[c * k + i];
    fc->bias_minus_zp[c] = static_cast<int32_t>(
        (bias != nullptr ? bias[c] : 0) - quant.input_zero_point * column_sum);
  }
  fc->packed.clear();
  fc->cell_packs.clear();
  fc->cell_offset = 0;
  if (cells > 1) {
    std::vector<int8_t> divided(q_kn.size() * cells);
    error = DivideIntoCells(q_kn.data(), static_cast<int64_t>(q_kn.size()), bits, cells,
                            divided.data(), &fc->cell_offset);
    for (int c = 0; c < cells && error.empty(); ++c) {
      fc->cell_packs.emplace_back(PackedBytes(k, n, bits), 0);
      error = PackWeights(divided.data() + c * q_kn.size(), k, n, bits,
                          fc->cell_packs.back().data());
    }
  } else {
    fc->packed.assign(PackedBytes(k, n, bits), 0);
    error = PackWeights(q_kn.data(), k, n, bits, fc->packed.data());
  }
  if (!error.empty()) return error;

  fc->multiplier.resize(n);
  fc->shift.resize(n);
  for (int64_t c = 0; c < n; ++c) {
    const float filter_scale = quant.filter_scales[quant.num_filter_scales == 1 ? 0 : c];
    // The same double expression as TFLite's kernel, so the same multiplier.
    const double real = static_cast<double>(quant.input_scale) *
                        static_cast<double>(filter_scale) /
                        static_cast<double>(quant.output_scale);
    if (!std::isfinite(real)) {  // a NaN or Inf filter scale: no multiplier exists
      return "channel " + std::to_string(c) + ": filter scale " + Str(filter_scale) +
             " gives a multiplier of " + Str(real);
    }
    QuantizeMultiplier(real, &fc->multiplier[c], &fc->shift[c]);
    if (fc->shift[c] > 30) {  // a left shift of 31+ bits would overflow any accumulator
      return "channel " + std::to_string(c) + ": input_scale * filter_scale / output_scale = " +
             Str(real) + " is too large; at most 2^30";
    }
  }
  fc->unit_scales.assign(n, 1.0f);
  fc->output_zero_point = quant.output_zero_point;
  int32_t lo = -128, hi = 127;
  const float s = quant.output_scale;
  const int32_t zp = quant.output_zero_point;
  switch (quant.activation) {
    case FusedActivation::kNone:
      break;
    case FusedActivation::kRelu:
      lo = std::max(lo, QuantizeToOutput(0.0f, s, zp));
      break;
    case FusedActivation::kReluN1To1:
      lo = std::max(lo, QuantizeToOutput(-1.0f, s, zp));
      hi = std::min(hi, QuantizeToOutput(1.0f, s, zp));
      break;
    case FusedActivation::kRelu6:
      lo = std::max(lo, QuantizeToOutput(0.0f, s, zp));
      hi = std::min(hi, QuantizeToOutput(6.0f, s, zp));
      break;
  }
  fc->activation_min = lo;
  fc->activation_max = hi;
  return "";
}

}  // namespace

std::string PreparePackedInt8Fc(const int8_t* q_nk, int64_t n, int64_t k, int bits,
                                const int32_t* bias, const Int8FcQuantization& quant,
                                PackedInt8Fc* fc) {
  return PrepareInt8Fc(q_nk, n, k, bits, /*cells=*/1, bias, quant, fc);
}

std::string PrepareCellDividedInt8Fc(const int8_t* q_nk, int64_t n, int64_t k, int cell_bits,
                                     const int32_t* bias, const Int8FcQuantization& quant,
                                     PackedInt8Fc* fc) {
  const std::string error = CheckPackedBits(cell_bits);
  if (!error.empty()) return error;
  // At least two cells: one would be the plain packed kernel.
  const int cells = std::max(2, CellsNeeded(q_nk, n * k, cell_bits));
  return PrepareInt8Fc(q_nk, n, k, cell_bits, cells, bias, quant, fc);
}

void RequantizeScalar(const RequantizeArgs& a, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < a.m; ++r) {
    const float* row = a.dots + r * a.n;
    int8_t* out_row = a.out + r * a.n;
    for (int64_t c = c0; c < c1; ++c) {
      int32_t acc;
      if (a.cells == 1) {
        acc = static_cast<int32_t>(row[c]) + a.bias_minus_zp[c];
      } else {
        // In int64, wrapped to int32 as the int8 kernel's int32 sum would wrap.
        int64_t wide = int64_t{a.cell_offset} * a.xsum[r] + a.bias_minus_zp[c];
        for (int i = 0; i < a.cells; ++i) {
          const int64_t weight = int64_t{1} << (a.cell_bits * i);
          wide += static_cast<int64_t>(row[i * a.m * a.n + c]) * weight;
        }
        acc = static_cast<int32_t>(static_cast<uint32_t>(wide));
      }
      int32_t v = MultiplyByQuantizedMultiplier(acc, a.multiplier[c], a.shift[c]) +
                  a.output_zero_point;
      v = std::min(std::max(v, a.activation_min), a.activation_max);
      out_row[c] = static_cast<int8_t>(v);
    }
  }
}

void RunPackedInt8Fc(const PackedInt8Fc& fc, const PackedKernelTable& kernels,
                     const int8_t* x, int64_t m, int8_t* out, TaskPool* pool,
                     PackedInt8FcScratch* scratch) {
  PackedMatmulArgs a = MakePackedMatmulArgs(m, fc.k, fc.n, fc.bits, /*group_size=*/0);
  scratch->xq.resize(static_cast<size_t>(m * a.kpad));
  scratch->ones.assign(m, 1.0f);
  scratch->xsum.resize(m);
  const int cells = fc.cell_packs.empty() ? 1 : static_cast<int>(fc.cell_packs.size());
  scratch->dots.resize(static_cast<size_t>(cells * m * fc.n));
  for (int64_t r = 0; r < m; ++r) {
    const int8_t* row = x + r * fc.k;
    int8_t* dst = scratch->xq.data() + r * a.kpad;
    std::memcpy(dst, row, fc.k);
    std::memset(dst + fc.k, 0, a.kpad - fc.k);
    int32_t sum = 0;
    for (int64_t i = 0; i < fc.k; ++i) sum += row[i];
    scratch->xsum[r] = sum;
  }
  a.xq = scratch->xq.data();
  a.xs = scratch->ones.data();
  a.xsum = scratch->xsum.data();
  a.scales = fc.unit_scales.data();
  PackedMatmulArgs per_cell[kMaxCells];  // one matmul per cell
  for (int i = 0; i < cells; ++i) {
    per_cell[i] = a;
    per_cell[i].packed = cells == 1 ? fc.packed.data() : fc.cell_packs[i].data();
    per_cell[i].y = scratch->dots.data() + i * m * fc.n;
  }

  RequantizeArgs q;
  q.dots = scratch->dots.data();
  q.bias_minus_zp = fc.bias_minus_zp.data();
  q.multiplier = fc.multiplier.data();
  q.shift = fc.shift.data();
  q.output_zero_point = fc.output_zero_point;
  q.activation_min = fc.activation_min;
  q.activation_max = fc.activation_max;
  q.m = m;
  q.n = fc.n;
  q.out = out;
  q.cells = cells;
  q.cell_bits = fc.bits;
  q.cell_offset = fc.cell_offset;
  q.xsum = scratch->xsum.data();
  // The AVX-512 epilogue goes with AVX-512 (or better) matmul kernels, which
  // imply the CPU runs it; forcing "scalar" tests the plain C++ path end to end.
  const RequantizeFn requantize =
      (cells == 1 && kernels.isa >= IsaLevel::kAvx512 && Avx512Requantize() != nullptr)
          ? Avx512Requantize() : &RequantizeScalar;
  RunOverColumnBlocks(m * cells, fc.k, fc.n, pool, [&](int64_t nb0, int64_t nb1) {
    for (int c = 0; c < cells; ++c) kernels.matmul(per_cell[c], 0, m, nb0, nb1);
    requantize(q, nb0 * kPackedNBlock, std::min(fc.n, nb1 * kPackedNBlock));
  });
}

void RunOverColumnBlocks(int64_t m, int64_t k, int64_t n, TaskPool* pool,
                         const std::function<void(int64_t, int64_t)>& fn) {
  // Contiguous runs of column blocks, a multiple of 4 (the kernels' widest
  // register block) so that no thread gets a slow tail in the middle. Below
  // about 2^20 multiply-adds per thread a hand-off costs more than it saves.
  const int64_t blocks = CeilDiv(n, kPackedNBlock);
  const int64_t by_work = std::max<int64_t>(1, m * k * n >> 20);
  const int64_t threads = std::min<int64_t>({pool != nullptr ? pool->num_threads() : 1,
                                             by_work, blocks});
  const int64_t per_task = CeilDiv(CeilDiv(blocks, threads), 4) * 4;
  const std::function<void(int64_t)> task = [&](int64_t i) {
    const int64_t nb0 = i * per_task;
    fn(nb0, std::min(blocks, nb0 + per_task));
  };
  const int64_t tasks = CeilDiv(blocks, per_task);
  if (pool != nullptr) {
    pool->Run(tasks, task);
  } else {
    for (int64_t i = 0; i < tasks; ++i) task(i);
  }
}

}  // namespace kernels
}  // namespace tfquant
