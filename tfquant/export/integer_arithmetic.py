"""LiteRT's int8 conversions, reductions, pools and clamps as TensorFlow ops.

QUANTIZE, DEQUANTIZE, MEAN, AVERAGE_POOL_2D, MAX_POOL_2D, MINIMUM, MAXIMUM and the RELU
operators, per backend (docs/ARCHITECTURE.md §5); ADD, SUB and MUL are in
`integer_binary`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfquant.export import integer_ops as ops
from tfquant.export.integer_tensors import (FUSED, INT8_RANGE, PADDING, activation_range,
                                            operand, same_scale)


def _max_pool_2d(op, t, inputs, backend):
    opts = op.builtinOptions
    low, high = activation_range(opts.fusedActivationFunction, t[op.outputs[0]], backend)
    pooled = tf.nn.max_pool2d(inputs[0], [opts.filterHeight, opts.filterWidth],
                              [opts.strideH, opts.strideW], PADDING[opts.padding])
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
    return ops.clamp_to_output(values, output.zero_point, *INT8_RANGE)


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
        return tf.cast(tf.clip_by_value(values, *INT8_RANGE), tf.int32)
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
        return ops.clamp_to_output(values, bias, *INT8_RANGE)
    m0, e0 = ops.quantize_multiplier(np.float64(source.scale) / np.float64(output.scale))
    k = min(int(np.floor(np.log2(count))), 32, 31 + int(e0[0]))
    multiplier = (int(m0[0]) << k) // count
    values = ops.multiply_by_quantized_multiplier(sums - count * source.zero_point,
                                                  [multiplier], [int(e0[0]) - k])
    return ops.clamp_to_output(values, output.zero_point, *INT8_RANGE)


def _average_pool_2d(op, t, inputs, backend):
    opts = op.builtinOptions
    low, high = activation_range(opts.fusedActivationFunction, t[op.outputs[0]], backend)
    sums, counts = ops.window_sums(inputs[0], [opts.filterHeight, opts.filterWidth],
                                   [opts.strideH, opts.strideW], PADDING[opts.padding])
    sums, counts = tf.cast(sums, tf.int64), tf.cast(counts, tf.int64)
    half = counts // 2
    values = tf.truncatediv(tf.where(sums > 0, sums + half, sums - half), counts)
    return tf.cast(tf.clip_by_value(values, low, high), tf.int32)


def _dequantize(op, t, inputs, backend):
    source = t[op.inputs[0]]
    return ops.dequantize(inputs[0], source.scale, source.zero_point, backend)


def _elementwise_extreme(reduce):
    def compute(op, t, inputs, backend):
        same_scale(op, t)
        return reduce(operand(op, t, inputs, 0), operand(op, t, inputs, 1))
    compute.__name__ = f"_{reduce.__name__}"
    return compute


def _activation_op(activation, name):
    """RELU, RELU6, RELU_N1_TO_1 as operators: the fused activation's clamp, after a
    rescale when the output's quantization is not the input's (NASNet's ReLUs)."""
    def compute(op, t, inputs, backend):
        source, output = t[op.inputs[0]], t[op.outputs[0]]
        low, high = activation_range(activation, output, backend)
        if (source.scale, source.zero_point) == (output.scale, output.zero_point):
            return tf.clip_by_value(inputs[0], low, high)
        multiplier, shift = ops.quantize_multiplier(np.float64(source.scale) / output.scale)
        values = ops.multiply_by_quantized_multiplier(
            tf.cast(inputs[0], tf.int64) - source.zero_point, multiplier, shift)
        return ops.clamp_to_output(values, output.zero_point, low, high)
    compute.__name__ = f"_{name}"
    return compute


OPERATORS = {
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "MEAN": _mean,
    "AVERAGE_POOL_2D": _average_pool_2d,
    "MAX_POOL_2D": _max_pool_2d,
    "MINIMUM": _elementwise_extreme(tf.minimum),
    "MAXIMUM": _elementwise_extreme(tf.maximum),
    "RELU": _activation_op(FUSED.RELU, "relu"),
    "RELU6": _activation_op(FUSED.RELU6, "relu6"),
    "RELU_N1_TO_1": _activation_op(FUSED.RELU_N1_TO_1, "relu_n1_to_1"),
}
