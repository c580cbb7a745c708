// tfquant._native: CPU features, build information and numpy entry points to
// the same plain C++ kernels the TensorFlow ops run. No TensorFlow headers.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional axis

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cc_ops/kernels/cpu_features.h"
#include "cc_ops/kernels/fake_quant.h"
#include "cc_ops/kernels/fake_quant_plan.h"
#include "cc_ops/kernels/isa_dispatch.h"
#include "cc_ops/kernels/packed.h"
#include "cc_ops/kernels/packed_int8_fc.h"
#include "cc_ops/kernels/seer_conv.h"

// setup.py passes these; the fallbacks only keep other builds compiling.
#ifndef TFQUANT_TF_VERSION
#define TFQUANT_TF_VERSION "unknown"
#endif
#ifndef TFQUANT_BUILD_FLAGS
#define TFQUANT_BUILD_FLAGS "unknown"
#endif

namespace py = pybind11;
namespace k = tfquant::kernels;

namespace {

using FloatArray =
    py::array_t<float, py::array::c_style | py::array::forcecast>;

std::vector<py::ssize_t> ShapeOf(const FloatArray& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

std::string RanksOf(const FloatArray& min, const FloatArray& max) {
  return "got min of rank " + std::to_string(min.ndim()) + " and max of rank " +
         std::to_string(max.ndim());
}

py::dict CpuFeaturesDict() {
  py::dict out;
  for (const auto& [name, supported] :
       k::ListCpuFeatures(k::GetCpuFeatures())) {
    out[name] = supported;
  }
  return out;
}

py::dict BuildInfo() {
  py::dict out;
  out["tf_version"] = TFQUANT_TF_VERSION;
#if defined(__clang__)
  out["compiler"] = std::string("clang ") + __VERSION__;
#elif defined(__GNUC__)
  out["compiler"] = std::string("gcc ") + __VERSION__;
#else
  out["compiler"] = "unknown";
#endif
#if defined(_GLIBCXX_USE_CXX11_ABI)
  out["glibcxx_use_cxx11_abi"] = static_cast<int>(_GLIBCXX_USE_CXX11_ABI);
#else
  out["glibcxx_use_cxx11_abi"] = py::none();
#endif
  out["cxx_standard"] = static_cast<long>(__cplusplus);  // 201703 = C++17
  out["flags"] = TFQUANT_BUILD_FLAGS;
  out["kernels"] = k::IsaName(k::FakeQuantFamily().selected().isa);
  out["kernel_variants"] = k::FakeQuantFamily().names();
  out["kernels_requested"] = k::IsaSelection().requested;
  out["kernels_warning"] = k::IsaSelection().warning;
  out["isa_level"] = k::IsaName(k::IsaSelection().level);
  out["isa_levels"] = k::RunnableIsaLevels();
  return out;
}

std::string Join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// The table of `family` that `variant` names (None: the one chosen at load);
// ValueError if it cannot run here. `what`: the family in the message.
template <typename Table>
const Table& TableNamed(const k::KernelFamily<Table>& family,
                        const std::optional<std::string>& variant,
                        const std::string& what) {
  if (!variant.has_value()) return family.selected();
  const Table* table = family.named(*variant);
  if (table == nullptr) {
    throw py::value_error(what + "kernel variant '" + *variant +
                          "' is not supported here; supported: " + Join(family.names()));
  }
  return *table;
}

const k::FakeQuantKernelTable& KernelsFor(const std::optional<std::string>& variant) {
  return TableNamed(k::FakeQuantFamily(), variant, "");
}

struct PreparedCall {
  k::FakeQuantShape shape;
  std::vector<k::NudgedRange> ranges;
};

// Same checks and messages as the TF op; raises ValueError.
PreparedCall Prepare(const FloatArray& x, const FloatArray& min,
                     const FloatArray& max, int num_bits, bool narrow_range,
                     std::optional<int64_t> axis) {
  std::string error = k::CheckNumBits(num_bits);
  const int want_rank = axis.has_value() ? 1 : 0;
  if (error.empty() && (min.ndim() != want_rank || max.ndim() != want_rank)) {
    error = axis.has_value()
                ? "axis=" + std::to_string(*axis) +
                      " means per-channel: min and max must be 1-D; "
                : std::string("axis=None means per-tensor: min and max must "
                              "be scalars; ");
    error += RanksOf(min, max);
  }
  PreparedCall call;
  if (error.empty()) {
    const std::vector<int64_t> dims(x.shape(), x.shape() + x.ndim());
    error = k::ResolveFakeQuantShape(
        dims.data(), static_cast<int>(x.ndim()), static_cast<int>(min.ndim()),
        min.size(), static_cast<int>(max.ndim()), max.size(), axis.value_or(-1),
        &call.shape);
  }
  if (error.empty()) {
    error = k::CheckRangeValues(min.data(), max.data(), min.size(),
                                call.shape.per_channel);
  }
  if (!error.empty()) throw py::value_error(error);
  call.ranges = k::NudgeRanges(min.data(), max.data(), min.size(), num_bits,
                               narrow_range);
  return call;
}

FloatArray FakeQuantReference(const FloatArray& x, const FloatArray& min,
                              const FloatArray& max, int num_bits,
                              bool narrow_range, std::optional<int64_t> axis,
                              const std::optional<std::string>& variant) {
  const k::FakeQuantKernelTable& kernels = KernelsFor(variant);
  const PreparedCall call = Prepare(x, min, max, num_bits, narrow_range, axis);
  FloatArray y(ShapeOf(x));
  {
    py::gil_scoped_release release;
    const k::FakeQuantPlan plan(call.shape, kernels);
    plan.Forward(x.data(), call.ranges.data(), y.mutable_data(),
                 k::RunTilesSerially);
  }
  return y;
}

py::tuple FakeQuantGradReference(const FloatArray& dy, const FloatArray& x,
                                 const FloatArray& min, const FloatArray& max,
                                 int num_bits, bool narrow_range,
                                 std::optional<int64_t> axis,
                                 const std::string& range_gradient,
                                 const std::optional<std::string>& variant) {
  const k::FakeQuantKernelTable& kernels = KernelsFor(variant);
  if (ShapeOf(dy) != ShapeOf(x)) {
    throw py::value_error("gradients and inputs must have the same shape");
  }
  k::RangeGradient mode;
  const std::string mode_error = k::ParseRangeGradient(range_gradient, &mode);
  if (!mode_error.empty()) throw py::value_error(mode_error);
  const PreparedCall call = Prepare(x, min, max, num_bits, narrow_range, axis);
  FloatArray dx(ShapeOf(x));
  FloatArray dmin(ShapeOf(min));
  FloatArray dmax(ShapeOf(max));
  {
    py::gil_scoped_release release;
    const k::FakeQuantPlan plan(call.shape, kernels);
    plan.Backward(dy.data(), x.data(), call.ranges.data(), mode,
                  dx.mutable_data(),
                  dmin.mutable_data(), dmax.mutable_data(),
                  k::RunTilesSerially);
  }
  return py::make_tuple(dx, dmin, dmax);
}

// ------------------------------------------------------- packed weights

using Int8Array = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;
using UInt8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

void Check(const std::string& error) {
  if (!error.empty()) throw py::value_error(error);
}

// Cell Division's cells of int8 weights (packed_int8_fc.h), for tests and for users who
// store the cells themselves: q == sum_i 2^(cell_bits * i) * cells[i] + offset.
py::tuple DivideIntoCellsPy(const py::array& q_in, int cell_bits, std::optional<int> cells) {
  if (!py::dtype::of<int8_t>().is(q_in.dtype())) {
    throw py::value_error("q must be an int8 array; got dtype " +
                          std::string(py::str(q_in.dtype())));
  }
  Check(k::CheckPackedBits(cell_bits));
  const Int8Array q(q_in);
  const int64_t count = static_cast<int64_t>(q.size());
  const int n = cells.has_value() ? *cells : k::CellsNeeded(q.data(), count, cell_bits);
  if (n < 1 || n > k::kMaxCells) {
    throw py::value_error("cells=" + std::to_string(n) + " is not allowed; 1.." +
                          std::to_string(k::kMaxCells));
  }
  std::vector<py::ssize_t> shape = {n};
  shape.insert(shape.end(), q.shape(), q.shape() + q.ndim());
  Int8Array out(shape);
  int32_t offset = 0;
  Check(k::DivideIntoCells(q.data(), count, cell_bits, n, out.mutable_data(), &offset));
  return py::make_tuple(out, offset);
}

UInt8Array PackWeightsPy(const py::array& q_in, int bits) {
  Check(k::CheckPackedBits(bits));
  if (q_in.ndim() != 2) {
    throw py::value_error("q must be 2-D [K, N]; got rank " +
                          std::to_string(q_in.ndim()));
  }
  // Range check before the int8 cast, so 200 is not silently wrapped.
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> wide(q_in);
  const int64_t kk = wide.shape(0), n = wide.shape(1);
  Check(k::CheckPackedDims(kk, n));
  const int64_t lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  std::vector<int8_t> q(kk * n);
  for (int64_t i = 0; i < kk * n; ++i) {
    const int64_t v = wide.data()[i];
    if (v < lo || v > hi) {
      throw py::value_error("value " + std::to_string(v) + " at [" +
                            std::to_string(i / n) + ", " + std::to_string(i % n) +
                            "] does not fit in " + std::to_string(bits) +
                            " bits (allowed " + std::to_string(lo) + ".." +
                            std::to_string(hi) + ")");
    }
    q[i] = static_cast<int8_t>(v);
  }
  UInt8Array out(k::PackedBytes(kk, n, bits));
  Check(k::PackWeights(q.data(), kk, n, bits, out.mutable_data()));
  return out;
}

Int8Array UnpackWeightsPy(const UInt8Array& packed, int bits, int64_t kk,
                          int64_t n) {
  Check(k::CheckPackedBits(bits));
  Check(k::CheckPackedDims(kk, n));
  if (packed.size() != k::PackedBytes(kk, n, bits)) {
    throw py::value_error("packed has " + std::to_string(packed.size()) +
                          " bytes, but K=" + std::to_string(kk) + ", N=" +
                          std::to_string(n) + " at " + std::to_string(bits) +
                          " bits need " +
                          std::to_string(k::PackedBytes(kk, n, bits)));
  }
  Int8Array q({kk, n});
  k::UnpackWeights(packed.data(), kk, n, bits, q.mutable_data());
  return q;
}

FloatArray PackedMatmulPy(const FloatArray& x, const UInt8Array& packed,
                          const FloatArray& scales,
                          const std::optional<FloatArray>& bias, int bits,
                          int64_t n, int64_t group_size,
                          const std::optional<std::string>& variant) {
  const k::PackedKernelTable* table = &TableNamed(k::PackedFamily(), variant, "packed ");
  if (x.ndim() != 2) throw py::value_error("x must be 2-D [M, K]");
  const int64_t m = x.shape(0), kk = x.shape(1);
  Check(k::CheckPackedMatmul(kk, n, bits, group_size, packed.size(),
                             std::vector<int64_t>(scales.shape(), scales.shape() + scales.ndim()),
                             bias.has_value() ? bias->size() : -1));
  k::PackedMatmulArgs a = k::MakePackedMatmulArgs(m, kk, n, bits, group_size);
  std::vector<int8_t> xq(m * a.kpad);
  std::vector<float> xs(m);
  std::vector<int32_t> xsum(m * a.num_groups);
  FloatArray y({m, n});
  {
    py::gil_scoped_release release;
    table->quantize_rows(x.data(), kk, a.kpad, a.group_k, a.num_groups, 0, m,
                         xq.data(), xs.data(), xsum.data());
    a.xq = xq.data();
    a.xs = xs.data();
    a.xsum = xsum.data();
    a.packed = packed.data();
    a.scales = scales.data();
    a.bias = bias.has_value() ? bias->data() : nullptr;
    a.y = y.mutable_data();
    if (m > 0) table->matmul(a, 0, m, 0, k::CeilDiv(n, k::kPackedNBlock));
  }
  return y;
}

// The SeerNet layer on one thread with a named sparse-dot variant, for
// testing the variants against each other: (y, computed).
py::tuple SeerConv2dPy(const FloatArray& x, const FloatArray& filter,
                       const FloatArray& bias, const UInt8Array& predictor,
                       const FloatArray& scales, int64_t stride_h, int64_t stride_w,
                       const std::string& padding, int64_t pool, int bits,
                       float threshold, const std::optional<std::string>& variant) {
  const k::SeerConvKernelTable* table = &TableNamed(k::SeerConvFamily(), variant, "seer_conv ");
  if (x.ndim() != 4 || filter.ndim() != 4) {
    throw py::value_error("x must be [batch, h, w, cin] and filter [kh, kw, cin, cout]");
  }
  if (filter.shape(2) != x.shape(3)) throw py::value_error("filter and x channels differ");
  if (padding != "SAME" && padding != "VALID") {
    throw py::value_error("padding must be 'SAME' or 'VALID'; got '" + padding + "'");
  }
  Check(k::CheckPackedBits(bits));
  const int64_t cout = filter.shape(3);
  if (bias.ndim() != 1 || bias.shape(0) != cout) throw py::value_error("bias must be [cout]");
  k::SeerConvGeometry g;
  Check(k::MakeSeerConvGeometry(x.shape(0), x.shape(1), x.shape(2), x.shape(3),
                                filter.shape(0), filter.shape(1), cout, stride_h,
                                stride_w, padding == "SAME", pool, &g));
  Check(k::CheckPackedMatmul(g.patch_size(), cout, bits, 0, predictor.size(),
                             std::vector<int64_t>(scales.shape(), scales.shape() + scales.ndim()),
                             cout));
  FloatArray y({g.batch, g.out_h(), g.out_w(), cout});
  std::vector<float> filter_t(g.patch_size() * cout), xs(g.batch);
  int64_t computed = 0;
  {
    py::gil_scoped_release release;
    k::SeerConvFilterRows(filter.data(), g.patch_size(), cout, filter_t.data());
    k::SeerConvArgs a;
    a.g = g;
    a.x = x.data();
    a.filter_t = filter_t.data();
    a.bias = bias.data();
    a.predictor = predictor.data();
    a.predictor_scales = scales.data();
    a.bits = bits;
    a.threshold = threshold;
    a.y = y.mutable_data();
    a.xs = xs.data();
    for (int64_t b = 0; b < g.batch; ++b) k::SeerConvImageScale(a, *table, b);
    for (int64_t t = 0; t < k::SeerConvTasks(g); ++t) computed += k::SeerConvTask(a, *table, t);
  }
  return py::make_tuple(y, computed);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "tfquant native helpers (no TensorFlow dependency)";
  m.def("cpu_features", &CpuFeaturesDict,
        "Dict of CPU feature name -> supported by CPU and enabled by the OS.");
  m.def("build_info", &BuildInfo,
        "How this module and the TF op library were built (tf_version, "
        "compiler, glibcxx_use_cxx11_abi, cxx_standard, flags, kernels).");
  m.def(
      "kernel_variant",
      [] { return std::string(k::IsaName(k::FakeQuantFamily().selected().isa)); },
      "The fake-quant kernel variant in use: the best this CPU supports at or "
      "below the level TFQUANT_KERNELS names (see isa_level()).");
  m.def("kernel_variants", [] { return k::FakeQuantFamily().names(); },
        "Kernel variants runnable here, worst first (scalar first).");
  m.def("fake_quant_reference", &FakeQuantReference, py::arg("x"),
        py::arg("min"), py::arg("max"), py::arg("num_bits") = 8,
        py::arg("narrow_range") = false, py::arg("axis") = py::none(),
        py::arg("variant") = py::none(),
        "Fake-quantizes a float32 array exactly like tfquant.ops.fake_quant. "
        "variant: a kernel variant from kernel_variants() (default: the one "
        "the op uses).");
  m.def("fake_quant_grad_reference", &FakeQuantGradReference, py::arg("dy"),
        py::arg("x"), py::arg("min"), py::arg("max"), py::arg("num_bits") = 8,
        py::arg("narrow_range") = false, py::arg("axis") = py::none(),
        py::arg("range_gradient") = "clipped", py::arg("variant") = py::none(),
        "Returns (dx, dmin, dmax), the gradient of fake_quant_reference; "
        "range_gradient is 'clipped' (TF's) or 'learned' (LSQ family).");
  m.def("pack_weights", &PackWeightsPy, py::arg("q"), py::arg("bits"),
        "Packs integer weights q [K, N] (4-bit: -8..7, 2-bit: -2..1) into the "
        "uint8 layout of cc_ops/kernels/packed.h (1-D).");
  m.def("divide_into_cells", &DivideIntoCellsPy, py::arg("q"), py::arg("cell_bits") = 4,
        py::arg("cells") = py::none(),
        "Cell Division of int8 weights q (any shape) into cells of cell_bits (2 or 4) "
        "bits, least significant first (default: as many as the values need): returns "
        "(cells [cells, *q.shape] int8, offset) with q == sum_i 2^(cell_bits*i) * "
        "cells[i] + offset.");
  m.def("unpack_weights", &UnpackWeightsPy, py::arg("packed"), py::arg("bits"),
        py::arg("k"), py::arg("n"), "Inverse of pack_weights: int8 [K, N].");
  m.def("packed_matmul", &PackedMatmulPy, py::arg("x"), py::arg("packed"),
        py::arg("scales"), py::arg("bias") = py::none(), py::arg("bits") = 4,
        py::arg("n") = 0, py::arg("group_size") = 0,
        py::arg("variant") = py::none(),
        "x [M, K] float32 times packed weights (single-threaded), same "
        "numbers as tfquant.ops.packed_matmul. variant: one of "
        "packed_kernel_variants().");
  m.def("packed_kernel_variants", [] { return k::PackedFamily().names(); },
        "Packed matmul kernel variants runnable here, worst first.");
  m.def("packed_kernel_variant",
        [] { return std::string(k::IsaName(k::PackedFamily().selected().isa)); },
        "The packed matmul variant the op uses.");
  m.def("seer_conv2d", &SeerConv2dPy, py::arg("x"), py::arg("filter"), py::arg("bias"),
        py::arg("predictor"), py::arg("predictor_scales"), py::arg("stride_h") = 1,
        py::arg("stride_w") = 1, py::arg("padding") = "SAME", py::arg("pool") = 1,
        py::arg("bits") = 4, py::arg("threshold") = 0.0f, py::arg("variant") = py::none(),
        "SeerNet Conv2D + bias + ReLU (+ 2x2 max-pool) on one thread, the numbers of "
        "tfquant.ops.seer_conv2d: returns (y, computed). variant: one of "
        "seer_conv_kernel_variants().");
  m.def("seer_conv_kernel_variants", [] { return k::SeerConvFamily().names(); },
        "SeerNet kernel variants runnable here, worst first.");
  m.def("seer_conv_kernel_variant",
        [] { return std::string(k::IsaName(k::SeerConvFamily().selected().isa)); },
        "The SeerNet kernel variant the op uses.");
  m.def("isa_level", [] { return std::string(k::IsaName(k::IsaSelection().level)); },
        "The ISA level the kernels are capped at: the best this CPU and OS "
        "run, or the one TFQUANT_KERNELS names.");
  m.def("isa_levels", &k::RunnableIsaLevels,
        "ISA levels this CPU and OS run, worst first (valid TFQUANT_KERNELS values).");
}
