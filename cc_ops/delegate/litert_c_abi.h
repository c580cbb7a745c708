// Our own declarations of the parts of the TensorFlow Lite / LiteRT C ABI
// that an external delegate touches. No registry package ships these headers,
// and the ai-edge-litert 2.3 wheel exports none of the TfLite* C functions
// (`nm -D`: the interpreter lives in libpywrap_litert_common.so with every
// TfLite* symbol local), so the delegate talks to the interpreter only through
// the function pointers the documented structs carry.
//
// The structs mirror the classic delegate ABI documented in
// tensorflow/lite/core/c/common.h (TfLiteContext, TfLiteNode, TfLiteTensor,
// TfLiteRegistration, TfLiteDelegate, TfLiteDelegateParams), c_api_types.h /
// tflite_types.h (TfLiteType, TfLiteQuantizationParams) and builtin_op_data.h
// (TfLiteFullyConnectedParams), as built into ai-edge-litert 2.3.0. Only the
// leading fields we use are declared where the interpreter owns the struct;
// structs we create or pass by value (TfLiteRegistration, TfLiteDelegate) are
// complete. Facts checked against that wheel (objdump / nm -S on
// libpywrap_litert_common.so, and at run time in tests/test_delegate.py):
//   * sizeof(TfLiteRegistration) = 88: the static `Register_*()::r` objects
//     are 0x58 bytes (it is passed BY VALUE to
//     ReplaceNodeSubsetsWithDelegateKernels, so the size must match).
//   * TfLiteFloatArray is the older {int size; float data[];}:
//     TfLiteFloatArrayCreate mallocs 4 + 4 * size and stores size at offset 0
//     (newer TF sources use {float* data; int size; bool owning;}).
//   * TfLiteIntArrayCreate is malloc(4 + 4 * size) and TfLiteIntArrayFree is
//     free(), so an array we malloc can be handed to ResizeTensor, which
//     takes ownership.
//   * The context a delegate sees leaves GetTensor and ResizeTensorExplicit
//     null, so the delegate checks the TfLiteTensor layout by plausibility of
//     every tensor's fields at Prepare (sizeof(TfLiteTensor) = 112).

#ifndef TFQUANT_CC_OPS_DELEGATE_LITERT_C_ABI_H_
#define TFQUANT_CC_OPS_DELEGATE_LITERT_C_ABI_H_

#include <cstddef>
#include <cstdint>

namespace tfquant {
namespace litert_abi {

extern "C" {

enum TfLiteStatus : int { kTfLiteOk = 0, kTfLiteError = 1, kTfLiteDelegateError = 2 };

// TfLiteType values (tflite_types.h); the schema's INT4 = 17 / INT2 = 19 are
// remapped to these by the flatbuffer loader.
enum TfLiteTypeValue : int {
  kTfLiteFloat32 = 1,
  kTfLiteInt32 = 2,
  kTfLiteInt8 = 9,
  kTfLiteInt4 = 18,
  kTfLiteInt2 = 20,
};

// TfLiteAllocationType: constant weights are memory-mapped read-only.
enum TfLiteAllocationTypeValue : int { kTfLiteMmapRo = 1 };

// TfLiteQuantizationType.
enum TfLiteQuantizationTypeValue : int { kTfLiteAffineQuantization = 1 };

// Builtin operator code (schema BuiltinOperator) of FULLY_CONNECTED.
constexpr int32_t kBuiltinFullyConnected = 9;

// TfLiteDelegateFlags.
constexpr int64_t kTfLiteDelegateFlagsAllowDynamicTensors = 1;

struct TfLiteIntArray {
  int size;
  int data[];  // size entries
};

struct TfLiteFloatArray {  // the layout of ai-edge-litert 2.3, see above
  int size;
  float data[];
};

struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
};

struct TfLiteAffineQuantization {
  TfLiteFloatArray* scale;
  TfLiteIntArray* zero_point;
  int32_t quantized_dimension;
};

struct TfLiteQuantization {
  int type;      // TfLiteQuantizationType
  void* params;  // TfLiteAffineQuantization* when type is affine
};

struct TfLiteDelegate;

struct TfLiteTensor {
  int type;  // TfLiteType
  void* data;
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  int allocation_type;  // TfLiteAllocationType
  size_t bytes;
  const void* allocation;
  const char* name;
  TfLiteDelegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
};
static_assert(sizeof(TfLiteTensor) == 112, "TfLiteTensor layout");
static_assert(offsetof(TfLiteTensor, quantization) == 80, "TfLiteTensor layout");

struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  // (further fields not used)
};

struct TfLiteContext;

struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;
  void* (*async_kernel)(TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator;
};
static_assert(sizeof(TfLiteRegistration) == 88, "TfLiteRegistration layout");

struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(TfLiteContext* context, TfLiteIntArray** plan);
  TfLiteTensor* tensors;
  void* impl_;
  TfLiteStatus (*ResizeTensor)(TfLiteContext*, TfLiteTensor*, TfLiteIntArray*);
  void (*ReportError)(TfLiteContext*, const char* format, ...);
  TfLiteStatus (*AddTensors)(TfLiteContext*, int count, int* first_index);
  TfLiteStatus (*GetNodeAndRegistration)(TfLiteContext*, int node_index, TfLiteNode** node,
                                         TfLiteRegistration** registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(TfLiteContext*,
                                                        TfLiteRegistration registration,
                                                        const TfLiteIntArray* nodes,
                                                        TfLiteDelegate* delegate);
  int recommended_num_threads;
  void* (*GetExternalContext)(TfLiteContext*, int type);
  void (*SetExternalContext)(TfLiteContext*, int type, void* external);
  bool allow_fp32_relax_to_fp16;
  void* profiler;
  void* (*AllocatePersistentBuffer)(TfLiteContext*, size_t bytes);
  TfLiteStatus (*AllocateBufferForEval)(TfLiteContext*, size_t bytes, void** ptr);
  TfLiteStatus (*RequestScratchBufferInArena)(TfLiteContext*, size_t bytes, int* index);
  void* (*GetScratchBuffer)(TfLiteContext*, int index);
  TfLiteStatus (*ResizeTensorExplicit)(TfLiteContext*, TfLiteTensor* tensor, int dims,
                                       const int* shape);  // null here
  TfLiteStatus (*PreviewDelegatePartitioning)(TfLiteContext*, const TfLiteIntArray* nodes,
                                              void** params_array, int* num_partitions);
  TfLiteTensor* (*GetTensor)(const TfLiteContext*, int tensor_index);  // null here
  // (further fields not used)
};
static_assert(offsetof(TfLiteContext, ReplaceNodeSubsetsWithDelegateKernels) == 64,
              "TfLiteContext layout");
static_assert(offsetof(TfLiteContext, GetTensor) == 160, "TfLiteContext layout");

struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext*, TfLiteDelegate*, int handle,
                                       TfLiteTensor*);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext*, TfLiteDelegate*, int handle,
                                     TfLiteTensor*);
  void (*FreeBufferHandle)(TfLiteContext*, TfLiteDelegate*, int* handle);
  int64_t flags;
  void* opaque_delegate_builder;  // must stay null: we use Prepare
};

// The `buffer` that init() of a delegate kernel receives.
struct TfLiteDelegateParams {
  TfLiteDelegate* delegate;
  TfLiteIntArray* nodes_to_replace;
  TfLiteIntArray* input_tensors;
  TfLiteIntArray* output_tensors;
};

// TfLiteFusedActivation.
enum TfLiteFusedActivationValue : int {
  kTfLiteActNone = 0,
  kTfLiteActRelu = 1,
  kTfLiteActReluN1To1 = 2,
  kTfLiteActRelu6 = 3,
};

// builtin_data of a FULLY_CONNECTED node.
struct TfLiteFullyConnectedParams {
  int activation;      // TfLiteFusedActivation
  int weights_format;  // 0: default (the only one we claim)
  bool keep_num_dims;
  bool asymmetric_quantize_inputs;
  int quantized_bias_type;
};

}  // extern "C"

}  // namespace litert_abi
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_DELEGATE_LITERT_C_ABI_H_
