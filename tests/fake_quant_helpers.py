"""Shared by the test_fake_quant_*.py files: TensorFlow's FakeQuant ops as the
reference, tfquant's gradient through the tape, and bit-exact comparison. The random
cases are in fake_quant_inputs.py (numpy only)."""

import numpy as np
import tensorflow as tf

from tfquant.ops import fake_quant
from tfquant.ops import _library

OPS = _library.load_op_library()

# ---------------------------------------------------------------- references

def tf_forward(x, mn, mx, num_bits, narrow_range, axis):
    if axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, mn, mx, num_bits=num_bits, narrow_range=narrow_range).numpy()
    # TF quantizes per channel only along the last axis: move `axis` there.
    xt = np.moveaxis(x, axis, -1)
    yt = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        xt, mn, mx, num_bits=num_bits, narrow_range=narrow_range).numpy()
    return np.moveaxis(yt, -1, axis)


def tf_gradient(dy, x, mn, mx, num_bits, narrow_range, axis):
    if axis is None:
        dx, dmin, dmax = tf.quantization.fake_quant_with_min_max_vars_gradient(
            dy, x, mn, mx, num_bits=num_bits, narrow_range=narrow_range)
        return dx.numpy(), dmin.numpy(), dmax.numpy()
    dx, dmin, dmax = tf.quantization.fake_quant_with_min_max_vars_per_channel_gradient(
        np.moveaxis(dy, axis, -1), np.moveaxis(x, axis, -1), mn, mx,
        num_bits=num_bits, narrow_range=narrow_range)
    return np.moveaxis(dx.numpy(), -1, axis), dmin.numpy(), dmax.numpy()


def our_gradient(dy, x, mn, mx, num_bits, narrow_range, axis):
    """Through the registered gradient, as training would use it."""
    xt, mnv, mxv = tf.constant(x), tf.constant(mn), tf.constant(mx)
    with tf.GradientTape() as tape:
        tape.watch([xt, mnv, mxv])
        y = fake_quant(xt, mnv, mxv, num_bits=num_bits, narrow_range=narrow_range, axis=axis)
    dx, dmin, dmax = tape.gradient(y, [xt, mnv, mxv], output_gradients=tf.constant(dy))
    return dx.numpy(), dmin.numpy(), dmax.numpy()


def assert_same_bits(actual, expected, context=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, context
    assert actual.dtype == expected.dtype == np.float32, context
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), f"NaN positions differ {context}"
    same = actual.view(np.uint32) == expected.view(np.uint32)
    bad = ~same & ~nan_a
    assert not bad.any(), (
        f"{bad.sum()} elements differ {context}: first at {np.argwhere(bad)[0]}: "
        f"{actual[bad][:3]} vs {expected[bad][:3]}")


def assert_range_grads_close(actual, expected, dy, context=""):
    # TF sums in float (Eigen tree order), tfquant in double per tile.
    atol = 1e-6 * float(np.abs(dy).sum()) + 1e-7
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol, err_msg=context)
