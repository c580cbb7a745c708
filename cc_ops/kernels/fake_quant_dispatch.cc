// The fake quantization tables the dispatcher chooses from (rules:
// isa_dispatch.h). Every ISA-specific table gives the same forward bits as
// the scalar one; only the order of the double dmin/dmax sums may differ.

#include "fake_quant.h"
#include "isa_dispatch.h"

namespace tfquant {
namespace kernels {

const KernelFamily<FakeQuantKernelTable>& FakeQuantFamily() {
  static const KernelFamily<FakeQuantKernelTable> family(
      {&ScalarFakeQuantKernels(), NeonFakeQuantKernels(), Avx2FakeQuantKernels(),
       Avx512FakeQuantKernels()},
      IsaSelection().level);
  return family;
}

}  // namespace kernels
}  // namespace tfquant
