// Trivial streaming kernels that move exactly the bytes a fused fake-quant
// pass moves: the benchmark's measured memory-bandwidth floor.
//   forward:  reads x, writes y           (8 bytes per element)
//   backward: reads x and dy, writes dx   (12 bytes per element)

#ifndef TFQUANT_CC_OPS_KERNELS_STREAM_FLOOR_H_
#define TFQUANT_CC_OPS_KERNELS_STREAM_FLOOR_H_

#include <cstdint>

namespace tfquant {
namespace kernels {

void StreamCopy(const float* a, int64_t n, float* out);
void StreamAdd(const float* a, const float* b, int64_t n, float* out);

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_STREAM_FLOOR_H_
