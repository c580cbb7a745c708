// The ISA levels, what each needs from the CPU and OS, and the environment
// override (contract: isa_dispatch.h). Compiled without ISA flags.

#include "isa_dispatch.h"

#include <cstdio>
#include <cstdlib>

#include "cpu_features.h"

namespace tfquant {
namespace kernels {

namespace {

constexpr IsaLevel kAllLevels[] = {IsaLevel::kScalar, IsaLevel::kNeon,
                                   IsaLevel::kAvx2, IsaLevel::kAvx512,
                                   IsaLevel::kAvx512Vnni};
constexpr const char* kNames[] = {"scalar", "neon", "avx2", "avx512",
                                  "avx512vnni"};

// Mirrors setup.py ISA_FLAGS: a level runs only if every flag its files are
// compiled with is usable (cpu_features.h has already folded in XCR0).
bool Runs(IsaLevel level, const CpuFeatures& f) {
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  const bool avx512 =
      avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  switch (level) {
    case IsaLevel::kScalar:
      return true;
    case IsaLevel::kNeon:
      return f.neon;
    case IsaLevel::kAvx2:
      return avx2;
    case IsaLevel::kAvx512:
      return avx512;
    case IsaLevel::kAvx512Vnni:
      return avx512 && f.avx512_vnni;
  }
  return false;
}

// ", "-joined names of every level, or of the runnable ones.
std::string LevelNames(bool runnable_only) {
  std::string out;
  for (IsaLevel level : kAllLevels) {
    if (runnable_only && !IsaRuns(level)) continue;
    out += std::string(out.empty() ? "" : ", ") + IsaName(level);
  }
  return out;
}

// The choice for `value` of variable `var` (nullptr or "": unset).
IsaChoice ChooseIsa(const char* var, const char* value) {
  IsaChoice choice;
  for (IsaLevel level : kAllLevels) {
    if (IsaRuns(level)) choice.level = level;  // the best, unless overridden
  }
  if (value == nullptr || *value == '\0') return choice;
  choice.requested = value;
  if (choice.requested == "auto") return choice;
  std::string reason =
      "is not an ISA level (known: " + LevelNames(false) + ", auto)";
  for (IsaLevel level : kAllLevels) {
    if (choice.requested != IsaName(level)) continue;
    if (IsaRuns(level)) {
      choice.level = level;
      return choice;
    }
    reason = "is not supported by this CPU/OS";
  }
  choice.warning = std::string(var) + "=" + choice.requested + " " + reason +
                   "; supported here: " + LevelNames(true) + ". Using " +
                   IsaName(choice.level) + ".";
  return choice;
}

IsaChoice ChooseAndWarn(const char* var) {
  IsaChoice choice = ChooseIsa(var, std::getenv(var));
  if (!choice.warning.empty()) {
    std::fprintf(stderr, "tfquant: warning: %s\n", choice.warning.c_str());
  }
  return choice;
}

}  // namespace

const char* IsaName(IsaLevel level) {
  return kNames[static_cast<int>(level)];
}

bool IsaRuns(IsaLevel level) { return Runs(level, GetCpuFeatures()); }

std::vector<std::string> RunnableIsaLevels() {
  std::vector<std::string> names;
  for (IsaLevel level : kAllLevels) {
    if (IsaRuns(level)) names.push_back(IsaName(level));
  }
  return names;
}

const IsaChoice& IsaSelection() {
  static const IsaChoice choice = ChooseAndWarn("TFQUANT_KERNELS");
  return choice;
}

const IsaChoice& PackedIsaSelection() {
  static const IsaChoice legacy = ChooseAndWarn("TFQUANT_PACKED_KERNELS");
  return legacy.requested.empty() ? IsaSelection() : legacy;
}

namespace {
// Decided when the library is loaded, so that a warning shows on import
// rather than at the first op.
const IsaChoice& kKernelsAtLoad = IsaSelection();
const IsaChoice& kPackedAtLoad = PackedIsaSelection();
}  // namespace

}  // namespace kernels
}  // namespace tfquant
