"""Export: TFLite conversion, flatbuffer inspection, verification in LiteRT."""

from tfquant.export.flatbuffer import inspect_flatbuffer
from tfquant.export.packed_keras import PackedDense, to_packed_keras
from tfquant.export.report import ExportReport
from tfquant.export.tflite import ExportError, export_tflite

__all__ = ["ExportError", "ExportReport", "PackedDense", "export_tflite", "inspect_flatbuffer",
           "to_packed_keras"]
