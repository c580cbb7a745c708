"""Export: TFLite conversion, flatbuffer inspection, verification in LiteRT."""

from tfquant.export.delegate import delegate_stats, load_packed_delegate, packed_interpreter
from tfquant.export.flatbuffer import inspect_flatbuffer
from tfquant.export.packed_keras import PackedConv2D, PackedDense, to_packed_keras
from tfquant.export.report import ExportReport
from tfquant.export.tflite import ExportError, export_tflite

__all__ = ["ExportError", "ExportReport", "PackedConv2D", "PackedDense", "delegate_stats",
           "export_tflite", "inspect_flatbuffer", "load_packed_delegate", "packed_interpreter",
           "to_packed_keras"]
