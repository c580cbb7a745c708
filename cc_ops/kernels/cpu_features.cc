#include "cpu_features.h"

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#define TFQUANT_X86 1
#include <cpuid.h>
#endif

namespace tfquant {
namespace kernels {

namespace {

#if defined(TFQUANT_X86)

bool Bit(uint32_t reg, int bit) { return (reg >> bit) & 1u; }

// XCR0 via xgetbv; only valid when CPUID reports OSXSAVE. Inline asm keeps
// this file free of -mxsave.
uint64_t ReadXcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures DetectCpuFeatures() {
  CpuFeatures f;
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return f;
  const unsigned int max_leaf = eax;

  __cpuid(1, eax, ebx, ecx, edx);
  const uint32_t leaf1_ecx = ecx;
  f.sse4_1 = Bit(leaf1_ecx, 19);

  // The OS must save XMM+YMM state (XCR0 bits 1, 2) for AVX, and also the
  // opmask/ZMM state (bits 5, 6, 7) for AVX-512.
  const bool osxsave = Bit(leaf1_ecx, 27);
  const uint64_t xcr0 = osxsave ? ReadXcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;

  f.avx = os_avx && Bit(leaf1_ecx, 28);
  f.fma = f.avx && Bit(leaf1_ecx, 12);
  f.f16c = f.avx && Bit(leaf1_ecx, 29);

  if (max_leaf >= 7) {
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    const uint32_t max_subleaf = eax, leaf7_ebx = ebx, leaf7_ecx = ecx;
    f.avx2 = f.avx && Bit(leaf7_ebx, 5);
    f.avx512f = os_avx512 && Bit(leaf7_ebx, 16);
    f.avx512dq = f.avx512f && Bit(leaf7_ebx, 17);
    f.avx512bw = f.avx512f && Bit(leaf7_ebx, 30);
    f.avx512vl = f.avx512f && Bit(leaf7_ebx, 31);
    f.avx512_vnni = f.avx512f && Bit(leaf7_ecx, 11);
    if (max_subleaf >= 1) {
      __cpuid_count(7, 1, eax, ebx, ecx, edx);
      f.avx_vnni = f.avx && Bit(eax, 4);
    }
  }
  return f;
}

#else  // not x86

CpuFeatures DetectCpuFeatures() {
  CpuFeatures f;
#if defined(__aarch64__) || defined(__ARM_NEON)
  f.neon = true;  // mandatory on AArch64; compiled-in on 32-bit ARM
#endif
  return f;
}

#endif

}  // namespace

const CpuFeatures& GetCpuFeatures() {
  static const CpuFeatures features = DetectCpuFeatures();
  return features;
}

std::vector<std::pair<const char*, bool>> ListCpuFeatures(
    const CpuFeatures& f) {
  return {
      {"sse4_1", f.sse4_1},       {"avx", f.avx},
      {"avx2", f.avx2},           {"fma", f.fma},
      {"f16c", f.f16c},           {"avx512f", f.avx512f},
      {"avx512bw", f.avx512bw},   {"avx512vl", f.avx512vl},
      {"avx512dq", f.avx512dq},   {"avx512_vnni", f.avx512_vnni},
      {"avx_vnni", f.avx_vnni},   {"neon", f.neon},
  };
}

}  // namespace kernels
}  // namespace tfquant
