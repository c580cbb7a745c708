"""LiteRT's int8 products (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, BATCH_MATMUL) as
TensorFlow ops.

The accumulator `bias + Σ (x − z_x)·w` is exact (float64); `requantize` turns it into int8
as the backend does (docs/ARCHITECTURE.md §5): builtin with a 31-bit multiplier, ties up
(ruy) or, on depthwise tail channels, away from zero; xnnpack with a float32 scale, ties
to even.

BATCH_MATMUL (attention's two matmuls: both operands activations with zero points, or an
activation times a constant; `adj_x`/`adj_y`, batch axes broadcast) rounds otherwise:
- builtin: QuantizeMultiplier(double(s_x)·double(s_y)/double(s_out)) and gemmlowp's
  MultiplyByQuantizedMultiplier, ties AWAY from zero, on every value (no tails). Ties are
  frequent after SOFTMAX (scale 1/256), which is where ruy's ties-up would part.
- xnnpack: its int8 GEMM has no right-hand zero point, so it takes the op only when the
  right-hand operand is per-tensor with zero point 0 (then float32 scale, ties to even,
  as its FULLY_CONNECTED); otherwise the builtin kernel runs (measured).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfquant.export import integer_ops as ops
from tfquant.export.integer_tensors import (INT8_RANGE, PADDING, FlatTensor,
                                            UnsupportedOperatorError, activation_range,
                                            operand)


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


def _operand(op, t, inputs, k):
    """Input k as float64 minus its zero point (constants read from the file)."""
    return operand(op, t, inputs, k, tf.float64) - float(t[op.inputs[k]].zero_point)


def _batch_matmul_sums(op, t, inputs):
    """int64 sums Σ_k (x − z_x)(y − z_y) of a BATCH_MATMUL, batch axes broadcast."""
    opts = op.builtinOptions
    x = _operand(op, t, inputs, 0)
    y = _operand(op, t, inputs, 1)
    sums = tf.linalg.matmul(x, y, adjoint_a=bool(opts.adjX), adjoint_b=bool(opts.adjY))
    return tf.cast(sums, tf.int64)


def _xnnpack_takes_batch_matmul(op, t) -> bool:
    """Whether the XNNPACK delegate computes this int8 BATCH_MATMUL.

    Its qs8 GEMM has no zero point for the right-hand ("weights") operand, so it takes
    the op only when that operand is per-tensor int8 with zero point 0 (measured:
    every BATCH_MATMUL with a nonzero right-hand zero point stays in the builtins).
    """
    rhs = t[op.inputs[1]]
    return rhs.scales.size == 1 and rhs.zero_point == 0


def _batch_matmul(op, t, inputs, backend):
    """int8 BATCH_MATMUL.

    builtin, and xnnpack when it leaves the op to the builtins: double-precision real
    multiplier, gemmlowp requantization, ties away from zero. xnnpack when it takes the
    op (right-hand zero point 0): float32(acc) · float32 scale, ties to even.
    """
    lhs, rhs, output = t[op.inputs[0]], t[op.inputs[1]], t[op.outputs[0]]
    if rhs.scales.size > 1:
        raise UnsupportedOperatorError("BATCH_MATMUL with a per-channel right-hand side")
    sums = _batch_matmul_sums(op, t, inputs)
    if backend == "xnnpack" and _xnnpack_takes_batch_matmul(op, t):
        scale = np.float32(lhs.scale) * np.float32(rhs.scale) / np.float32(output.scale)
        values = ops.requantize_float(sums, scale)
    else:
        real = np.float64(lhs.scale) * np.float64(rhs.scale) / np.float64(output.scale)
        multiplier, shift = ops.quantize_multiplier(real)
        values = ops.multiply_by_quantized_multiplier(sums, multiplier, shift)
    return ops.clamp_to_output(values, output.zero_point, *INT8_RANGE)


OPERATORS = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    "BATCH_MATMUL": _batch_matmul,
}
