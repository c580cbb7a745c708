// CPU feature detection: what the processor supports AND the OS has enabled
// (for AVX/AVX-512 the register state must be saved by the OS, see XCR0).
// Plain C++, no TensorFlow headers. On non-x86 every x86 flag is false.
// Which kernels run is decided from these in isa_dispatch.h.

#ifndef TFQUANT_CC_OPS_KERNELS_CPU_FEATURES_H_
#define TFQUANT_CC_OPS_KERNELS_CPU_FEATURES_H_

#include <utility>
#include <vector>

namespace tfquant {
namespace kernels {

struct CpuFeatures {
  bool sse4_1 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_vnni = false, avx_vnni = false;
  bool neon = false;
};

// Detected once, then cached.
const CpuFeatures& GetCpuFeatures();

// (name, supported) for every field, names as in Linux /proc/cpuinfo.
std::vector<std::pair<const char*, bool>> ListCpuFeatures(
    const CpuFeatures& features);

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_CPU_FEATURES_H_
