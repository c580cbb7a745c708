"""A Keras model that computes the integers LiteRT computes for a flatbuffer.

`IntegerModel(flatbuffer, backend)` (made by `tfquant.integer_model`) reads the int8 flatbuffer the export
produced (its weights, int32 biases, scales and zero points are what ships) and runs
its operators with `tfquant.export.integer_ops`, which follow the arithmetic of the
chosen LiteRT backend bit for bit (docs/ARCHITECTURE.md §5). `model.evaluate` on it
gives the on-device accuracy without a device; its float outputs are the dequantized
int8 outputs of LiteRT.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from tfquant.export import integer_activations
from tfquant.export import integer_ops as ops
from tfquant.export.flatbuffer import builtin_op_name, inspect_flatbuffer
from tfquant.export.int2 import builtin_code, unpack_int2, unpack_int4
from tfquant.export.litert_runner import BACKENDS, ordered_output_tensors
from tfquant.ops.arguments import check_choice

_INT8_RANGE = (-128, 127)
_T = schema_fb.TensorType
_NUMPY_TYPES = {_T.INT8: np.int8, _T.UINT8: np.uint8, _T.INT16: np.int16, _T.INT32: np.int32,
                _T.INT64: np.int64, _T.FLOAT32: np.float32}
_A = schema_fb.ActivationFunctionType
_PADDING = {schema_fb.Padding.SAME: "SAME", schema_fb.Padding.VALID: "VALID"}


class UnsupportedOperatorError(ValueError):
    """The flatbuffer holds an operator the integer model does not compute."""


@dataclasses.dataclass
class _Tensor:
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


def _read_tensors(model, subgraph) -> list[_Tensor]:
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
        tensors.append(_Tensor(index, name, shape, dtype, scales, zero_points, data))
    return tensors


def activation_range(activation, output: _Tensor, backend: str):
    """The int8 output range of a fused activation (TFLite's
    CalculateActivationRangeQuantized; XNNPACK rounds the bounds half to even)."""
    low, high = _INT8_RANGE
    scale, zero_point = np.float32(output.scale), output.zero_point

    def quantize(value):
        scaled = np.float32(value) / scale
        rounded = np.round(scaled) if backend == "xnnpack" else ops.round_half_away(scaled)
        return zero_point + int(rounded)

    if activation == _A.RELU:
        return max(low, quantize(0.0)), high
    if activation == _A.RELU6:
        return max(low, quantize(0.0)), min(high, quantize(6.0))
    if activation == _A.RELU_N1_TO_1:
        return max(low, quantize(-1.0)), min(high, quantize(1.0))
    if activation == _A.NONE:
        return low, high
    raise UnsupportedOperatorError(f"fused activation code {activation} is not supported")


def requantize(acc, input_scale, filter_scales, output: _Tensor, activation, backend,
               rounding="ties_up"):
    """int32 accumulator → int8 output of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED.

    builtin `rounding`: "ties_up" (ruy, for CONV_2D and FULLY_CONNECTED: the final
    shift rounds ties toward +∞) or "depthwise" (ties up on blocks of 8 channels, away
    from zero on the channels left over).
    """
    low, high = activation_range(activation, output, backend)
    if backend == "xnnpack":
        scale = (np.float32(input_scale) * filter_scales.astype(np.float32)
                 / np.float32(output.scale))
        values = ops.requantize_float(acc, scale)
    else:
        real = np.float64(input_scale) * filter_scales / np.float64(output.scale)
        multiplier, shift = ops.quantize_multiplier(real)
        values = ops.multiply_by_quantized_multiplier_ruy(acc, multiplier, shift)
        if rounding == "depthwise":
            away = ops.multiply_by_quantized_multiplier(acc, multiplier, shift)
            values = tf.where(ops.channel_tail(away, 8), away, values)
    return ops.clamp_to_output(values, output.zero_point, low, high)


def _conv_2d(op, t, inputs, backend):
    x, filters, bias = inputs
    opts = op.builtinOptions
    w = t[op.inputs[1]].data.astype(np.float64)  # [O, H, W, I]
    sums = ops.conv_sums(x, t[op.inputs[0]].zero_point, np.transpose(w, (1, 2, 3, 0)),
                         [opts.strideH, opts.strideW], _PADDING[opts.padding],
                         [opts.dilationHFactor, opts.dilationWFactor])
    return _finish_product(op, t, sums, backend, opts.fusedActivationFunction)


def _depthwise_conv_2d(op, t, inputs, backend):
    x = inputs[0]
    opts = op.builtinOptions
    w = t[op.inputs[1]].data.astype(np.float64)  # [1, H, W, I·multiplier]
    channels = int(t[op.inputs[0]].shape[-1])
    kernel = w[0].reshape(w.shape[1], w.shape[2], channels, -1)
    sums = ops.depthwise_sums(x, t[op.inputs[0]].zero_point, kernel,
                              [opts.strideH, opts.strideW], _PADDING[opts.padding],
                              [opts.dilationHFactor, opts.dilationWFactor])
    return _finish_product(op, t, sums, backend, opts.fusedActivationFunction,
                           rounding="depthwise")


def _fully_connected(op, t, inputs, backend):
    x = inputs[0]
    opts = op.builtinOptions
    w = t[op.inputs[1]].data.astype(np.float64)  # [O, I]
    flat = tf.reshape(x, [-1, w.shape[1]])
    sums = ops.matmul_sums(flat, t[op.inputs[0]].zero_point, w.T)
    out = _finish_product(op, t, sums, backend, opts.fusedActivationFunction)
    if opts.keepNumDims:
        out = tf.reshape(out, tf.concat([tf.shape(x)[:-1], [w.shape[0]]], 0))
    return out


def _finish_product(op, t, sums, backend, activation, rounding="ties_up"):
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        sums = sums + tf.constant(t[op.inputs[2]].data.astype(np.int64))
    return requantize(sums, t[op.inputs[0]].scale, t[op.inputs[1]].scales,
                      t[op.outputs[0]], activation, backend, rounding)


def _max_pool_2d(op, t, inputs, backend):
    opts = op.builtinOptions
    low, high = activation_range(opts.fusedActivationFunction, t[op.outputs[0]], backend)
    pooled = tf.nn.max_pool2d(inputs[0], [opts.filterHeight, opts.filterWidth],
                              [opts.strideH, opts.strideW], _PADDING[opts.padding])
    return tf.clip_by_value(pooled, low, high)


def _quantize(op, t, inputs, backend):
    source, output = t[op.inputs[0]], t[op.outputs[0]]
    if source.dtype == np.float32:
        return ops.quantize_float(inputs[0], output.scale, output.zero_point, backend)
    centered = tf.cast(inputs[0], tf.int64) - source.zero_point
    if backend == "xnnpack":
        # An 8-bit multiplier: round(256 · s_in / s_out) ties to even, then ties up.
        multiplier = int(np.round(np.float32(256) * (np.float32(source.scale)
                                                      / np.float32(output.scale))))
        values = tf.bitwise.right_shift(centered * multiplier + 128, tf.constant(8, tf.int64))
    else:
        multiplier, shift = ops.quantize_multiplier(np.float64(source.scale) / output.scale)
        up = ops.multiply_by_quantized_multiplier_ruy(centered, multiplier, shift)
        away = ops.multiply_by_quantized_multiplier(centered, multiplier, shift)
        values = tf.where(ops.flat_tail(away, 16), away, up)
    return ops.clamp_to_output(values, output.zero_point, *_INT8_RANGE)


def _operands(op, t, inputs):
    """The two int64 operands of a binary op (constants read from the file)."""
    a, b = t[op.inputs[0]], t[op.inputs[1]]
    x, y = inputs[:2]
    x = tf.constant(a.data.astype(np.int64)) if a.data is not None else tf.cast(x, tf.int64)
    y = tf.constant(b.data.astype(np.int64)) if b.data is not None else tf.cast(y, tf.int64)
    return a, b, x, y


def _add(op, t, inputs, backend):
    a, b, x, y = _operands(op, t, inputs)
    output = t[op.outputs[0]]
    low, high = activation_range(op.builtinOptions.fusedActivationFunction, output, backend)
    if backend == "xnnpack":
        ra = np.float32(a.scale) / np.float32(output.scale)
        rb = np.float32(b.scale) / np.float32(output.scale)
        exponent = np.frexp(max(abs(ra), abs(rb)))[1] - 1
        shift = int(20 - exponent)
        ma = int(np.round(np.float64(ra) * 2.0**shift))
        mb = int(np.round(np.float64(rb) * 2.0**shift))
        bias = (1 << (shift - 1)) - ma * a.zero_point - mb * b.zero_point
        acc = bias + x * ma + y * mb
        values = tf.bitwise.right_shift(acc, tf.constant(shift, tf.int64))
        return ops.clamp_to_output(values, output.zero_point, low, high)
    twice_max = 2.0 * max(np.float64(a.scale), np.float64(b.scale))
    m1, s1 = ops.quantize_multiplier(np.float64(a.scale) / twice_max)
    m2, s2 = ops.quantize_multiplier(np.float64(b.scale) / twice_max)
    mo, so = ops.quantize_multiplier(twice_max / (np.float64(np.float32(2**20)
                                                            * np.float32(output.scale))))
    x, y = x - a.zero_point, y - b.zero_point
    if min(np.prod(a.shape, dtype=int), np.prod(b.shape, dtype=int)) == 1 and a.shape != b.shape:
        # Adding a scalar (MobileNetV3's hard sigmoid, x + 3): each input's shift is a
        # truncating arithmetic shift (NEON's vshl), the sum rounded as elsewhere.
        total = (tf.bitwise.right_shift(ops.srdhm(x * 2**20, m1), tf.constant(-s1))
                 + tf.bitwise.right_shift(ops.srdhm(y * 2**20, m2), tf.constant(-s2)))
        values = ops.rounding_divide_by_pot(ops.srdhm(total, mo), -so)
        return ops.clamp_to_output(values, output.zero_point, low, high)
    # Scalar loop: each input and the sum rounded by RoundingDivideByPOT.
    scalar = (ops.rounding_divide_by_pot(ops.srdhm(x * 2**20, m1), -s1)
              + ops.rounding_divide_by_pot(ops.srdhm(y * 2**20, m2), -s2))
    scalar = ops.rounding_divide_by_pot(ops.srdhm(scalar, mo), -so)
    # Blocks of 16: the input shift folded into the left shift, no rounding of its own.
    blocks = (ops.srdhm(tf.bitwise.left_shift(x, tf.constant(20 + s1)), m1)
              + ops.srdhm(tf.bitwise.left_shift(y, tf.constant(20 + s2)), m2))
    blocks = ops.rounding_divide_by_pot(ops.srdhm(blocks, mo), -so)
    values = tf.where(ops.flat_tail(scalar, 16), scalar, blocks)
    return ops.clamp_to_output(values, output.zero_point, low, high)


def _mul(op, t, inputs, backend):
    a, b, x, y = _operands(op, t, inputs)
    output = t[op.outputs[0]]
    low, high = activation_range(op.builtinOptions.fusedActivationFunction, output, backend)
    product = (x - a.zero_point) * (y - b.zero_point)
    if backend == "xnnpack":
        scale = np.float32(a.scale) * np.float32(b.scale) / np.float32(output.scale)
        values = ops.requantize_float(product, scale)
    else:
        multiplier, shift = ops.quantize_multiplier(
            np.float64(a.scale) * np.float64(b.scale) / np.float64(output.scale))
        values = ops.multiply_by_quantized_multiplier(product, multiplier, shift)
    return ops.clamp_to_output(values, output.zero_point, low, high)


def _mean(op, t, inputs, backend):
    source, output = t[op.inputs[0]], t[op.outputs[0]]
    axes = sorted(int(a) % len(source.shape) for a in np.ravel(t[op.inputs[1]].data))
    keep_dims = bool(op.builtinOptions.keepDims)
    x = tf.cast(inputs[0], tf.int64)
    count = int(np.prod([source.shape[a] for a in axes]))
    sums = tf.reduce_sum(x, axis=axes, keepdims=keep_dims)
    if backend == "xnnpack":
        scale = (np.float32(source.scale) / np.float32(output.scale)) * (np.float32(1) / np.float32(count))
        offset = np.float32(output.zero_point) - np.float32(count * source.zero_point) * scale
        values = tf.round(tf.cast(sums, tf.float32) * scale + offset)
        return tf.cast(tf.clip_by_value(values, *_INT8_RANGE), tf.int32)
    if keep_dims and len(source.shape) == 4 and axes == [1, 2]:
        # optimized Mean: the raw sum requantized, the zero point's share rounded apart.
        shift_f = np.float32(source.zero_point) * np.float32(source.scale) / np.float32(output.scale)
        shift_f = shift_f + np.float32(0.5) if shift_f > 0 else shift_f - np.float32(0.5)
        bias = output.zero_point - int(shift_f)
        real = np.float32(source.scale) / (np.float32(count) * np.float32(output.scale))
        multiplier, shift = ops.quantize_multiplier(np.float64(real))
        up = ops.multiply_by_quantized_multiplier_ruy(sums, multiplier, shift)
        away = ops.multiply_by_quantized_multiplier(sums, multiplier, shift)
        values = tf.where(ops.channel_tail(away, 16), away, up)
        return ops.clamp_to_output(values, bias, *_INT8_RANGE)
    m0, e0 = ops.quantize_multiplier(np.float64(source.scale) / np.float64(output.scale))
    k = min(int(np.floor(np.log2(count))), 32, 31 + int(e0[0]))
    multiplier = (int(m0[0]) << k) // count
    values = ops.multiply_by_quantized_multiplier(sums - count * source.zero_point,
                                                  [multiplier], [int(e0[0]) - k])
    return ops.clamp_to_output(values, output.zero_point, *_INT8_RANGE)


def _average_pool_2d(op, t, inputs, backend):
    opts = op.builtinOptions
    low, high = activation_range(opts.fusedActivationFunction, t[op.outputs[0]], backend)
    sums, counts = ops.window_sums(inputs[0], [opts.filterHeight, opts.filterWidth],
                                   [opts.strideH, opts.strideW], _PADDING[opts.padding])
    sums, counts = tf.cast(sums, tf.int64), tf.cast(counts, tf.int64)
    half = counts // 2
    values = tf.truncatediv(tf.where(sums > 0, sums + half, sums - half), counts)
    return tf.cast(tf.clip_by_value(values, low, high), tf.int32)


def _concatenation(op, t, inputs, backend):
    axis = int(op.builtinOptions.axis)
    scales = {(t[i].scale, t[i].zero_point) for i in op.inputs}
    if len(scales) > 1:
        raise UnsupportedOperatorError("CONCATENATION of int8 inputs with different scales")
    values = [v if v is not None else tf.constant(t[i].data.astype(np.int32))
              for i, v in zip(op.inputs, inputs)]
    return tf.concat(values, axis)


def _pad(op, t, inputs, backend):
    paddings = t[op.inputs[1]].data.astype(np.int64)
    return tf.pad(inputs[0], paddings, constant_values=t[op.outputs[0]].zero_point)


def _dequantize(op, t, inputs, backend):
    source = t[op.inputs[0]]
    return ops.dequantize(inputs[0], source.scale, source.zero_point, backend)


def _reshape(op, t, inputs, backend):
    shape = list(t[op.outputs[0]].shape)
    return tf.reshape(inputs[0], [-1, *shape[1:]] if shape else [])


def _space_to_batch_nd(op, t, inputs, backend):
    # Padding holds the zero point (how the converter lowers dilated convolutions).
    zero_point = t[op.outputs[0]].zero_point
    moved = tf.space_to_batch_nd(inputs[0] - zero_point, t[op.inputs[1]].data.astype(np.int32),
                                 t[op.inputs[2]].data.astype(np.int32))
    return moved + zero_point


def _batch_to_space_nd(op, t, inputs, backend):
    return tf.batch_to_space(inputs[0], t[op.inputs[1]].data.astype(np.int32),
                             t[op.inputs[2]].data.astype(np.int32))


def _same_scale(op, t):
    """Raises unless every int8 input of `op` has its output's scale and zero point."""
    output = t[op.outputs[0]]
    for i in op.inputs:
        if i >= 0 and (t[i].scale, t[i].zero_point) != (output.scale, output.zero_point):
            raise UnsupportedOperatorError(
                f"{t[i].name!r}: an elementwise min/max/ReLU whose input and output "
                "quantization differ (the integer model computes the equal case)")


def _elementwise_extreme(reduce):
    def compute(op, t, inputs, backend):
        _same_scale(op, t)
        x, y = (v if v is not None else tf.constant(t[i].data.astype(np.int32))
                for i, v in zip(op.inputs, inputs))
        return reduce(x, y)
    compute.__name__ = f"_{reduce.__name__}"
    return compute


def _activation_op(activation, name):
    """RELU, RELU6, RELU_N1_TO_1 as operators: the fused activation's clamp."""
    def compute(op, t, inputs, backend):
        _same_scale(op, t)
        return tf.clip_by_value(inputs[0], *activation_range(activation, t[op.outputs[0]],
                                                             backend))
    compute.__name__ = f"_{name}"
    return compute


_OPERATORS: dict[str, Callable] = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    "MAX_POOL_2D": _max_pool_2d,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "RESHAPE": _reshape,
    "ADD": _add,
    "MEAN": _mean,
    "MUL": _mul,
    "AVERAGE_POOL_2D": _average_pool_2d,
    "CONCATENATION": _concatenation,
    "PAD": _pad,
    "PADV2": _pad,
    "SPACE_TO_BATCH_ND": _space_to_batch_nd,
    "MINIMUM": _elementwise_extreme(tf.minimum),
    "MAXIMUM": _elementwise_extreme(tf.maximum),
    "RELU": _activation_op(_A.RELU, "relu"),
    "RELU6": _activation_op(_A.RELU6, "relu6"),
    "RELU_N1_TO_1": _activation_op(_A.RELU_N1_TO_1, "relu_n1_to_1"),
    "BATCH_TO_SPACE_ND": _batch_to_space_nd,
    **integer_activations.OPERATORS,  # LOGISTIC, TANH, HARD_SWISH, SOFTMAX
}
# int32 shape arithmetic whose result only feeds RESHAPE's shape input; the integer
# model reshapes to the output tensor's static shape instead.
_SHAPE_OPS = frozenset({"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER",
                        "REDUCE_PROD"})


def _shape_only_tensors(model, subgraph) -> set[int]:
    """Tensors computed by shape ops that reach nothing but RESHAPE shape inputs."""
    consumers: dict[int, list] = {}
    for op in subgraph.operators:
        for position, i in enumerate(op.inputs):
            consumers.setdefault(int(i), []).append((op, position))
    names = {id(op): builtin_op_name(builtin_code(model, op)) for op in subgraph.operators}
    shape_only: set[int] = set()
    outputs = {int(i) for i in subgraph.outputs}
    for op in reversed(subgraph.operators):  # consumers come after producers
        if names[id(op)] not in _SHAPE_OPS:
            continue
        for o in op.outputs:
            uses = consumers.get(int(o), [])
            if int(o) not in outputs and uses and all(
                    (names[id(c)] == "RESHAPE" and p == 1) or
                    (names[id(c)] in _SHAPE_OPS and all(int(x) in shape_only for x in c.outputs))
                    for c, p in uses):
                shape_only.add(int(o))
    return shape_only


@dataclasses.dataclass(frozen=True)
class ActivationTensor:
    """An int8 tensor an operator writes: flatbuffer index and name, scale, zero point,
    and the operator (e.g. "CONV_2D")."""
    index: int
    name: str
    scale: float
    zero_point: int
    operator: str


def _operator_name(compute) -> str:
    return compute.__name__.lstrip("_").upper()


class IntegerModel(keras.Model):
    """Runs a flatbuffer's operators with one backend's integer arithmetic.

    Built by `integer_model`; inputs and outputs are those of the flatbuffer (float32
    for a float-interface export, int8 values as int32 otherwise).
    """

    def __init__(self, flatbuffer: bytes, backend: str = "xnnpack", **kwargs):
        super().__init__(**kwargs)
        check_choice("integer_model", "backend", backend, BACKENDS)
        self.backend = backend
        self.flatbuffer = bytes(flatbuffer)
        summary = inspect_flatbuffer(self.flatbuffer)  # validates the bytes
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(self.flatbuffer))
        subgraph = model.subgraphs[0]
        self._tensors = _read_tensors(model, subgraph)
        self._steps = []
        shape_only = _shape_only_tensors(model, subgraph)
        for op in subgraph.operators:
            name = builtin_op_name(builtin_code(model, op))
            if name in _SHAPE_OPS and all(int(o) in shape_only for o in op.outputs):
                continue
            outputs_float = any(self._tensors[int(o)].dtype == np.float32 for o in op.outputs)
            if outputs_float and name != "DEQUANTIZE":
                raise UnsupportedOperatorError(
                    f"{name} (operator {len(self._steps)}) computes in float; integer_model "
                    "computes int8 flatbuffers")
            if name not in _OPERATORS:
                raise UnsupportedOperatorError(
                    f"integer_model does not compute {name} yet; it computes "
                    f"{', '.join(sorted(_OPERATORS))}")
            self._steps.append((_OPERATORS[name], op))
        self._input_indices = [int(i) for i in subgraph.inputs]
        self._output_indices = ordered_output_tensors(summary)

    def activation_tensors(self) -> list[ActivationTensor]:
        """The int8 tensors its operators write, in graph order."""
        found = []
        for compute, op in self._steps:
            tensor = self._tensors[int(op.outputs[0])]
            if tensor.dtype == np.int8 and tensor.scales.size == 1:
                found.append(ActivationTensor(tensor.index, tensor.name, tensor.scale,
                                              tensor.zero_point, _operator_name(compute)))
        return found

    def tensor_values(self, inputs, indices) -> dict[int, np.ndarray]:
        """The dequantized values (float32) of the tensors `indices` for `inputs`."""
        values = self._run(inputs)
        return {i: np.asarray(ops.dequantize(values[i], self._tensors[i].scale,
                                             self._tensors[i].zero_point, "xnnpack"))
                for i in indices}

    def _run(self, inputs):
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        values = {}
        for index, x in zip(self._input_indices, inputs):
            tensor = self._tensors[index]
            values[index] = tf.cast(x, tf.float32 if tensor.dtype == np.float32 else tf.int32)
        for compute, op in self._steps:
            args = [values.get(i) if i >= 0 else None for i in op.inputs]
            values[int(op.outputs[0])] = compute(op, self._tensors, args, self.backend)
        return values

    def call(self, inputs):
        values = self._run(inputs)
        outputs = [values[i] for i in self._output_indices]
        return outputs[0] if len(outputs) == 1 else outputs


def unsupported(flatbuffer: bytes) -> Optional[str]:
    """None if `IntegerModel` computes `flatbuffer`, else why not."""
    try:
        IntegerModel(flatbuffer)
    except UnsupportedOperatorError as error:
        return str(error)
    return None


def run_integer_model(model: IntegerModel, arrays, batch_size: int = 256) -> list[np.ndarray]:
    """`model` over every sample, `batch_size` at a time with the last batch zero-padded,
    as `run_litert` runs LiteRT (which values round which way depends on the batch)."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    pieces = []
    for begin in range(0, n, batch_size):
        chunk = [a[begin:begin + batch_size] for a in arrays]
        rows = len(chunk[0])
        if rows < batch_size and n > batch_size:
            chunk = [np.concatenate([c, np.zeros((batch_size - rows, *c.shape[1:]), c.dtype)])
                     for c in chunk]
        outputs = model(chunk if len(chunk) > 1 else chunk[0])
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        pieces.append([np.asarray(o)[:rows] for o in outputs])
    return [np.concatenate(parts) for parts in zip(*pieces)]
