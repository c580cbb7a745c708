"""tfquant: quantization for Keras on TensorFlow — QAT, calibration, integer TFLite export.

    import tfquant
    qmodel = tfquant.quantize_model(model)          # QAT-ready copy, int8 by default
    qmodel.compile(...); qmodel.fit(...)
    report = tfquant.export_tflite(qmodel, "model.tflite", representative_data=x[:200])
"""

from tfquant import ops  # loads the C++ op library first: a clear ImportError if unbuilt
from tfquant import ptq, quantizers
from tfquant.export import ExportError, ExportReport, export_tflite, inspect_flatbuffer
from tfquant.keras import LayerRule, QuantConfig, freeze_batch_norm, quantize_model

__version__ = "0.1.0"

__all__ = [
    "ExportError",
    "ExportReport",
    "LayerRule",
    "QuantConfig",
    "export_tflite",
    "freeze_batch_norm",
    "inspect_flatbuffer",
    "ops",
    "ptq",
    "quantize_model",
    "quantizers",
]
