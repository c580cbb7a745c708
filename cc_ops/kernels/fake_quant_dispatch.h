// Choosing a fake quantization kernel table: by CPU support, by the
// TFQUANT_KERNELS environment variable, or by name (tests run every variant
// supported here against the scalar one in one process).

#ifndef TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_DISPATCH_H_
#define TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_DISPATCH_H_

#include <string>
#include <vector>

#include "fake_quant.h"

namespace tfquant {
namespace kernels {

// Variants built into this library and runnable on this CPU and OS, worst
// first ("scalar" always, then e.g. "avx2", "avx512").
std::vector<std::string> SupportedFakeQuantKernels();

// The table named `name` if it is supported here, else nullptr.
const FakeQuantKernelTable* FakeQuantKernelsNamed(const std::string& name);

// What SelectFakeQuantKernels() decided: the best supported variant, or the
// one TFQUANT_KERNELS names. `warning` is empty unless TFQUANT_KERNELS asked
// for something unknown or unsupported (then the best supported one is used
// and the warning, also printed once to stderr, says which are supported).
struct FakeQuantKernelChoice {
  const FakeQuantKernelTable* table = nullptr;
  std::string requested;  // TFQUANT_KERNELS, or "" when unset
  std::string warning;
};
const FakeQuantKernelChoice& FakeQuantKernelSelection();

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_DISPATCH_H_
