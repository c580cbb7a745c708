"""The integer arithmetic of LiteRT's int8 kernels, as TensorFlow ops.

Each function takes and returns int32 tensors holding the int8 (or int32) values of a
flatbuffer tensor and computes exactly what one LiteRT backend computes
(docs/ARCHITECTURE.md §5):

- "builtin": TFLite's own kernels. Requantization multiplies the int32 accumulator by a
  31-bit fixed-point multiplier (`quantize_multiplier`, from a double-precision real
  scale) with rounding doubling high multiply and a rounding right shift
  (`multiply_by_quantized_multiplier`).
- "xnnpack": the XNNPACK delegate. The accumulator is converted to float32, multiplied
  by a float32 scale and rounded half to even (`requantize_float`).

Sums of products are computed in float64, exact for any int8 layer (|sum| < 2^53).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def round_half_away(x):
    """std::round / TfLiteRound: ties away from zero (numpy's round is half to even)."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_multiplier(real_multiplier):
    """TFLite's QuantizeMultiplier: real = m · 2^(shift − 31), m a 31-bit int32.

    `real_multiplier`: a double (or array of doubles); returns int64 arrays (m, shift).
    """
    real = np.atleast_1d(np.asarray(real_multiplier, np.float64))
    fraction, shift = np.frexp(real)
    m = round_half_away(fraction * 2.0**31).astype(np.int64)
    carry = m == 2**31
    m = np.where(carry, m // 2, m)
    shift = np.where(carry, shift + 1, shift).astype(np.int64)
    tiny = shift < -31  # below 2^-32: TFLite flushes the multiplier to zero
    m = np.where(tiny | (real == 0), 0, m)
    shift = np.where(tiny | (real == 0), 0, shift)
    return m, shift


def _saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul on int64 tensors holding int32."""
    product = a * b
    nudge = tf.where(product >= 0, tf.constant(1 << 30, tf.int64),
                     tf.constant(1 - (1 << 30), tf.int64))
    high = tf.truncatediv(product + nudge, tf.constant(1 << 31, tf.int64))
    overflow = tf.logical_and(tf.equal(a, INT32_MIN), tf.equal(b, INT32_MIN))
    return tf.where(overflow, tf.constant(INT32_MAX, tf.int64), high)


def _rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent, ties away from zero."""
    mask = tf.bitwise.left_shift(tf.ones_like(exponent), exponent) - 1
    remainder = tf.bitwise.bitwise_and(x, mask)
    threshold = tf.bitwise.right_shift(mask, tf.ones_like(mask)) + tf.cast(x < 0, tf.int64)
    return tf.bitwise.right_shift(x, exponent) + tf.cast(remainder > threshold, tf.int64)


def multiply_by_quantized_multiplier(acc, multiplier, shift):
    """TFLite's MultiplyByQuantizedMultiplier (double rounding) of int32 `acc`.

    `multiplier`, `shift`: int64 arrays from `quantize_multiplier`, broadcast against
    the last axis of `acc` (one per channel) or scalars.
    """
    acc = tf.cast(acc, tf.int64)
    multiplier = tf.constant(np.asarray(multiplier, np.int64))
    shift = np.asarray(shift, np.int64)
    left = tf.constant(np.maximum(shift, 0))
    right = tf.constant(np.maximum(-shift, 0))
    shifted = tf.bitwise.left_shift(acc, left)
    return _rounding_divide_by_pot(
        _saturating_rounding_doubling_high_mul(shifted, multiplier),
        right + tf.zeros_like(shifted))


def requantize_float(acc, scale):
    """XNNPACK's fp32 requantization: round_half_even(float32(acc) · float32 scale)."""
    scaled = tf.cast(acc, tf.float32) * tf.constant(np.asarray(scale, np.float32))
    return tf.cast(tf.round(scaled), tf.int64)


def clamp_to_output(values, zero_point, low, high):
    """Adds the output zero point and clamps to the (activation) range, as int32."""
    values = tf.cast(values, tf.int64) + int(zero_point)
    return tf.cast(tf.clip_by_value(values, low, high), tf.int32)


def flat_tail(x, block):
    """True for the last (size mod `block`) elements of `x` in row-major order.

    TFLite's x86 kernels run NEON code through NEON_2_SSE on blocks of `block` values
    and a scalar loop, which rounds differently, on what is left over.
    """
    return row_tail(x, tf.size(x, out_type=tf.int64), block)


def row_tail(x, run, block):
    """True for the last (run mod `block`) elements of each run of `run` consecutive
    elements of `x` (row-major); `run` an int or an int64 scalar tensor (the rows a
    broadcast kernel loops over)."""
    run = tf.cast(run, tf.int64)
    size = tf.size(x, out_type=tf.int64)
    position = tf.math.floormod(tf.reshape(tf.range(size), tf.shape(x, out_type=tf.int64)),
                                run)
    return position >= run - tf.math.floormod(run, block)


def channel_tail(x, block):
    """True for the last (channels mod `block`) channels (last axis) of `x`."""
    channels = x.shape[-1]
    return tf.constant(np.arange(channels) >= channels - channels % block)


def quantize_float(x, scale, zero_point, backend, low=-128, high=127):
    """QUANTIZE float32 → int8.

    xnnpack, and builtin on blocks of 8: round(x · float32(1 / scale)), ties to even;
    builtin's scalar tail: round(x / scale) in double, ties away from zero.
    """
    x = tf.cast(x, tf.float32)
    rounded = tf.round(x * (np.float32(1) / np.float32(scale)))
    if backend == "builtin":
        scaled = tf.cast(x, tf.float64) / np.float64(np.float32(scale))
        away = tf.cast(tf.sign(scaled) * tf.floor(tf.abs(scaled) + 0.5), tf.float32)
        rounded = tf.where(flat_tail(x, 8), away, rounded)
    q = tf.cast(rounded, tf.int64) + int(zero_point)
    return tf.cast(tf.clip_by_value(q, low, high), tf.int32)


def dequantize(q, scale, zero_point, backend):
    """DEQUANTIZE int8 → float32. xnnpack: scale · (q − zero point); builtin on blocks
    of 8: q · scale − zero point · scale (float32 products), its tail in double."""
    scale = np.float32(scale)
    if backend == "xnnpack":
        return (tf.cast(q, tf.float32) - np.float32(zero_point)) * scale
    blocks = tf.cast(q, tf.float32) * scale - np.float32(zero_point) * scale
    exact = tf.cast((tf.cast(q, tf.float64) - float(zero_point)) * np.float64(scale), tf.float32)
    return tf.where(flat_tail(q, 8), exact, blocks)


def conv_sums(x, input_zero_point, filters, strides, padding, dilations):
    """int32 sums Σ (x − z_x)·w of a CONV_2D, `filters` as [H, W, I, O] float64.

    Taps outside the input add nothing, which is padding x − z_x with zeros.
    """
    shifted = tf.cast(x, tf.float64) - float(input_zero_point)
    sums = tf.nn.conv2d(shifted, filters, strides=strides, padding=padding,
                        dilations=dilations)
    return tf.cast(sums, tf.int64)


def depthwise_sums(x, input_zero_point, filters, strides, padding, dilations):
    """int32 sums of a DEPTHWISE_CONV_2D, `filters` as [H, W, I, multiplier] float64."""
    shifted = tf.cast(x, tf.float64) - float(input_zero_point)
    sums = tf.nn.depthwise_conv2d(shifted, filters, strides=[1, *strides, 1],
                                  padding=padding, dilations=dilations)
    return tf.cast(sums, tf.int64)


def matmul_sums(x, input_zero_point, weights):
    """int32 sums of a FULLY_CONNECTED, `weights` as [I, O] float64."""
    shifted = tf.cast(x, tf.float64) - float(input_zero_point)
    return tf.cast(tf.matmul(shifted, weights), tf.int64)


def multiply_by_quantized_multiplier_ruy(acc, multiplier, shift):
    """ruy's requantization (TFLite's CONV_2D and FULLY_CONNECTED on x86): the doubling
    high multiply and the right shift each round ties up, toward +∞."""
    acc = tf.cast(acc, tf.int64)
    shift = np.asarray(shift, np.int64)
    left = tf.constant(np.maximum(shift, 0))
    right = np.maximum(-shift, 0)
    shifted = tf.bitwise.left_shift(acc, left)
    high = tf.bitwise.right_shift(shifted * tf.constant(np.asarray(multiplier, np.int64))
                                  + (1 << 30), tf.constant(31, tf.int64))
    rounding = tf.constant(np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0))
    return tf.bitwise.right_shift(high + rounding, tf.constant(right) + tf.zeros_like(high))


def rounding_divide_by_pot(x, exponent):
    """RoundingDivideByPOT of int64 `x` by 2^`exponent` (int64 array), ties away."""
    x = tf.cast(x, tf.int64)
    return _rounding_divide_by_pot(x, tf.constant(np.asarray(exponent, np.int64))
                                   + tf.zeros_like(x))


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul of int64 `a` by the int32 constant `b`."""
    return _saturating_rounding_doubling_high_mul(tf.cast(a, tf.int64),
                                                  tf.constant(np.asarray(b, np.int64)))


def window_sums(x, window, strides, padding):
    """Per-channel sums of `x` over each pooling window and the count of in-bounds taps
    (TFLite clips the window to the input), as float64 (exact)."""
    x = tf.cast(x, tf.float64)
    channels = x.shape[-1]
    ones = tf.ones([*window, channels, 1], tf.float64)
    stride = [1, *strides, 1]
    sums = tf.nn.depthwise_conv2d(x, ones, stride, padding)
    counts = tf.nn.depthwise_conv2d(tf.ones_like(x[:1, ..., :1]), ones[..., :1, :], stride,
                                    padding)
    return sums, counts
