"""Fake quantization composed of TensorFlow ops, for XLA clusters.

XLA compiles only ops it has kernels for, and tfquant's C++ op is not one of them; TF's
own XLA FakeQuant kernels give other bits than its CPU kernels (per channel) and NaN for
a zero range. Inside an XLA cluster (`compile(jit_compile=True)`, `tf.function(
jit_compile=True)`) `tfquant.ops.fake_quant` therefore builds this graph instead: the
arithmetic of cc_ops/kernels/fake_quant.h (TF's CPU kernels) op by op, so the forward gives
the same bits, and the same straight-through and learned-range gradients, the range
gradients summed in float32 where the C++ op sums in double.
"""

import tensorflow as tf
from tensorflow.python.ops import control_flow_util


def in_xla_context():
    """True while tracing a function XLA compiles."""
    graph = tf.compat.v1.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)


def _channel_view(values, rank, axis):
    """Per-channel `values` shaped to broadcast against an input of `rank` (axis −1: per
    tensor, a scalar)."""
    if axis == -1:
        return values
    shape = [1] * rank
    shape[axis] = -1
    return tf.reshape(values, shape)


def _divide(a, b):
    """a / b correctly rounded to float32. XLA turns a division by a constant or a
    broadcast into a multiplication by its reciprocal, which can be 1 ulp off; divided
    in float64 and rounded once to float32 the quotient is the IEEE float32 one (53 ≥
    2·24 + 2 bits: the double rounding is innocuous)."""
    return tf.cast(tf.cast(a, tf.float64) / tf.cast(b, tf.float64), tf.float32)


def _round_half_away(z):
    """std::round for z ≥ 0, exactly (floor(z + 0.5) can round z + 0.5 up)."""
    whole = tf.floor(z)
    return whole + tf.where(z - whole >= 0.5, 1.0, 0.0)


def _grid(min, max, num_bits, narrow_range):
    """The nudged grid of fake_quant.h's NudgeRange, per channel."""
    qmin = 1.0 if narrow_range else 0.0
    qmax = float(2 ** num_bits - 1)
    scale = _divide(max - min, qmax - qmin)
    inv_scale = _divide(qmax - qmin, max - min)  # on its own, not 1/scale, as TF does
    from_min = qmin - _divide(min, scale)
    zero_point = tf.where(from_min < qmin, qmin, tf.where(
        from_min > qmax, qmax, tf.where(tf.math.is_nan(from_min), qmin,
                                        _round_half_away(from_min))))
    nudged_min = (qmin - zero_point) * scale
    nudged_max = (qmax - zero_point) * scale
    quant_zero = tf.floor(-nudged_min * inv_scale + 0.5)
    zero_range = tf.logical_and(tf.equal(min, 0.0), tf.equal(max, 0.0))
    return dict(scale=scale, inv_scale=inv_scale, nudged_min=nudged_min,
                nudged_max=nudged_max, quant_zero=quant_zero, zero_range=zero_range,
                inv_levels=1.0 / (qmax - qmin))


def composed_fake_quant(x, min, max, num_bits, narrow_range, axis, range_gradient):
    """`tfquant.ops.fake_quant` (checked arguments, float32 x, axis −1 or ≥ 0) as TF ops."""
    rank = x.shape.rank
    reduce_axes = [a for a in range(rank) if a != axis] if axis != -1 else None

    @tf.custom_gradient
    def quantize(x, min, max):
        g = {k: _channel_view(v, rank, axis) if k != "inv_levels" else v
             for k, v in _grid(min, max, num_bits, narrow_range).items()}
        clamped = tf.maximum(tf.minimum(x, g["nudged_max"]), g["nudged_min"])
        shifted = clamped - g["nudged_min"]
        # TF divides by the scale per tensor and multiplies by its inverse per channel.
        q = _divide(shifted, g["scale"]) if axis == -1 else shifted * g["inv_scale"]
        t = q - g["quant_zero"]
        rounded = tf.floor(t + 0.5)
        y = tf.where(g["zero_range"], tf.zeros_like(x), rounded * g["scale"])

        def gradient(dy):
            inside = tf.logical_and(x >= g["nudged_min"], x <= g["nudged_max"])
            zero_range = tf.broadcast_to(g["zero_range"], tf.shape(x))
            mask = tf.where(tf.logical_or(inside, zero_range), 1.0, 0.0)
            below = tf.where(tf.logical_and(x < g["nudged_min"], ~zero_range), 1.0, 0.0)
            above = tf.where(tf.logical_and(x > g["nudged_max"], ~zero_range), 1.0, 0.0)
            if range_gradient == "learned":
                w = tf.where(tf.logical_and(inside, ~zero_range),
                             (rounded - t) * g["inv_levels"], 0.0)
                below, above = below - w, above + w
            return (dy * mask, tf.reduce_sum(dy * below, axis=reduce_axes),
                    tf.reduce_sum(dy * above, axis=reduce_axes))

        return y, gradient

    return quantize(x, min, max)
