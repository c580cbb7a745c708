"""LiteRT's int8 products (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) as TensorFlow ops.

The accumulator `bias + Σ (x − z_x)·w` is exact (float64); `requantize` turns it into int8
as the backend does (docs/ARCHITECTURE.md §5): builtin with a 31-bit multiplier, ties up
(ruy) or, on depthwise tail channels, away from zero; xnnpack with a float32 scale, ties
to even.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfquant.export import integer_ops as ops
from tfquant.export.integer_tensors import PADDING, FlatTensor, activation_range


def requantize(acc, input_scale, filter_scales, output: FlatTensor, activation, backend,
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
                         [opts.strideH, opts.strideW], PADDING[opts.padding],
                         [opts.dilationHFactor, opts.dilationWFactor])
    return _finish_product(op, t, sums, backend, opts.fusedActivationFunction)


def _depthwise_conv_2d(op, t, inputs, backend):
    x = inputs[0]
    opts = op.builtinOptions
    w = t[op.inputs[1]].data.astype(np.float64)  # [1, H, W, I·multiplier]
    channels = int(t[op.inputs[0]].shape[-1])
    kernel = w[0].reshape(w.shape[1], w.shape[2], channels, -1)
    sums = ops.depthwise_sums(x, t[op.inputs[0]].zero_point, kernel,
                              [opts.strideH, opts.strideW], PADDING[opts.padding],
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


OPERATORS = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
}
