// The one ISA dispatcher of every kernel family (fake quant, packed matmul,
// the int8 FULLY_CONNECTED epilogue). Plain C++, no TensorFlow headers.
//
// 1. The machine: the best IsaLevel the CPU has and the OS saves the
//    registers of (cpuid + XCR0, cpu_features.h).
// 2. The override: TFQUANT_KERNELS=<level> caps that level, e.g. "scalar"
//    runs the reference kernels everywhere. A value that is not a level, or
//    one the machine cannot run, is ignored with one warning on stderr.
//    TFQUANT_PACKED_KERNELS, the older name, still caps the packed kernels
//    alone and wins over TFQUANT_KERNELS for them.
// 3. Each family takes its table of the highest level at or below the cap
//    that it has (packed has no plain avx512 table: avx512 gives avx2).

#ifndef TFQUANT_CC_OPS_KERNELS_ISA_DISPATCH_H_
#define TFQUANT_CC_OPS_KERNELS_ISA_DISPATCH_H_

#include <string>
#include <utility>
#include <vector>

namespace tfquant {
namespace kernels {

// In dispatch order. A machine runs a prefix of its architecture's levels:
// x86 scalar < avx2 < avx512 < avx512vnni, ARM scalar < neon. Each level
// needs every flag setup.py's ISA_FLAGS gives the files of that level.
enum class IsaLevel { kScalar, kNeon, kAvx2, kAvx512, kAvx512Vnni };

const char* IsaName(IsaLevel level);  // "scalar", "neon", "avx2", ...
bool IsaRuns(IsaLevel level);         // on this CPU and OS
std::vector<std::string> RunnableIsaLevels();  // worst first

// What the override decided, once per loaded library and variable.
struct IsaChoice {
  IsaLevel level = IsaLevel::kScalar;  // the cap the kernel families use
  std::string requested;               // the variable's value; "" if unset
  std::string warning;                 // "" unless the value was ignored
};
const IsaChoice& IsaSelection();        // TFQUANT_KERNELS
const IsaChoice& PackedIsaSelection();  // TFQUANT_PACKED_KERNELS, else the above

// The tables of one kernel family and the one the dispatcher picked.
// `tables`: in IsaLevel order, nullptr where this build lacks the code; a
// Table has an IsaLevel `isa`.
template <typename Table>
class KernelFamily {
 public:
  KernelFamily(std::vector<const Table*> tables, IsaLevel cap)
      : tables_(std::move(tables)) {
    for (const Table* t : tables_) {
      if (Runs(t) && t->isa <= cap) selected_ = t;
    }
  }

  // The best runnable table at or below the cap (scalar always runs).
  const Table& selected() const { return *selected_; }

  // Names of the runnable tables, worst first.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const Table* t : tables_) {
      if (Runs(t)) out.push_back(IsaName(t->isa));
    }
    return out;
  }

  // The runnable table `name` names, else nullptr.
  const Table* named(const std::string& name) const {
    for (const Table* t : tables_) {
      if (Runs(t) && name == IsaName(t->isa)) return t;
    }
    return nullptr;
  }

 private:
  static bool Runs(const Table* t) { return t != nullptr && IsaRuns(t->isa); }

  std::vector<const Table*> tables_;
  const Table* selected_ = nullptr;
};

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_ISA_DISPATCH_H_
