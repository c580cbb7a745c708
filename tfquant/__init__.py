"""tfquant: quantization for Keras on TensorFlow — QAT, calibration, integer TFLite export.

    import tfquant
    qmodel = tfquant.quantize_model(model)          # QAT-ready copy, int8 by default
    qmodel.compile(...); qmodel.fit(...)
    report = tfquant.export_tflite(qmodel, "model.tflite", representative_data=x[:200])
"""

from tfquant import ops  # loads the C++ op library first: a clear ImportError if unbuilt
from tfquant import callbacks, ptq, quantizers, regularizers
from tfquant.export import (
    ExportError,
    ExportReport,
    IntegerModel,
    export_tflite,
    inspect_flatbuffer,
    integer_model,
)
from tfquant.keras import (
    LayerRule,
    QuantConfig,
    freeze_batch_norm,
    quantize_model,
    reestimate_batch_norm,
)
from tfquant.keras.distillation import Distillation
from tfquant.keras.layers import LayerHandler, PassThrough, QuantizedOutput, register_layer_handler
from tfquant.keras.train_step import with_hooks

__version__ = "0.1.0"

__all__ = [
    "Distillation",
    "ExportError",
    "ExportReport",
    "LayerHandler",
    "LayerRule",
    "PassThrough",
    "QuantConfig",
    "callbacks",
    "export_tflite",
    "freeze_batch_norm",
    "inspect_flatbuffer",
    "integer_model",
    "IntegerModel",
    "ops",
    "ptq",
    "quantize_model",
    "reestimate_batch_norm",
    "QuantizedOutput",
    "quantizers",
    "register_layer_handler",
    "regularizers",
    "with_hooks",
]
