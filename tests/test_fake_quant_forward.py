"""tfquant.ops.fake_quant against TensorFlow's own FakeQuant ops: the forward and the
clipped-mode gradient on random cases, multi-tile tensors, special values, empty
tensors and in graph mode.

Forward: bit identity with fake_quant_with_min_max_vars[_per_channel].
Gradient: dx identical, dmin/dmax equal up to float summation order.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfquant.ops import fake_quant
from fake_quant_helpers import (assert_range_grads_close, assert_same_bits, our_gradient,
                                tf_forward, tf_gradient)
from fake_quant_inputs import random_cases, random_inputs, unit_range


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_tf(seed):
    for ctx, (x, dy, mn, mx, num_bits, narrow, axis) in random_cases(seed, 300, 1000):
        ours = fake_quant(x, mn, mx, num_bits=num_bits, narrow_range=narrow, axis=axis)
        assert_same_bits(ours.numpy(), tf_forward(x, mn, mx, num_bits, narrow, axis), ctx)
        dx, dmin, dmax = our_gradient(dy, x, mn, mx, num_bits, narrow, axis)
        rdx, rdmin, rdmax = tf_gradient(dy, x, mn, mx, num_bits, narrow, axis)
        assert_same_bits(dx, rdx, "dx " + ctx)
        assert dmin.shape == np.shape(mn) and dmax.shape == np.shape(mx), ctx
        assert_range_grads_close(dmin, rdmin, dy, "dmin " + ctx)
        assert_range_grads_close(dmax, rdmax, dy, "dmax " + ctx)


# Several tiles: long rows cut into pieces, > 256 channels, channels last.
@pytest.mark.parametrize("shape,axis", [
    ((70001,), None),
    ((3, 40000), 0),
    ((40000, 3), 1),
    ((5, 300, 20), 1),
    ((2, 9, 9, 700), -1),
    ((6, 33000), None),
])
def test_multi_tile_tensors_match_tf(shape, axis):
    rng = np.random.default_rng(7)
    if axis is None:
        mn, mx = np.float32(-1.3), np.float32(2.1)
        lo, hi = mn, mx
    else:
        c = shape[axis]
        mn = -rng.uniform(0.1, 3, c).astype(np.float32)
        mx = rng.uniform(0.1, 3, c).astype(np.float32)
        mn[::17], mx[::17] = 0.0, 0.0  # some zero ranges
        bshape = [1] * len(shape)
        bshape[axis] = c
        lo, hi = mn.reshape(bshape), mx.reshape(bshape)
    x = random_inputs(rng, shape, lo, hi, 8)
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_same_bits(fake_quant(x, mn, mx, axis=axis).numpy(), tf_forward(x, mn, mx, 8, False, axis))
    dx, dmin, dmax = our_gradient(dy, x, mn, mx, 8, False, axis)
    rdx, rdmin, rdmax = tf_gradient(dy, x, mn, mx, 8, False, axis)
    assert_same_bits(dx, rdx)
    assert_range_grads_close(dmin, rdmin, dy)
    assert_range_grads_close(dmax, rdmax, dy)


# ---------------------------------------------------------------- special values

SPECIALS = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1e30, -1e30, 0.5], np.float32)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_nan_and_inf_inputs_match_tf(axis):
    # NaN -> NaN, -Inf -> nudged_min, +Inf -> nudged_max; gradient: dy*0
    # for all three, -Inf counts to dmin, +Inf to dmax, NaN to neither.
    x = np.tile(SPECIALS, (3, 4)).reshape(3, 32)  # NaN also inside SIMD-size runs
    mn = np.float32(-1.0) if axis is None else np.full(x.shape[axis], -1.0, np.float32)
    mx = np.float32(2.0) if axis is None else np.full(x.shape[axis], 2.0, np.float32)
    y = fake_quant(x, mn, mx, axis=axis).numpy()
    assert_same_bits(y, tf_forward(x, mn, mx, 8, False, axis))
    assert np.isnan(y[np.isnan(x)]).all()
    assert (y[x == -np.inf] == -1.0).all() and (y[x == np.inf] == 2.0).all()
    dy = np.ones_like(x)
    dx, dmin, dmax = our_gradient(dy, x, mn, mx, 8, False, axis)
    rdx, rdmin, rdmax = tf_gradient(dy, x, mn, mx, 8, False, axis)
    assert_same_bits(dx, rdx)
    assert (dx[~np.isfinite(x)] == 0).all()
    np.testing.assert_array_equal(dmin, rdmin)
    np.testing.assert_array_equal(dmax, rdmax)


def test_non_finite_upstream_gradient_matches_tf():
    x = np.linspace(-3, 3, 40).astype(np.float32).reshape(4, 10)
    dy = np.ones_like(x)
    dy[0, 0], dy[1, 5], dy[3, 9] = np.nan, np.inf, -np.inf  # below, inside, above
    for axis, mn, mx in [(None, np.float32(-1), np.float32(1)),
                         (0, np.full(4, -1, np.float32), np.full(4, 1, np.float32))]:
        dx, dmin, dmax = our_gradient(dy, x, mn, mx, 8, False, axis)
        rdx, rdmin, rdmax = tf_gradient(dy, x, mn, mx, 8, False, axis)
        assert_same_bits(dx, rdx)
        np.testing.assert_array_equal(dmin, rdmin)  # NaN where TF has NaN
        np.testing.assert_array_equal(dmax, rdmax)


def test_zero_range_passes_everything():
    x = np.array([np.nan, -np.inf, -2, 0, 3, np.inf], np.float32)
    dy = np.arange(1, 7, dtype=np.float32)
    y = fake_quant(x, 0.0, 0.0).numpy()
    assert_same_bits(y, tf_forward(x, np.float32(0), np.float32(0), 8, False, None))
    np.testing.assert_array_equal(y, np.zeros(6, np.float32))
    dx, dmin, dmax = our_gradient(dy, x, np.float32(0), np.float32(0), 8, False, None)
    np.testing.assert_array_equal(dx, dy)
    assert dmin == 0 and dmax == 0


def test_equal_nonzero_min_max_gives_nan_like_tf():
    x = np.array([0.5, 1.0, 2.0], np.float32)
    assert_same_bits(fake_quant(x, 1.0, 1.0).numpy(),
                     tf_forward(x, np.float32(1), np.float32(1), 8, False, None))
    mn = mx = np.ones(3, np.float32)
    assert_same_bits(fake_quant(x, mn, mx, axis=0).numpy(), tf_forward(x, mn, mx, 8, False, 0))


@pytest.mark.parametrize("shape,axis", [((0,), None), ((2, 0, 3), None), ((2, 0, 3), 1),
                                        ((2, 0, 3), 2), ((0,), 0)])
def test_empty_tensors_give_empty_outputs_and_zero_range_gradients(shape, axis):
    x = np.zeros(shape, np.float32)
    mn, mx = unit_range(shape, axis)
    y = fake_quant(x, mn, mx, axis=axis)
    assert y.shape == shape
    dx, dmin, dmax = our_gradient(x, x, mn, mx, 8, False, axis)
    assert dx.shape == shape
    np.testing.assert_array_equal(dmin, np.zeros_like(mn))
    np.testing.assert_array_equal(dmax, np.zeros_like(mx))


# ---------------------------------------------------------------- API behaviour

def test_tf_function_with_variable_ranges_matches_tf_and_has_range_gradients():
    mn = tf.Variable([-1.0, -0.5, -2.0])
    mx = tf.Variable([1.0, 0.5, 2.0])
    x = np.random.default_rng(3).standard_normal((4, 3, 5)).astype(np.float32) * 2

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = fake_quant(x, mn, mx, num_bits=4, narrow_range=True, axis=1)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, [mn, mx])

    y, (gmin, gmax) = step(tf.constant(x))
    assert_same_bits(y.numpy(), tf_forward(x, mn.numpy(), mx.numpy(), 4, True, 1))
    assert gmin.shape == (3,) and gmax.shape == (3,)


def test_unknown_shapes_in_graph_match_tf_and_wrong_sizes_fail_at_run_time():
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.float32)])
    def f(x, r):
        return fake_quant(x, -r, r, axis=-1)

    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    r = np.array([1, 2, 3, 4], np.float32)
    assert_same_bits(f(x, r).numpy(), tf_forward(x, -r, r, 8, False, -1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="min has 3 elements"):
        f(x, r[:3])


def test_other_float_dtypes_round_trip():
    x = tf.constant([-1.5, 0.26, 0.7, 3.0], tf.float16)
    y = fake_quant(x, -1.0, 1.0, num_bits=3)
    assert y.dtype == tf.float16
    ref = tf_forward(x.numpy().astype(np.float32), np.float32(-1), np.float32(1), 3, False, None)
    np.testing.assert_array_equal(y.numpy(), ref.astype(np.float16))
