// CPU feature detection: what the processor supports AND the OS has enabled
// (for AVX/AVX-512 the register state must be saved by the OS, see XCR0).
// Plain C++, no TensorFlow headers. On non-x86 every x86 flag is false.

#ifndef TFQUANT_CC_OPS_KERNELS_CPU_FEATURES_H_
#define TFQUANT_CC_OPS_KERNELS_CPU_FEATURES_H_

#include <utility>
#include <vector>

namespace tfquant {
namespace kernels {

struct CpuFeatures {
  bool sse4_1 = false;
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_vnni = false;
  bool avx_vnni = false;
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
