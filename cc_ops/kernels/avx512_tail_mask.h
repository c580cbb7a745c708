// The mask of the first min(remaining, 16) lanes, for the tails of the
// AVX-512 kernels. Include only from files built with AVX-512 flags. Internal
// linkage, so that every such file keeps a copy built with its own flags.

#ifndef TFQUANT_CC_OPS_KERNELS_AVX512_TAIL_MASK_H_
#define TFQUANT_CC_OPS_KERNELS_AVX512_TAIL_MASK_H_

#include <immintrin.h>

#include <cstdint>

namespace tfquant {
namespace kernels {

static inline __mmask16 TailMask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_AVX512_TAIL_MASK_H_
