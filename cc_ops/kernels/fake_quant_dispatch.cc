// Runtime choice of the fake quantization kernel table.
//
// Every ISA-specific table must produce the same forward bits as the scalar
// one; only the order of the double dmin/dmax accumulation may differ.

#include "fake_quant_dispatch.h"

#include <cstdio>
#include <cstdlib>

#include "cpu_features.h"

namespace tfquant {
namespace kernels {

namespace {

constexpr char kEnvVar[] = "TFQUANT_KERNELS";

// A variant runs only if its code was built and the CPU and OS support every
// instruction set its file was compiled for (setup.py ISA_FLAGS).
bool Runnable(const std::string& name, const CpuFeatures& f) {
  if (name == "scalar") return true;
  if (name == "avx2") {
    return Avx2FakeQuantKernels() != nullptr && f.avx2 && f.fma && f.f16c;
  }
  if (name == "avx512") {
    return Avx512FakeQuantKernels() != nullptr && f.avx512f && f.avx512bw &&
           f.avx512vl && f.avx512dq && f.fma && f.f16c;
  }
  if (name == "neon") return NeonFakeQuantKernels() != nullptr && f.neon;
  return false;
}

const FakeQuantKernelTable* TableOf(const std::string& name) {
  if (name == "scalar") return &ScalarFakeQuantKernels();
  if (name == "avx2") return Avx2FakeQuantKernels();
  if (name == "avx512") return Avx512FakeQuantKernels();
  if (name == "neon") return NeonFakeQuantKernels();
  return nullptr;
}

std::string Join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

FakeQuantKernelChoice Choose() {
  const std::vector<std::string> supported = SupportedFakeQuantKernels();
  FakeQuantKernelChoice choice;
  choice.table = TableOf(supported.back());
  const char* env = std::getenv(kEnvVar);
  if (env == nullptr || *env == '\0') return choice;
  choice.requested = env;
  if (const FakeQuantKernelTable* t = FakeQuantKernelsNamed(env)) {
    choice.table = t;
    return choice;
  }
  const std::string name = env;
  const bool known = name == "scalar" || name == "avx2" || name == "avx512" ||
                     name == "neon";
  choice.warning = std::string(kEnvVar) + "=" + name + " is " +
                   (known ? "not supported by this CPU/OS or build"
                          : "not a kernel variant (known: scalar, avx2, "
                            "avx512, neon)") +
                   "; supported here: " + Join(supported) + ". Using " +
                   supported.back() + ".";
  std::fprintf(stderr, "tfquant: warning: %s\n", choice.warning.c_str());
  return choice;
}

}  // namespace

std::vector<std::string> SupportedFakeQuantKernels() {
  const CpuFeatures& f = GetCpuFeatures();
  std::vector<std::string> out;
  for (const char* name : {"scalar", "neon", "avx2", "avx512"}) {
    if (Runnable(name, f)) out.push_back(name);
  }
  return out;
}

const FakeQuantKernelTable* FakeQuantKernelsNamed(const std::string& name) {
  return Runnable(name, GetCpuFeatures()) ? TableOf(name) : nullptr;
}

const FakeQuantKernelChoice& FakeQuantKernelSelection() {
  static const FakeQuantKernelChoice choice = Choose();
  return choice;
}

const FakeQuantKernelTable& SelectFakeQuantKernels() {
  return *FakeQuantKernelSelection().table;
}

namespace {
// Decide when the library is loaded, so a TFQUANT_KERNELS warning shows up on
// import rather than at the first op.
const FakeQuantKernelChoice& kChoiceAtLoad = FakeQuantKernelSelection();
}  // namespace

}  // namespace kernels
}  // namespace tfquant
