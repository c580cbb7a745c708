// Packed signed 4-bit and 2-bit weights and the packed matmul kernels.
// Plain C++ on raw pointers: no TensorFlow or Eigen header.
//
// ---------------------------------------------------------------- format
// A weight matrix W[K, N] (K = input features, N = output channels, the
// layout of a Keras Dense kernel) holds signed integers q with
//   bits = 4:  q in [-8, 7]      bits = 2:  q in [-2, 1]
// (a symmetric narrow-range quantizer uses [-7, 7] and [-1, 1]).
// Real weights are  w[k, n] = q[k, n] * scale[g(k), n]  with one scale per
// output channel (scales [1, N] or [N]) or per group of `group_size`
// consecutive k (group_size in {32, 64, 128}, K % group_size == 0; scales
// [K / group_size, N]). Scales are a separate float tensor, not in the pack.
//
// Each q is stored in offset binary, u = q + 2^(bits-1) (u in [0, 15] or
// [0, 3]), so the unsigned operand of vpdpbusd / vpmaddubsw is the weight and
// the signed one the int8 activation; the kernels subtract
// 2^(bits-1) * sum(x) per group.
//
// The pack is a sequence of 64-byte tiles. A tile covers 16 output channels
// (one column block, kNBlock) and kKBlock(bits) = 32 / bits consecutive k
// (8 for 4-bit, 16 for 2-bit): byte j (0..63) of the tile, field s
// (bits [s*bits, (s+1)*bits) of the byte, s = 0 .. 8/bits - 1) holds
//   u[k0 + 4*s + (j % 4), n0 + j / 4].
// So one 64-byte load, shifted right by s*bits (16-bit lanes) and masked,
// gives the 16x4 bytes of one vpdpbusd (16 int32 lanes, one per channel,
// each the dot product of 4 consecutive k). On AVX2 the two 32-byte halves
// are channels n0..n0+7 and n0+8..n0+15.
// Tiles are ordered column block major:
//   tile(nb, kb) at byte offset (nb * KBlocks + kb) * 64,
//   KBlocks = ceil(K / kKBlock), NBlocks = ceil(N / 16),
// so a GEMV streams one column block contiguously. Padding (k >= K or
// n >= N) holds q = 0. Total size: NBlocks * KBlocks * 64 bytes
// = Npad * Kpad * bits / 8.
//
// ---------------------------------------------------------------- matmul
// y[m, n] = xs[m] * sum_g float(acc[m, g, n]) * scale[g, n]  (+ bias[n])
//   acc[m, g, n] = sum_{k in g} xq[m, k] * q[k, n]         (int32, exact)
// with dynamic per-row symmetric int8 activations:
//   xs[m] = max_k |x[m, k]| / 127 (1 if the row is all zero),
//   xq[m, k] = round_half_even(x[m, k] / xs[m]) in [-127, 127].
// The float epilogue is the same sequence of IEEE operations (no FMA) in
// every kernel variant, so all variants give bit-identical y.

#ifndef TFQUANT_CC_OPS_KERNELS_PACKED_H_
#define TFQUANT_CC_OPS_KERNELS_PACKED_H_

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "isa_dispatch.h"

namespace tfquant {
namespace kernels {

constexpr int64_t kPackedNBlock = 16;
constexpr int64_t kPackedTileBytes = 64;

inline int64_t PackedKBlock(int bits) { return 32 / bits; }
inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t PackedKPad(int64_t k, int bits) {
  return CeilDiv(k, PackedKBlock(bits)) * PackedKBlock(bits);
}
inline int64_t PackedNPad(int64_t n) {
  return CeilDiv(n, kPackedNBlock) * kPackedNBlock;
}
inline int64_t PackedBytes(int64_t k, int64_t n, int bits) {
  return PackedNPad(n) * PackedKPad(k, bits) * bits / 8;
}

// "" if valid, else a message naming the bad argument.
std::string CheckPackedBits(int64_t bits);
std::string CheckPackedDims(int64_t k, int64_t n);
// group_size 0 means per output channel.
std::string CheckGroupSize(int64_t group_size, int64_t k);

// q: [K, N] row-major int8. Returns "" or an error (a value out of range:
// its index and value); out must hold PackedBytes(k, n, bits) bytes.
std::string PackWeights(const int8_t* q, int64_t k, int64_t n, int bits,
                        uint8_t* out);
// The inverse: packed -> q [K, N].
void UnpackWeights(const uint8_t* packed, int64_t k, int64_t n, int bits,
                   int8_t* q);

// Dynamic int8 quantization of rows [m0, m1) of x [M, K] into xq [M, kpad]
// (zero padded), xs [M] and xsum [M, num_groups] (sum of xq per group of
// group_k elements). Runs the quantize_rows of PackedFamily().selected();
// every variant gives the same bits as the scalar one.
void QuantizeRows(const float* x, int64_t k, int64_t kpad, int64_t group_k,
                  int64_t num_groups, int64_t m0, int64_t m1, int8_t* xq,
                  float* xs, int32_t* xsum);
using QuantizeRowsFn = void (*)(const float* x, int64_t k, int64_t kpad,
                                int64_t group_k, int64_t num_groups,
                                int64_t m0, int64_t m1, int8_t* xq, float* xs,
                                int32_t* xsum);

// The row scale and one quantized activation of QuantizeRows, shared by the
// scalar code and the SIMD tails so that they cannot drift apart.
inline float ActivationScale(float amax) {
  // amax is never NaN (NaN never wins the max); inf or 0 give scale 1.
  return (amax > 0.0f && std::isfinite(amax)) ? amax / 127.0f : 1.0f;
}
inline int8_t QuantizeActivation(float x, float scale) {
  float v = std::nearbyint(x / scale);
  v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
  return v == v ? static_cast<int8_t>(v) : 0;  // NaN -> 0
}

struct PackedMatmulArgs {
  const int8_t* xq = nullptr;    // [M, kpad]
  const float* xs = nullptr;     // [M]
  const int32_t* xsum = nullptr; // [M, num_groups]
  const uint8_t* packed = nullptr;
  const float* scales = nullptr;  // [num_groups, N]
  const float* bias = nullptr;    // [N] or nullptr
  float* y = nullptr;             // [M, N]
  int64_t m = 0, n = 0, k = 0, kpad = 0;
  int64_t group_k = 0;  // elements per group (kpad when per channel)
  int64_t num_groups = 1;
  int bits = 4;
};

// Computes y rows [m0, m1), column blocks [nb0, nb1).
using PackedMatmulFn = void (*)(const PackedMatmulArgs& a, int64_t m0,
                                int64_t m1, int64_t nb0, int64_t nb1);

struct PackedKernelTable {
  IsaLevel isa;
  PackedMatmulFn matmul;
  QuantizeRowsFn quantize_rows;
};

const PackedKernelTable& ScalarPackedKernels();
const PackedKernelTable* Avx2PackedKernels();        // nullptr if not built
const PackedKernelTable* Avx512VnniPackedKernels();  // nullptr if not built

// The tables above and the one the ops and the delegate use by default (rules
// in isa_dispatch.h): selected(), names() ("scalar", "avx2", "avx512vnni"),
// named().
const KernelFamily<PackedKernelTable>& PackedFamily();

// Checks every argument of a packed matmul; "" if valid. scales_dims: the
// shape of scales ([N] or [1, N] per channel, [K / group_size, N] grouped);
// bias_elems < 0: no bias.
std::string CheckPackedMatmul(int64_t k, int64_t n, int64_t bits,
                              int64_t group_size, int64_t packed_bytes,
                              const std::vector<int64_t>& scales_dims,
                              int64_t bias_elems);

// Arguments for x [m, k] (buffers left null); the caller allocates
// xq [m * kpad], xs [m], xsum [m * num_groups].
PackedMatmulArgs MakePackedMatmulArgs(int64_t m, int64_t k, int64_t n,
                                      int bits, int64_t group_size);

// Shared epilogue helper for the scalar kernel and the SIMD tails.
inline float PackedEpilogue(float acc_sum, float xs, const float* bias,
                            int64_t n) {
  const float v = acc_sum * xs;
  return bias != nullptr ? v + bias[n] : v;
}

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_PACKED_H_
