"""tfquant.ops.fake_quant against TensorFlow's own FakeQuant ops.

Forward: bit identity with fake_quant_with_min_max_vars[_per_channel].
Gradient: dx identical, dmin/dmax equal up to float summation order.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
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


# ---------------------------------------------------------------- random cases

DIM_CHOICES = [1, 1, 2, 3, 4, 5, 7, 8, 13]


def random_range(rng, num_bits):
    kind = rng.choice(["straddle", "straddle", "positive", "negative", "tiny",
                       "zero_edge", "both_zero", "wide"])
    if kind == "straddle":
        return -rng.uniform(0.01, 4), rng.uniform(0.01, 4)
    if kind == "positive":  # range not containing 0: nudged to start at 0
        lo = rng.uniform(0.01, 3)
        return lo, lo + rng.uniform(0.01, 3)
    if kind == "negative":
        hi = -rng.uniform(0.01, 3)
        return hi - rng.uniform(0.01, 3), hi
    if kind == "tiny":
        c = rng.uniform(-1, 1)
        return c, c + rng.uniform(1e-6, 1e-3)
    if kind == "zero_edge":
        w = rng.uniform(0.1, 5)
        return (0.0, w) if rng.random() < 0.5 else (-w, 0.0)
    if kind == "both_zero":
        return 0.0, 0.0
    return -rng.uniform(10, 1000), rng.uniform(10, 1000)


def random_inputs(rng, shape, lo, hi, num_bits):
    """Values around and inside [lo, hi], many of them near half-way points
    of the grid where rounding decides."""
    lo_b, hi_b = np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)
    width = np.maximum(hi_b - lo_b, 1e-3)
    x = rng.uniform(lo_b - 0.3 * width, hi_b + 0.3 * width)
    levels = 2 ** num_bits - 1
    k = rng.integers(0, levels, size=shape)
    near_tie = lo_b + (k + 0.5) * (hi_b - lo_b) / levels
    pick = rng.random(shape) < 0.4
    x = np.where(pick, near_tie, x)
    return x.astype(np.float32)


def random_case(rng):
    rank = int(rng.integers(1, 5))
    shape = tuple(int(rng.choice(DIM_CHOICES)) for _ in range(rank))
    num_bits = int(rng.integers(2, 17))
    narrow_range = bool(rng.random() < 0.5)
    if rng.random() < 0.35:
        axis = None
        lo, hi = random_range(rng, num_bits)
        mn, mx = np.float32(lo), np.float32(hi)
        bshape_lo, bshape_hi = mn, mx
    else:
        axis = int(rng.integers(-rank, rank))
        channels = shape[axis]
        pairs = [random_range(rng, num_bits) for _ in range(channels)]
        mn = np.array([p[0] for p in pairs], np.float32)
        mx = np.array([p[1] for p in pairs], np.float32)
        bshape = [1] * rank
        bshape[axis] = channels
        bshape_lo, bshape_hi = mn.reshape(bshape), mx.reshape(bshape)
    x = random_inputs(rng, shape, bshape_lo, bshape_hi, num_bits)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy, mn, mx, num_bits, narrow_range, axis


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_tf(seed):
    rng = np.random.default_rng(1000 + seed)
    for case in range(300):
        x, dy, mn, mx, num_bits, narrow, axis = random_case(rng)
        ctx = (f"[seed {seed} case {case}: shape {x.shape} bits {num_bits} "
               f"narrow {narrow} axis {axis} min {mn} max {mx}]")
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
def test_empty_tensors(shape, axis):
    x = np.zeros(shape, np.float32)
    if axis is None:
        mn, mx = np.float32(-1), np.float32(1)
    else:
        mn = np.full(shape[axis], -1, np.float32)
        mx = np.full(shape[axis], 1, np.float32)
    y = fake_quant(x, mn, mx, axis=axis)
    assert y.shape == shape
    dx, dmin, dmax = our_gradient(x, x, mn, mx, 8, False, axis)
    assert dx.shape == shape
    np.testing.assert_array_equal(dmin, np.zeros_like(mn))
    np.testing.assert_array_equal(dmax, np.zeros_like(mx))


# ---------------------------------------------------------------- API behaviour

def test_graph_mode_and_variables():
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


def test_unknown_shapes_in_graph():
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


# ---------------------------------------------------------------- errors

X = np.linspace(-2, 2, 24).astype(np.float32).reshape(2, 3, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(min=-1.0, max=1.0, num_bits=1), r"num_bits=1 .*2\.\.16"),
    (dict(min=-1.0, max=1.0, num_bits=17), r"num_bits=17 .*2\.\.16"),
    (dict(min=-1.0, max=1.0, num_bits=True), r"num_bits=True"),
    (dict(min=-1.0, max=1.0, axis=3), r"axis=3 .*rank 3.*-3\.\.2"),
    (dict(min=-1.0, max=1.0, axis=-4), r"axis=-4 "),
    (dict(min=-1.0, max=1.0, axis=1), r"min must be 1-D"),
    (dict(min=np.zeros(3, np.float32), max=np.ones(3, np.float32)), r"axis=None .*min .*shape \(3,\)"),
    (dict(min=np.zeros(4, np.float32), max=np.ones(4, np.float32), axis=1), r"min has 4 elements .*3 along axis 1"),
    (dict(min=np.zeros(3, np.float32), max=np.ones(2, np.float32), axis=1), r"max has 2 elements"),
])
def test_wrapper_rejects_static_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fake_quant(X, **kwargs)


def raw_op(x, mn, mx, **attrs):
    return OPS.tfquant_fake_quant(x, mn, mx, **attrs)


@pytest.mark.parametrize("mn,mx,attrs,match", [
    (-1.0, 1.0, dict(num_bits=1), r"num_bits = 1 .*2\.\.16"),
    (-1.0, 1.0, dict(num_bits=17), r"num_bits = 17 .*2\.\.16"),
    (-1.0, 1.0, dict(num_bits=-5), r"num_bits = -5"),
    (2.0, 1.0, {}, r"min = 2 is greater than max = 1"),
    (np.nan, 1.0, {}, r"min = nan is not finite"),
    (-1.0, np.inf, {}, r"max = inf is not finite"),
    ([-1, -1, 3], [1, 1, 2], dict(axis=1), r"min\[2\] = 3 is greater than max\[2\] = 2"),
    ([-1, -np.inf, -1], [1, 1, 1], dict(axis=1), r"min\[1\] = -inf is not finite"),
    ([-1, -1, -1], [1, 1, 1], dict(axis=5), r"axis = 5 is out of range .*rank 3.*-3\.\.2"),
    ([-1, -1, -1], [1, 1, 1], dict(axis=-4), r"axis = -4 is out of range"),
    ([-1, -1, -1, -1], [1, 1, 1, 1], dict(axis=1), r"min has 4 elements .*dimension 1 .*size 3"),
    ([-1, -1, -1], [1, 1], dict(axis=1), r"max has 2 elements"),
    (-1.0, [1, 1, 1], dict(axis=1), r"rank 0 and max of rank 1"),
    ([[-1.0]], [[1.0]], {}, r"min of rank 2"),
])
def test_op_rejects_bad_arguments(mn, mx, attrs, match):
    # Eager: the kernel's OP_REQUIRES checks.
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        raw_op(X, np.asarray(mn, np.float32), np.asarray(mx, np.float32), **attrs)
    # Gradient op: same checks.
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        OPS.tfquant_fake_quant_grad(X, X, np.asarray(mn, np.float32), np.asarray(mx, np.float32), **attrs)
    # The process survives and the op still works.
    assert_same_bits(raw_op(X, np.float32(-1), np.float32(1)).numpy(),
                     tf_forward(X, np.float32(-1), np.float32(1), 8, False, None))


def test_static_shape_errors_in_graph_name_the_value():
    @tf.function
    def f(x, mn, mx):
        return raw_op(x, mn, mx, axis=7)

    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"axis = 7"):
        f(tf.constant(X), tf.zeros([3]), tf.ones([3]))


def test_grad_op_rejects_mismatched_gradient_shape():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gradients shape \[2,3\] must equal inputs shape \[2,3,4\]"):
        OPS.tfquant_fake_quant_grad(X[..., 0], X, np.float32(-1), np.float32(1))


# ---------------------------------------------------------------- determinism

DETERMINISM_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    tf.config.threading.set_inter_op_parallelism_threads(int(sys.argv[1]))
    from tfquant.ops import _library
    ops = _library.load_op_library()
    rng = np.random.default_rng(11)
    out = []
    for shape, axis, c in [((2_000_003,), -1, 0), ((64, 37, 300), 1, 37), ((20_000, 96), 1, 96)]:
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        mn = np.float32(-1.5) if c == 0 else -rng.uniform(0.5, 2, c).astype(np.float32)
        mx = np.float32(1.25) if c == 0 else rng.uniform(0.5, 2, c).astype(np.float32)
        _, dmin, dmax = ops.tfquant_fake_quant_grad(dy, x, mn, mx, axis=axis)
        out.append(dmin.numpy().tobytes().hex() + ":" + dmax.numpy().tobytes().hex())
    print("|".join(out))
""")


def test_range_gradients_do_not_depend_on_thread_count():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-c", DETERMINISM_SCRIPT, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for n in (1, 4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(out.strip().splitlines()[-1])
    assert results[0] == results[1]


def test_range_gradients_repeat_bitwise():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((128, 64, 65)) * 2).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    mn, mx = -np.ones(64, np.float32), np.ones(64, np.float32)
    first = [t.numpy() for t in OPS.tfquant_fake_quant_grad(dy, x, mn, mx, axis=1)]
    for _ in range(3):
        again = [t.numpy() for t in OPS.tfquant_fake_quant_grad(dy, x, mn, mx, axis=1)]
        for a, b in zip(first, again):
            assert a.tobytes() == b.tobytes()
