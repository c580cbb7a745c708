"""Export: TFLite conversion, flatbuffer inspection, verification in LiteRT."""

from tfquant.export.delegate import delegate_stats, load_packed_delegate, packed_interpreter
from tfquant.export.flatbuffer import inspect_flatbuffer
from tfquant.export.integer_exact import IntegerModel, UnsupportedOperatorError
from tfquant.export.packed_keras import PackedConv2D, PackedDense, to_packed_keras
from tfquant.export.report import ExportReport
from tfquant.export.tflite import ExportError, export_tflite, integer_model

__all__ = ["ExportError", "ExportReport", "IntegerModel", "PackedConv2D", "PackedDense",
           "UnsupportedOperatorError", "delegate_stats", "export_tflite", "inspect_flatbuffer",
           "integer_model", "load_packed_delegate", "packed_interpreter", "to_packed_keras"]
