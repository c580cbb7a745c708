"""What the integer model reads from a flatbuffer: its tensors, with their scales and
zero points, and the rules every int8 kernel shares (fused activation ranges, equal scales).

The kernels (`integer_products`, `integer_arithmetic`, `integer_layout`,
`integer_activations`) are functions `(op, tensors, inputs, backend)` → int32 tensor of
int8 values; `integer_exact.IntegerModel` runs them in graph order (docs/ARCHITECTURE.md §5).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb

from tfquant.export import integer_ops as ops
from tfquant.export.int2 import unpack_int2, unpack_int4

INT8_RANGE = (-128, 127)
_T = schema_fb.TensorType
_NUMPY_TYPES = {_T.INT8: np.int8, _T.UINT8: np.uint8, _T.INT16: np.int16, _T.INT32: np.int32,
                _T.INT64: np.int64, _T.FLOAT32: np.float32}
FUSED = schema_fb.ActivationFunctionType
PADDING = {schema_fb.Padding.SAME: "SAME", schema_fb.Padding.VALID: "VALID"}


class UnsupportedOperatorError(ValueError):
    """The flatbuffer holds an operator the integer model does not compute."""


@dataclasses.dataclass
class FlatTensor:
    """One tensor of the flatbuffer's main subgraph."""

    index: int
    name: str
    shape: tuple
    dtype: type
    scales: np.ndarray  # float32 values of the file, as float64
    zero_points: np.ndarray
    data: np.ndarray = None  # constant values, or None

    @property
    def scale(self) -> float:
        return float(self.scales[0])

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0]) if self.zero_points.size else 0


def read_tensors(model, subgraph) -> list[FlatTensor]:
    """The main subgraph's tensors, constants unpacked (INT4 and INT2 included)."""
    tensors = []
    for index, t in enumerate(subgraph.tensors):
        q = t.quantization
        scales = np.asarray(q.scale if q is not None and q.scale is not None else [],
                            np.float32).astype(np.float64)
        zero_points = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None
                                 else [], np.int64)
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        data = None
        raw = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
        if raw is not None and len(raw):
            count = int(np.prod(shape)) if shape else 1
            if t.type == _T.INT4:
                data = unpack_int4(raw, count).reshape(shape)
            elif t.type == 19:  # INT2
                data = unpack_int2(raw, count).reshape(shape)
            elif t.type in _NUMPY_TYPES:
                data = np.frombuffer(bytes(raw), _NUMPY_TYPES[t.type]).reshape(shape)
            else:
                raise UnsupportedOperatorError(
                    f"constant tensor {t.name!r} has type code {t.type}, which the integer "
                    "model does not read")
        dtype = _NUMPY_TYPES.get(t.type, np.int8)
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        tensors.append(FlatTensor(index, name, shape, dtype, scales, zero_points, data))
    return tensors


def activation_range(activation, output: FlatTensor, backend: str):
    """The int8 output range of a fused activation (TFLite's
    CalculateActivationRangeQuantized; XNNPACK rounds the bounds half to even)."""
    low, high = INT8_RANGE
    scale, zero_point = np.float32(output.scale), output.zero_point

    def quantize(value):
        scaled = np.float32(value) / scale
        rounded = np.round(scaled) if backend == "xnnpack" else ops.round_half_away(scaled)
        return zero_point + int(rounded)

    if activation == FUSED.RELU:
        return max(low, quantize(0.0)), high
    if activation == FUSED.RELU6:
        return max(low, quantize(0.0)), min(high, quantize(6.0))
    if activation == FUSED.RELU_N1_TO_1:
        return max(low, quantize(-1.0)), min(high, quantize(1.0))
    if activation == FUSED.NONE:
        return low, high
    raise UnsupportedOperatorError(f"fused activation code {activation} is not supported")


def same_scale(op, t):
    """Raises unless every int8 input of `op` has its output's scale and zero point."""
    output = t[op.outputs[0]]
    for i in op.inputs:
        if i >= 0 and (t[i].scale, t[i].zero_point) != (output.scale, output.zero_point):
            raise UnsupportedOperatorError(
                f"{t[i].name!r}: an elementwise min/max/ReLU whose input and output "
                "quantization differ (the integer model computes the equal case)")


def constant(t, index, dtype=np.int32) -> np.ndarray:
    """The file's values of tensor `index`, for an operand the integer model needs to be
    a constant (a permutation, slice bounds)."""
    data = t[index].data
    if data is None:
        raise UnsupportedOperatorError(
            f"{t[index].name!r}: the integer model needs this operand to be a constant")
    return data.astype(dtype)


def operand(op, t, inputs, position, dtype=tf.int32):
    """Input `position` of `op` as a `dtype` tensor: its computed value, or the file's
    constant."""
    if inputs[position] is not None:
        return tf.cast(inputs[position], dtype)
    return tf.constant(constant(t, op.inputs[position], dtype.as_numpy_dtype))
