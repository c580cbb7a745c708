// Packing, activation quantization and runtime dispatch of the packed
// matmul kernels (format: packed.h). Compiled without ISA flags.

#include "packed.h"

#include <cstring>

namespace tfquant {
namespace kernels {

std::string CheckPackedBits(int64_t bits) {
  if (bits == 2 || bits == 4) return "";
  return "bits=" + std::to_string(bits) + " is not supported; allowed: 2, 4";
}

std::string CheckPackedDims(int64_t k, int64_t n) {
  if (k < 1 || n < 1) {
    return "weights must have K >= 1 input features and N >= 1 output "
           "channels; got K=" + std::to_string(k) + ", N=" + std::to_string(n);
  }
  // Keep int32 accumulators exact: K * 8 * 127 < 2^31.
  if (k > (int64_t{1} << 20)) {
    return "K=" + std::to_string(k) + " is too large; at most 1048576";
  }
  return "";
}

std::string CheckGroupSize(int64_t group_size, int64_t k) {
  if (group_size == 0) return "";
  if (group_size != 32 && group_size != 64 && group_size != 128) {
    return "group_size=" + std::to_string(group_size) +
           " is not supported; allowed: 0 (per channel), 32, 64, 128";
  }
  if (k % group_size != 0) {
    return "K=" + std::to_string(k) + " is not a multiple of group_size=" +
           std::to_string(group_size);
  }
  return "";
}

namespace {
inline int64_t ByteIndex(int64_t k, int64_t n, int64_t kblocks, int bits,
                         int* shift) {
  const int64_t kb_len = PackedKBlock(bits);
  const int64_t kk = k % kb_len;
  *shift = static_cast<int>(kk / 4) * bits;
  return ((n / kPackedNBlock) * kblocks + k / kb_len) * kPackedTileBytes +
         (n % kPackedNBlock) * 4 + kk % 4;
}
}  // namespace

std::string PackWeights(const int8_t* q, int64_t k, int64_t n, int bits,
                        uint8_t* out) {
  const int offset = 1 << (bits - 1);
  const int lo = -offset, hi = offset - 1;
  for (int64_t i = 0; i < k * n; ++i) {
    if (q[i] < lo || q[i] > hi) {
      return "value " + std::to_string(static_cast<int>(q[i])) + " at [" +
             std::to_string(i / n) + ", " + std::to_string(i % n) +
             "] does not fit in " + std::to_string(bits) + " bits (allowed " +
             std::to_string(lo) + ".." + std::to_string(hi) + ")";
    }
  }
  const int64_t kblocks = PackedKPad(k, bits) / PackedKBlock(bits);
  const int64_t total = PackedBytes(k, n, bits);
  // Every field starts at u = offset (q = 0), padding included.
  uint8_t fill = 0;
  for (int s = 0; s < 8 / bits; ++s) fill |= offset << (s * bits);
  std::memset(out, fill, total);
  const uint8_t mask = static_cast<uint8_t>((1 << bits) - 1);
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t nn = 0; nn < n; ++nn) {
      int shift = 0;
      const int64_t b = ByteIndex(kk, nn, kblocks, bits, &shift);
      const uint8_t u = static_cast<uint8_t>(q[kk * n + nn] + offset);
      out[b] = static_cast<uint8_t>((out[b] & ~(mask << shift)) | (u << shift));
    }
  }
  return "";
}

void UnpackWeights(const uint8_t* packed, int64_t k, int64_t n, int bits,
                   int8_t* q) {
  const int offset = 1 << (bits - 1);
  const int64_t kblocks = PackedKPad(k, bits) / PackedKBlock(bits);
  const int mask = (1 << bits) - 1;
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t nn = 0; nn < n; ++nn) {
      int shift = 0;
      const int64_t b = ByteIndex(kk, nn, kblocks, bits, &shift);
      q[kk * n + nn] = static_cast<int8_t>(((packed[b] >> shift) & mask) - offset);
    }
  }
}

void QuantizeRows(const float* x, int64_t k, int64_t kpad, int64_t group_k,
                  int64_t num_groups, int64_t m0, int64_t m1, int8_t* xq,
                  float* xs, int32_t* xsum) {
  PackedFamily().selected().quantize_rows(x, k, kpad, group_k, num_groups, m0, m1,
                                      xq, xs, xsum);
}

std::string CheckPackedMatmul(int64_t k, int64_t n, int64_t bits,
                              int64_t group_size, int64_t packed_bytes,
                              const std::vector<int64_t>& scales_dims,
                              int64_t bias_elems) {
  std::string e = CheckPackedBits(bits);
  if (e.empty()) e = CheckPackedDims(k, n);
  if (e.empty()) e = CheckGroupSize(group_size, k);
  if (!e.empty()) return e;
  const int64_t want = PackedBytes(k, n, static_cast<int>(bits));
  if (packed_bytes != want) {
    return "packed weights have " + std::to_string(packed_bytes) +
           " bytes, but K=" + std::to_string(k) + ", N=" + std::to_string(n) +
           " at " + std::to_string(bits) + " bits need " + std::to_string(want) +
           " (check bits, n and the last dimension of x)";
  }
  const int64_t groups = group_size == 0 ? 1 : k / group_size;
  auto dims = [&]() {
    std::string s = "[";
    for (size_t i = 0; i < scales_dims.size(); ++i)
      s += (i ? ", " : "") + std::to_string(scales_dims[i]);
    return s + "]";
  };
  const bool ok =
      (scales_dims.size() == 2 && scales_dims[0] == groups && scales_dims[1] == n) ||
      (groups == 1 && scales_dims.size() == 1 && scales_dims[0] == n);
  if (!ok) {
    return "scales has shape " + dims() + " but must be [" +
           (groups == 1 ? std::to_string(n) + "] or [1, " : std::to_string(groups) + ", ") +
           std::to_string(n) + "] (K=" + std::to_string(k) + ", N=" +
           std::to_string(n) + ", group_size=" + std::to_string(group_size) + ")";
  }
  if (bias_elems >= 0 && bias_elems != n) {
    return "bias has " + std::to_string(bias_elems) + " elements but N=" +
           std::to_string(n);
  }
  return "";
}

PackedMatmulArgs MakePackedMatmulArgs(int64_t m, int64_t k, int64_t n,
                                      int bits, int64_t group_size) {
  PackedMatmulArgs a;
  a.m = m;
  a.n = n;
  a.k = k;
  a.bits = bits;
  a.kpad = PackedKPad(k, bits);
  a.group_k = group_size == 0 ? a.kpad : group_size;
  a.num_groups = group_size == 0 ? 1 : k / group_size;
  return a;
}

const KernelFamily<PackedKernelTable>& PackedFamily() {
  static const KernelFamily<PackedKernelTable> family(
      {&ScalarPackedKernels(), Avx2PackedKernels(), Avx512VnniPackedKernels()},
      PackedIsaSelection().level);
  return family;
}

}  // namespace kernels
}  // namespace tfquant
