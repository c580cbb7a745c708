#include "stream_floor.h"

namespace tfquant {
namespace kernels {

// Plain loops the compiler vectorizes; they are bound by memory, not by the
// instruction set.
void StreamCopy(const float* a, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i];
}

void StreamAdd(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace kernels
}  // namespace tfquant
