// LiteRT external delegate that runs int8 FULLY_CONNECTED nodes with INT4 or
// INT2 filters (or int8 filters whose values fit in 4 bits, or with cell_bits any
// int8 filter) in tfquant's packed kernels (packed_int8_fc.h), bit-exact with the
// builtin kernel, and hybrid ones (float in and out, the same filters but int8
// only within 4 bits) with dynamic int8 activations (packed_hybrid_fc.h).
// Loaded with
//   ai_edge_litert.interpreter.load_delegate(path, {"num_threads": "2"})
// which calls tflite_plugin_create_delegate (the external-delegate plugin ABI
// of tensorflow/lite/delegates/external). Options:
//   num_threads  1..256, default std::thread::hardware_concurrency()
//   kernels      auto | scalar | avx2 | avx512vnni (what this CPU runs)
//   min_int4_weights  INT4 (and int8-held 4-bit) filters with fewer weights are left
//                to the interpreter: XNNPACK's INT4 kernel is faster there (measured,
//                docs/ARCHITECTURE.md §4); default 0 (claim every one)
//   max_int4_rows  ... unless the node's input has a static shape (its shape
//                signature) of at most this many rows: at small batches the packed
//                GEMV is faster than XNNPACK's at any size; default 0 (no exception)
//   cell_bits    0 | 4 | 2: also claim int8 filters beyond 4 bits and run each as
//                cells of that many bits (Cell Division, packed_int8_fc.h), still
//                bit-exact; default 0 (off)
// Everything else in the graph stays with the builtin kernels.

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cc_ops/delegate/litert_c_abi.h"
#include "cc_ops/kernels/packed.h"
#include "cc_ops/kernels/packed_hybrid_fc.h"
#include "cc_ops/kernels/packed_int8_fc.h"
#include "cc_ops/kernels/task_pool.h"

namespace tfquant {
namespace delegate {
namespace {

using namespace litert_abi;  // NOLINT: the ABI names read as in the docs
namespace k = ::tfquant::kernels;

struct PackedDelegate;

// One claimed FULLY_CONNECTED: tensor indices and the packed filter, integer
// (int8 in and out) or hybrid (float in and out).
struct NodeKernel {
  PackedDelegate* owner = nullptr;
  int input = -1, output = -1;
  bool keep_num_dims = false;
  bool hybrid = false;
  int64_t k = 0, n = 0;
  k::PackedInt8Fc fc;
  k::PackedInt8FcScratch scratch;
  k::PackedHybridFc hybrid_fc;
  k::PackedHybridFcScratch hybrid_scratch;
};

struct PackedDelegate {
  TfLiteDelegate base;  // first: the interpreter holds &base
  int num_threads = 1;
  int64_t min_int4_weights = 0;
  int64_t max_int4_rows = 0;
  int cell_bits = 0;  // Cell Division's cell width; 0: off
  std::unique_ptr<k::TaskPool> pool;
  const k::PackedKernelTable* kernels = nullptr;
  std::atomic<int64_t> claimed{0};
  std::atomic<int64_t> invocations{0};
  // Packed at delegate Prepare, handed to the kernel's init (keyed by the
  // interpreter context and node, as one delegate may serve several).
  std::mutex mutex;
  std::map<std::pair<const TfLiteContext*, int>, std::unique_ptr<NodeKernel>> pending;
};

PackedDelegate* FromBase(TfLiteDelegate* d) { return static_cast<PackedDelegate*>(d->data_); }

int64_t NumElements(const TfLiteIntArray* dims) {
  int64_t n = 1;
  for (int i = 0; i < dims->size; ++i) n *= dims->data[i];
  return n;
}

// Rows of an FC input [..., k] by its shape signature (the flatbuffer's shape,
// -1 where a size is dynamic); -1 if some size is dynamic or unknown.
int64_t StaticRows(const TfLiteTensor& input, int64_t k) {
  const TfLiteIntArray* dims =
      input.dims_signature != nullptr && input.dims_signature->size > 0 ? input.dims_signature
                                                                        : input.dims;
  if (dims == nullptr || k <= 0) return -1;
  int64_t n = 1;
  for (int i = 0; i < dims->size; ++i) {
    if (dims->data[i] < 0) return -1;
    n *= dims->data[i];
  }
  return n / k;
}

bool IsConstant(const TfLiteTensor& t) {
  return t.allocation_type == kTfLiteMmapRo && t.data != nullptr;
}

// Builds the kernel of node `node` if we run it exactly; else returns why not.
std::string BuildNodeKernel(TfLiteContext* context, const TfLiteNode& node,
                            const PackedDelegate& options, std::unique_ptr<NodeKernel>* out) {
  const TfLiteIntArray* in = node.inputs;
  if (in->size < 2 || node.outputs->size != 1) return "not 2-3 inputs and 1 output";
  const int input_index = in->data[0], filter_index = in->data[1];
  const int bias_index = in->size > 2 ? in->data[2] : -1;
  const int output_index = node.outputs->data[0];
  // A model may name tensor -1 (optional) or, corrupted, any index: LiteRT does not
  // check outputs before delegation.
  auto valid = [context](int i) {
    return i >= 0 && static_cast<size_t>(i) < context->tensors_size;
  };
  if (!valid(input_index) || !valid(filter_index) || !valid(output_index)) {
    return "missing input or output";
  }
  if (bias_index != -1 && !valid(bias_index)) return "bias index out of range";
  const TfLiteTensor& input = context->tensors[input_index];
  const TfLiteTensor& filter = context->tensors[filter_index];
  const TfLiteTensor& output = context->tensors[output_index];
  if (filter.type != kTfLiteInt4 && filter.type != kTfLiteInt2 && filter.type != kTfLiteInt8) {
    return "filter is not INT4, INT2 or int8";
  }
  const bool hybrid = input.type == kTfLiteFloat32 && output.type == kTfLiteFloat32;
  if (!hybrid && (input.type != kTfLiteInt8 || output.type != kTfLiteInt8)) {
    return "not int8 (or float, hybrid) in and out";
  }
  // Outside int8 (a corrupt model) the builtin kernel's int32 arithmetic wraps where
  // ours does not: leave such nodes to it.
  for (const TfLiteTensor* t : {&input, &output}) {
    if (t->params.zero_point < -128 || t->params.zero_point > 127) {
      return "zero point outside int8";
    }
  }
  if (!IsConstant(filter) || filter.dims == nullptr || filter.dims->size != 2) {
    return "filter is not a constant 2-D tensor";
  }
  const int64_t n = filter.dims->data[0], kdim = filter.dims->data[1];
  // The filter as one int8 per value, and the narrowest packed width that
  // holds it: an int8 filter is claimed only if its values fit in 4 bits, or
  // with cell_bits as cells of that width.
  int bits = filter.type == kTfLiteInt2 ? 2 : 4;
  bool divide = false;
  const auto* int8_values = static_cast<const int8_t*>(filter.data);
  if (filter.type == kTfLiteInt8) {
    if (static_cast<int64_t>(filter.bytes) < n * kdim) return "filter too short";
    int lo = 0, hi = 0;
    for (int64_t i = 0; i < n * kdim; ++i) {
      lo = std::min<int>(lo, int8_values[i]);
      hi = std::max<int>(hi, int8_values[i]);
    }
    if (lo < -8 || hi > 7) {
      // Hybrid cells would need their sums combined before the float epilogue.
      if (options.cell_bits == 0 || hybrid) return "int8 filter values do not fit in 4 bits";
      divide = true;
    } else if (lo >= -2 && hi <= 1) {
      bits = 2;
    }
  } else if (static_cast<int64_t>(filter.bytes) * (8 / bits) < n * kdim) {
    return "filter too short";
  }
  if (bits == 4 && !divide && n * kdim < options.min_int4_weights) {
    const int64_t rows = StaticRows(input, kdim);
    if (rows < 0 || rows > options.max_int4_rows) {
      return "INT4 filter below min_int4_weights, not a static batch within max_int4_rows";
    }
  }
  const auto* params = static_cast<const TfLiteFullyConnectedParams*>(node.builtin_data);
  if (params == nullptr || params->weights_format != 0) return "not the default weights format";
  if (params->activation < kTfLiteActNone || params->activation > kTfLiteActRelu6) {
    return "fused activation " + std::to_string(params->activation);
  }
  if (filter.quantization.type != kTfLiteAffineQuantization ||
      filter.quantization.params == nullptr) {
    return "filter without affine quantization";
  }
  const auto* affine = static_cast<const TfLiteAffineQuantization*>(filter.quantization.params);
  if (affine->scale == nullptr || affine->quantized_dimension != 0) {
    return "filter scales not along the output channels";
  }
  if (affine->zero_point != nullptr) {
    for (int i = 0; i < affine->zero_point->size; ++i) {
      if (affine->zero_point->data[i] != 0) return "filter zero point is not 0";
    }
  }
  const void* bias = nullptr;
  if (bias_index >= 0) {
    const TfLiteTensor& b = context->tensors[bias_index];
    const int bias_type = hybrid ? kTfLiteFloat32 : kTfLiteInt32;
    if (b.type != bias_type || !IsConstant(b) || b.dims == nullptr ||
        NumElements(b.dims) != n || static_cast<int64_t>(b.bytes) < n * 4) {
      return hybrid ? "bias is not a constant float32 [N] tensor"
                    : "bias is not a constant int32 [N] tensor";
    }
    bias = b.data;
  }
  k::Int8FcQuantization quant;
  quant.input_scale = input.params.scale;
  quant.input_zero_point = input.params.zero_point;
  quant.output_scale = output.params.scale;
  quant.output_zero_point = output.params.zero_point;
  quant.filter_scales = affine->scale->data;
  quant.num_filter_scales = affine->scale->size;
  quant.activation = static_cast<k::FusedActivation>(params->activation);

  auto kernel = std::make_unique<NodeKernel>();
  kernel->input = input_index;
  kernel->output = output_index;
  kernel->keep_num_dims = params->keep_num_dims;
  std::vector<int8_t> q(static_cast<size_t>(n * kdim));
  if (filter.type == kTfLiteInt8) {
    std::copy(int8_values, int8_values + n * kdim, q.begin());
  } else {
    k::UnpackLowBitTensor(static_cast<const uint8_t*>(filter.data), n * kdim, bits, q.data());
  }
  kernel->hybrid = hybrid;
  kernel->k = kdim;
  kernel->n = n;
  const auto* int_bias = static_cast<const int32_t*>(bias);
  const std::string error =
      hybrid ? k::PreparePackedHybridFc(q.data(), n, kdim, bits, quant.filter_scales,
                                        quant.num_filter_scales, static_cast<const float*>(bias),
                                        quant.activation, &kernel->hybrid_fc)
      : divide ? k::PrepareCellDividedInt8Fc(q.data(), n, kdim, options.cell_bits, int_bias,
                                             quant, &kernel->fc)
               : k::PreparePackedInt8Fc(q.data(), n, kdim, bits, int_bias, quant, &kernel->fc);
  if (!error.empty()) return error;
  *out = std::move(kernel);
  return "";
}

// The layout assumptions of litert_c_abi.h that can be checked at run time
// (this interpreter leaves context->GetTensor null, so the tensor stride is
// checked by plausibility): with a wrong TfLiteTensor size or field order
// some tensor's type, allocation type, name or rank would read as garbage.
bool AbiMatches(const TfLiteContext* context) {
  if (context->tensors == nullptr && context->tensors_size != 0) return false;
  for (size_t i = 0; i < context->tensors_size; ++i) {
    const TfLiteTensor& t = context->tensors[i];
    if (t.type < 0 || t.type > 21 || t.allocation_type < 0 || t.allocation_type > 8 ||
        t.quantization.type < 0 || t.quantization.type > 3) {
      return false;
    }
    if (t.dims != nullptr && (t.dims->size < 0 || t.dims->size > 16)) return false;
  }
  return true;
}

// ---------------------------------------------------------------- kernel

void* KernelInit(TfLiteContext* context, const char* buffer, size_t) {
  const auto* params = reinterpret_cast<const TfLiteDelegateParams*>(buffer);
  if (params == nullptr || params->nodes_to_replace->size != 1) return nullptr;
  PackedDelegate* self = FromBase(params->delegate);
  std::lock_guard<std::mutex> lock(self->mutex);
  auto it = self->pending.find({context, params->nodes_to_replace->data[0]});
  if (it == self->pending.end()) return nullptr;
  NodeKernel* kernel = it->second.release();
  self->pending.erase(it);
  kernel->owner = self;
  return kernel;
}

void KernelFree(TfLiteContext*, void* buffer) { delete static_cast<NodeKernel*>(buffer); }

TfLiteStatus KernelPrepare(TfLiteContext* context, TfLiteNode* node) {
  auto* kernel = static_cast<NodeKernel*>(node->user_data);
  if (kernel == nullptr) {
    context->ReportError(context, "tfquant packed delegate: node kernel missing");
    return kTfLiteError;
  }
  const TfLiteTensor& input = context->tensors[kernel->input];
  TfLiteTensor& output = context->tensors[kernel->output];
  const int64_t elements = NumElements(input.dims);
  if (input.dims->size < 1 || elements % kernel->k != 0) {
    context->ReportError(context,
                         "tfquant packed delegate: input with %lld elements is not "
                         "a multiple of K=%lld",
                         static_cast<long long>(elements), static_cast<long long>(kernel->k));
    return kTfLiteError;
  }
  std::vector<int> shape;
  if (kernel->keep_num_dims) {
    shape.assign(input.dims->data, input.dims->data + input.dims->size);
    shape.back() = static_cast<int>(kernel->n);
  } else {
    shape = {static_cast<int>(elements / kernel->k), static_cast<int>(kernel->n)};
  }
  bool same = output.dims != nullptr && output.dims->size == static_cast<int>(shape.size());
  for (size_t i = 0; same && i < shape.size(); ++i) same = output.dims->data[i] == shape[i];
  if (same) return kTfLiteOk;
  // ResizeTensor takes ownership of the array and frees it as
  // TfLiteIntArrayFree does: free() of a malloc(4 + 4 * size) block.
  auto* dims = static_cast<TfLiteIntArray*>(std::malloc(sizeof(int) * (1 + shape.size())));
  if (dims == nullptr) return kTfLiteError;
  dims->size = static_cast<int>(shape.size());
  std::copy(shape.begin(), shape.end(), dims->data);
  return context->ResizeTensor(context, &output, dims);
}

TfLiteStatus KernelInvoke(TfLiteContext* context, TfLiteNode* node) {
  auto* kernel = static_cast<NodeKernel*>(node->user_data);
  PackedDelegate* self = kernel->owner;
  const TfLiteTensor& input = context->tensors[kernel->input];
  TfLiteTensor& output = context->tensors[kernel->output];
  const int64_t m = NumElements(input.dims) / kernel->k;
  const int64_t element_bytes = kernel->hybrid ? 4 : 1;
  // In a corrupt graph another node may write our output tensor too and resize it after
  // our Prepare (or leave it unallocated): never touch more than the tensors hold.
  if (input.data == nullptr || output.data == nullptr ||
      static_cast<int64_t>(input.bytes) < m * kernel->k * element_bytes ||
      static_cast<int64_t>(output.bytes) < m * kernel->n * element_bytes) {
    context->ReportError(context, "tfquant packed delegate: input or output tensor smaller "
                                  "than its FULLY_CONNECTED needs");
    return kTfLiteError;
  }
  try {
    if (kernel->hybrid) {
      k::RunPackedHybridFc(kernel->hybrid_fc, *self->kernels,
                           static_cast<const float*>(input.data), m,
                           static_cast<float*>(output.data), self->pool.get(),
                           &kernel->hybrid_scratch);
    } else {
      k::RunPackedInt8Fc(kernel->fc, *self->kernels, static_cast<const int8_t*>(input.data),
                         m, static_cast<int8_t*>(output.data), self->pool.get(),
                         &kernel->scratch);
    }
  } catch (const std::exception& e) {  // scratch allocation failure
    context->ReportError(context, "tfquant packed delegate: %s", e.what());
    return kTfLiteError;
  }
  self->invocations.fetch_add(1, std::memory_order_relaxed);
  return kTfLiteOk;
}

TfLiteRegistration KernelRegistration() {
  TfLiteRegistration r{};
  r.init = KernelInit;
  r.free = KernelFree;
  r.prepare = KernelPrepare;
  r.invoke = KernelInvoke;
  r.custom_name = "TfquantPackedFullyConnected";
  r.version = 1;
  return r;
}

// ---------------------------------------------------------------- delegate

TfLiteStatus DelegatePrepare(TfLiteContext* context, TfLiteDelegate* base) {
  PackedDelegate* self = FromBase(base);
  if (!AbiMatches(context)) {
    context->ReportError(context,
                         "tfquant packed delegate: this interpreter's TfLiteContext/TfLiteTensor "
                         "layout differs from the one the delegate was built for "
                         "(ai-edge-litert 2.3); not applied");
    return kTfLiteDelegateError;
  }
  TfLiteIntArray* plan = nullptr;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  // Copy: the plan array changes with every replacement below.
  const std::vector<int> nodes(plan->data, plan->data + plan->size);
  for (int node_index : nodes) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (context->GetNodeAndRegistration(context, node_index, &node, &reg) != kTfLiteOk) {
      return kTfLiteError;
    }
    if (reg->builtin_code != kBuiltinFullyConnected) continue;
    std::unique_ptr<NodeKernel> kernel;
    if (!BuildNodeKernel(context, *node, *self, &kernel).empty()) continue;
    {
      std::lock_guard<std::mutex> lock(self->mutex);
      self->pending[{context, node_index}] = std::move(kernel);
    }
    // One node per delegate kernel: tensors between two claimed nodes stay
    // graph tensors that the interpreter allocates.
    struct {
      int size;
      int data[1];
    } one = {1, {node_index}};
    const TfLiteStatus status = context->ReplaceNodeSubsetsWithDelegateKernels(
        context, KernelRegistration(), reinterpret_cast<const TfLiteIntArray*>(&one), base);
    if (status != kTfLiteOk) {
      std::lock_guard<std::mutex> lock(self->mutex);
      self->pending.erase({context, node_index});
      return status;
    }
    self->claimed.fetch_add(1, std::memory_order_relaxed);
  }
  return kTfLiteOk;
}

std::string ParseOptions(char** keys, char** values, size_t count, PackedDelegate* self) {
  self->num_threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  self->kernels = &k::PackedFamily().selected();
  for (size_t i = 0; i < count; ++i) {
    const std::string key = keys[i] ? keys[i] : "", value = values[i] ? values[i] : "";
    if (key == "num_threads") {
      char* end = nullptr;
      const long v = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || v < 1 || v > 256) {
        return "num_threads='" + value + "' is not allowed; give an integer 1..256";
      }
      self->num_threads = static_cast<int>(v);
    } else if (key == "kernels") {
      if (value == "auto") continue;
      self->kernels = k::PackedFamily().named(value);
      if (self->kernels == nullptr) {
        std::string allowed = "auto";
        for (const std::string& name : k::PackedFamily().names()) {
          allowed += ", " + name;
        }
        return "kernels='" + value + "' cannot run here; allowed: " + allowed;
      }
    } else if (key == "min_int4_weights" || key == "max_int4_rows") {
      char* end = nullptr;
      const long long v = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || v < 0) {
        return key + "='" + value + "' is not allowed; give an integer >= 0";
      }
      (key == "min_int4_weights" ? self->min_int4_weights : self->max_int4_rows) =
          static_cast<int64_t>(v);
    } else if (key == "cell_bits") {
      if (value != "0" && value != "2" && value != "4") {
        return "cell_bits='" + value + "' is not allowed; give 0 (off), 2 or 4";
      }
      self->cell_bits = value[0] - '0';
    } else {
      return "unknown option '" + key +
             "'; allowed: num_threads, kernels, min_int4_weights, max_int4_rows, "
             "cell_bits";
    }
  }
  return "";
}

}  // namespace
}  // namespace delegate
}  // namespace tfquant

using tfquant::delegate::PackedDelegate;
using tfquant::litert_abi::TfLiteDelegate;

extern "C" {

__attribute__((visibility("default"))) TfLiteDelegate* tflite_plugin_create_delegate(
    char** option_keys, char** option_values, size_t num_options,
    void (*report_error)(const char*)) {
  auto self = std::make_unique<PackedDelegate>();
  const std::string error =
      tfquant::delegate::ParseOptions(option_keys, option_values, num_options, self.get());
  if (!error.empty()) {
    if (report_error != nullptr) report_error(("tfquant packed delegate: " + error).c_str());
    return nullptr;
  }
  try {
    self->pool = std::make_unique<tfquant::kernels::TaskPool>(self->num_threads);
  } catch (const std::exception& e) {
    if (report_error != nullptr) {
      report_error((std::string("tfquant packed delegate: cannot start threads: ") + e.what()).c_str());
    }
    return nullptr;
  }
  self->base = TfLiteDelegate{};
  self->base.data_ = self.get();
  self->base.Prepare = tfquant::delegate::DelegatePrepare;
  // Lets the claimed nodes sit next to builtin and CUSTOM nodes that resize
  // tensors at run time; our kernels resize their output in Prepare.
  self->base.flags = tfquant::litert_abi::kTfLiteDelegateFlagsAllowDynamicTensors;
  return &self.release()->base;
}

__attribute__((visibility("default"))) void tflite_plugin_destroy_delegate(
    TfLiteDelegate* delegate) {
  if (delegate != nullptr) delete static_cast<PackedDelegate*>(delegate->data_);
}

// Ours, or another library's delegate (whose data_ we must not read)?
static PackedDelegate* AsPackedDelegate(TfLiteDelegate* delegate) {
  if (delegate == nullptr || delegate->Prepare != tfquant::delegate::DelegatePrepare) {
    return nullptr;
  }
  return static_cast<PackedDelegate*>(delegate->data_);
}

// Nodes claimed and kernel invocations so far (tests and benchmarks); -1 if
// `delegate` is not one of ours.
__attribute__((visibility("default"))) int64_t tfquant_delegate_claimed_nodes(
    TfLiteDelegate* delegate) {
  PackedDelegate* self = AsPackedDelegate(delegate);
  return self != nullptr ? self->claimed.load() : -1;
}
__attribute__((visibility("default"))) int64_t tfquant_delegate_invocations(
    TfLiteDelegate* delegate) {
  PackedDelegate* self = AsPackedDelegate(delegate);
  return self != nullptr ? self->invocations.load() : -1;
}
// The packed kernel variant the delegate runs ("avx512vnni", ...); "" if
// `delegate` is not one of ours.
__attribute__((visibility("default"))) const char* tfquant_delegate_kernels(
    TfLiteDelegate* delegate) {
  PackedDelegate* self = AsPackedDelegate(delegate);
  return self != nullptr ? tfquant::kernels::IsaName(self->kernels->isa) : "";
}

}  // extern "C"
