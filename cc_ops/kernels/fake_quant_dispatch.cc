// Runtime choice of the fake quantization kernel table.
//
// Every ISA-specific table must produce the same forward bits as the scalar
// one; only the order of the double dmin/dmax accumulation may differ.

#include "cpu_features.h"
#include "fake_quant.h"

namespace tfquant {
namespace kernels {

namespace {

const FakeQuantKernelTable& ChooseKernels(const CpuFeatures& /*features*/) {
  // Add AVX2/AVX-512/NEON tables here, best first, gated on `features`.
  return ScalarFakeQuantKernels();
}

}  // namespace

const FakeQuantKernelTable& SelectFakeQuantKernels() {
  static const FakeQuantKernelTable& table = ChooseKernels(GetCpuFeatures());
  return table;
}

}  // namespace kernels
}  // namespace tfquant
