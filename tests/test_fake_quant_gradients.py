"""The range gradients of tfquant.ops.fake_quant beyond TF's clipped mode: determinism
across thread counts and runs, the learned (LSQ) range gradient against its
definition, and the second order (double backprop) of the gradient op.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfquant.ops import fake_quant
from fake_quant_helpers import OPS, assert_same_bits, tf_forward, tf_gradient
from fake_quant_inputs import random_cases, random_inputs

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
        for mode in ("clipped", "learned"):
            _, dmin, dmax = ops.tfquant_fake_quant_grad(dy, x, mn, mx, axis=axis,
                                                        range_gradient=mode)
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


# ---------------------------------------------------------------- learned range gradient

def nudge_np(mn, mx, num_bits, narrow_range):
    """NudgeRange in numpy float32 scalars (same operations as the C++)."""
    f = np.float32
    qmin, qmax = f(1 if narrow_range else 0), f(2 ** num_bits - 1)
    mn, mx = f(mn), f(mx)
    if mn == 0 and mx == 0:
        return None
    scale = (mx - mn) / (qmax - qmin)
    inv_scale = (qmax - qmin) / (mx - mn)
    zp_from_min = qmin - mn / scale
    if zp_from_min < qmin:
        zp = qmin
    elif zp_from_min > qmax:
        zp = qmax
    else:  # half away from zero, exact for |z| < 2^22
        zp = f(np.sign(zp_from_min) * np.floor(np.abs(zp_from_min) + f(0.5)))
    nmin, nmax = (qmin - zp) * scale, (qmax - zp) * scale
    quant_zero = np.floor(-nmin * inv_scale + f(0.5))
    return nmin, nmax, scale, inv_scale, quant_zero, float(qmax - qmin)


def learned_grad_np(dy, x, mn, mx, num_bits, narrow_range, axis):
    """The learned range gradient from its definition: u and q with the forward's
    float32 arithmetic, products and sums in float64."""
    xs, dys = (x, dy) if axis is None else (np.moveaxis(x, axis, 0), np.moveaxis(dy, axis, 0))
    chans = [(xs, dys, mn, mx)] if axis is None else list(zip(xs, dys, mn, mx))
    dmin, dmax = [], []
    for xc, dyc, lo, hi in chans:
        r = nudge_np(lo, hi, num_bits, narrow_range)
        if r is None:
            dmin.append(0.0), dmax.append(0.0)
            continue
        nmin, nmax, scale, inv_scale, qz, levels = r
        c = np.minimum(np.maximum(xc, nmin), nmax)  # no NaN here
        u = (c - nmin) / scale if axis is None else (c - nmin) * inv_scale
        t = u - qz
        e = (np.floor(t + np.float32(0.5)) - t).astype(np.float64)
        inside = (xc >= nmin) & (xc <= nmax)
        below, above = xc < nmin, xc > nmax
        g = dyc.astype(np.float64)
        dmin.append(np.sum(g * np.where(below, 1.0, np.where(inside, -e / levels, 0.0))))
        dmax.append(np.sum(g * np.where(above, 1.0, np.where(inside, e / levels, 0.0))))
    shape = np.shape(mn)
    return np.array(dmin).reshape(shape), np.array(dmax).reshape(shape)


def learned_gradient(dy, x, mn, mx, num_bits, narrow_range, axis):
    xt, mnv, mxv = tf.constant(x), tf.constant(mn), tf.constant(mx)
    with tf.GradientTape() as tape:
        tape.watch([xt, mnv, mxv])
        y = fake_quant(xt, mnv, mxv, num_bits=num_bits, narrow_range=narrow_range, axis=axis,
                       range_gradient="learned")
    dx, dmin, dmax = tape.gradient(y, [xt, mnv, mxv], output_gradients=tf.constant(dy))
    return y.numpy(), dx.numpy(), dmin.numpy(), dmax.numpy()


def assert_learned_close(actual, expected, dy, context=""):
    # Per-element terms are float products, sums double in tile order.
    atol = 2e-6 * float(np.abs(dy).sum()) + 1e-7
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol, err_msg=context)


@pytest.mark.parametrize("seed", range(2))
def test_learned_mode_matches_formula_random_cases(seed):
    for ctx, (x, dy, mn, mx, num_bits, narrow, axis) in random_cases(seed, 150, 2000):
        y, dx, dmin, dmax = learned_gradient(dy, x, mn, mx, num_bits, narrow, axis)
        # Forward and dx: exactly TF's, as in the clipped mode.
        assert_same_bits(y, tf_forward(x, mn, mx, num_bits, narrow, axis), ctx)
        assert_same_bits(dx, tf_gradient(dy, x, mn, mx, num_bits, narrow, axis)[0], "dx " + ctx)
        rmin, rmax = learned_grad_np(dy, x, mn, mx, num_bits, narrow, axis)
        assert dmin.shape == np.shape(mn) and dmax.shape == np.shape(mx), ctx
        assert_learned_close(dmin, rmin, dy, "dmin " + ctx)
        assert_learned_close(dmax, rmax, dy, "dmax " + ctx)


@pytest.mark.parametrize("shape,axis", [((70001,), None), ((3, 40000), 0), ((40000, 3), 1),
                                        ((5, 300, 20), 1), ((2, 9, 9, 700), -1)])
def test_learned_mode_on_multi_tile_tensors_matches_the_formula(shape, axis):
    rng = np.random.default_rng(8)
    if axis is None:
        mn, mx, lo, hi = np.float32(-1.3), np.float32(2.1), np.float32(-1.3), np.float32(2.1)
    else:
        c = shape[axis]
        mn = -rng.uniform(0.1, 3, c).astype(np.float32)
        mx = rng.uniform(0.1, 3, c).astype(np.float32)
        mn[::17], mx[::17] = 0.0, 0.0
        bshape = [1] * len(shape)
        bshape[axis] = c
        lo, hi = mn.reshape(bshape), mx.reshape(bshape)
    x = random_inputs(rng, shape, lo, hi, 4)
    dy = rng.standard_normal(shape).astype(np.float32)
    _, dx, dmin, dmax = learned_gradient(dy, x, mn, mx, 4, True, axis)
    rmin, rmax = learned_grad_np(dy, x, mn, mx, 4, True, axis)
    assert_learned_close(dmin, rmin, dy)
    assert_learned_close(dmax, rmax, dy)


LSQ_BITS = [(8, True), (4, False), (3, True), (2, False)]


def lsq_levels(num_bits, narrow):
    """(Qn, Qp) of a signed grid, as a quantizer builds min = -Qn*s, max = Qp*s."""
    qn = 2 ** (num_bits - 1) - (1 if narrow else 0)
    return qn, 2 ** (num_bits - 1) - 1


def lsq_inputs(rng, shape, s, qn, qp):
    """x = s*(k + d) with |d| <= 0.4 inside, plus clipped values: every x/s is at
    least 0.1 from a rounding transition."""
    k = rng.integers(-qn, qp + 1, size=shape)
    d = rng.uniform(-0.4, 0.4, size=shape)
    u = np.where(k == -qn, np.abs(d) - qn, np.where(k == qp, qp - np.abs(d), k + d))
    out = rng.random(shape)
    u = np.where(out < 0.1, -qn - 1 - 3 * rng.random(shape), u)
    u = np.where(out > 0.9, qp + 1 + 3 * rng.random(shape), u)
    return (u * s).astype(np.float32)


def lsq_op_grad(x, c, s, qn, qp, num_bits, narrow, axis):
    """dL/ds for L = sum(c * fake_quant(x; -Qn*s, Qp*s)) through the op."""
    sv = tf.constant(s)
    with tf.GradientTape() as tape:
        tape.watch(sv)
        y = fake_quant(x, -qn * sv, qp * sv, num_bits=num_bits, narrow_range=narrow, axis=axis,
                       range_gradient="learned")
        loss = tf.reduce_sum(tf.constant(c) * y)
    return tape.gradient(loss, sv).numpy().astype(np.float64)


def per_channel_sum(a, axis):
    if axis is None:
        return np.sum(a)
    return np.sum(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1), axis=1)


def broadcast_s(s, shape, axis):
    if axis is None:
        return np.float64(s)
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    return np.asarray(s, np.float64).reshape(bshape)


@pytest.mark.parametrize("num_bits,narrow", LSQ_BITS)
@pytest.mark.parametrize("shape,axis", [((2000,), None), ((6, 5, 7), 0), ((6, 5, 7), 1),
                                        ((6, 5, 7), -1), ((50, 3, 3, 16), 3)])
def test_learned_mode_is_lsq_step_gradient(num_bits, narrow, shape, axis):
    rng = np.random.default_rng(num_bits * 31 + len(shape))
    qn, qp = lsq_levels(num_bits, narrow)
    s = (np.float32(0.05) if axis is None
         else rng.uniform(0.01, 0.2, shape[axis]).astype(np.float32))
    sb = broadcast_s(s, shape, axis)
    x = lsq_inputs(rng, shape, sb, qn, qp)
    c = rng.standard_normal(shape).astype(np.float32)
    got = lsq_op_grad(x, c, s, qn, qp, num_bits, narrow, axis)

    # LSQ's closed form: round(x/s) - x/s inside, -Qn below, Qp above.
    v = x.astype(np.float64) / sb
    dyds = np.where(v < -qn, -qn, np.where(v > qp, qp, np.round(v) - v))
    closed = per_channel_sum(c * dyds, axis)
    np.testing.assert_allclose(got, closed, rtol=1e-4, atol=1e-4 * np.abs(c).sum() / np.size(s))

    # Finite differences. y(s) = s * round(x/s) is piecewise linear in s, so central
    # differences are only meaningful when no x/s crosses a rounding transition
    # (lsq_inputs keeps every x/s >= 0.1 from one; h moves x/s by at most
    # |x/s| * 2e-4 < 0.03 for |x/s| <= 2^7 + 4). Across
    # a step the difference quotient measures the jump, not a derivative.
    # What FD sees is the exact derivative of the quantized function, round(x/s)
    # inside; the STE adds d(round(u))/du = 1, i.e. the -x/s term, which we add
    # back explicitly: LSQ = FD(L) - sum_inside(c * x/s).
    h = np.float32(2e-4) * s
    def loss(step):
        y = fake_quant(x, -qn * step, qp * step, num_bits=num_bits, narrow_range=narrow,
                       axis=axis).numpy().astype(np.float64)
        return c.astype(np.float64) * y
    if axis is None:
        fd = (np.sum(loss(s + h)) - np.sum(loss(s - h))) / (2 * np.float64(h))
    else:
        fd = np.array([(per_channel_sum(loss(np.where(np.arange(len(s)) == j, s + h, s)), axis)[j]
                        - per_channel_sum(loss(np.where(np.arange(len(s)) == j, s - h, s)), axis)[j])
                       / (2 * np.float64(h[j])) for j in range(len(s))])
    inside = (v >= -qn) & (v <= qp)
    ste = per_channel_sum(np.where(inside, c * v, 0.0), axis)
    np.testing.assert_allclose(got, fd - ste, rtol=2e-3, atol=2e-3 * np.abs(c).sum() / np.size(s))


def test_learned_mode_counts_special_values_by_side_and_zero_range_passes_dy():
    x = np.array([np.nan, -np.inf, np.inf, -5, 5, 0.3], np.float32)
    dy = np.array([1, 2, 4, 8, 16, 32], np.float32)
    _, dx, dmin, dmax = learned_gradient(dy, x, np.float32(-1), np.float32(1), 8, False, None)
    assert_same_bits(dx, tf_gradient(dy, x, np.float32(-1), np.float32(1), 8, False, None)[0])
    r = nudge_np(-1, 1, 8, False)
    e = np.floor((np.float32(0.3) - r[0]) / r[2] - r[4] + np.float32(0.5)) - ((np.float32(0.3) - r[0]) / r[2] - r[4])
    # NaN counts nowhere; -Inf, -5 below; +Inf, 5 above; 0.3 inside.
    np.testing.assert_allclose(dmin, 2 + 8 - 32 * e / 255, rtol=1e-6)
    np.testing.assert_allclose(dmax, 4 + 16 + 32 * e / 255, rtol=1e-6)
    _, dx, dmin, dmax = learned_gradient(dy, x, np.float32(0), np.float32(0), 8, False, None)
    np.testing.assert_array_equal(dx, dy)
    assert dmin == 0 and dmax == 0


def test_learned_mode_in_graph_with_variables_matches_the_formula():
    mn, mx = tf.Variable([-1.0, -0.5, -2.0]), tf.Variable([1.0, 0.5, 2.0])
    x = np.random.default_rng(3).standard_normal((4, 3, 5)).astype(np.float32) * 2

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = fake_quant(x, mn, mx, num_bits=4, narrow_range=True, axis=1,
                           range_gradient="learned")
        return tape.gradient(y, [mn, mx])

    gmin, gmax = step(tf.constant(x))
    rmin, rmax = learned_grad_np(np.ones_like(x), x, mn.numpy(), mx.numpy(), 4, True, 1)
    assert_learned_close(gmin.numpy(), rmin, np.ones_like(x))
    assert_learned_close(gmax.numpy(), rmax, np.ones_like(x))


# ---------------------------------------------------------------- second order
#
# The gradient of TfquantFakeQuantGrad (double backprop). Inputs keep every x/s at
# least 0.1 from a rounding midpoint and a range edge (lsq_inputs), where the grad
# op is smooth; a zero-range channel is included per channel.

SECOND_ORDER_CASES = [  # shape, axis, num_bits, narrow
    ((5, 4), None, 4, False), ((3, 4, 2), 0, 8, True), ((3, 4, 2), 1, 2, False),
    ((2, 3, 4), -1, 4, True)]


def second_order_inputs(shape, axis, num_bits, narrow, seed=0):
    rng = np.random.default_rng(seed)
    qn, qp = lsq_levels(num_bits, narrow)
    if axis is None:
        s = np.float32(0.07)
    else:
        s = rng.uniform(0.02, 0.2, shape[axis]).astype(np.float32)
    sb = broadcast_s(s, shape, axis)
    x = lsq_inputs(rng, shape, sb, qn, qp)
    mn, mx = (-qn * s).astype(np.float32), (qp * s).astype(np.float32)
    if axis is not None:  # a zero range: dx = dy, no range gradient
        mn[0], mx[0] = 0.0, 0.0
    dy = rng.standard_normal(shape).astype(np.float32)
    weights = [rng.standard_normal(np.shape(v)).astype(np.float32) for v in (x, mn, mx)]
    return x, mn, mx, dy, weights, s


def grad_op_objective(dy, x, mn, mx, weights, num_bits, narrow, axis, mode):
    """Σ g_x·dx + Σ g_min·dmin + Σ g_max·dmax of the grad op, in float64."""
    axis_attr = -1 if axis is None else axis % np.ndim(x)
    outputs = OPS.tfquant_fake_quant_grad(dy, x, mn, mx, num_bits=num_bits, narrow_range=narrow,
                                          axis=axis_attr, range_gradient=mode)
    return sum(np.sum(np.float64(g) * o.numpy()) for g, o in zip(weights, outputs))


def registered_second_order(dy, x, mn, mx, weights, num_bits, narrow, axis, mode):
    tensors = [tf.constant(v) for v in (dy, x, mn, mx)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        axis_attr = -1 if axis is None else axis % np.ndim(x)
        outputs = OPS.tfquant_fake_quant_grad(*tensors, num_bits=num_bits, narrow_range=narrow,
                                              axis=axis_attr, range_gradient=mode)
        objective = tf.add_n([tf.reduce_sum(g * o) for g, o in zip(weights, outputs)])
    # None (no gradient: the registered function's zero w.r.t. x, min and max) as zeros.
    return [np.zeros(t.shape, np.float32) if g is None else g.numpy()
            for g, t in zip(tape.gradient(objective, tensors), tensors)]


def central_difference(f, value, h):
    """∂f/∂value element by element (value a float32 array, h per element; 0 where
    none is taken)."""
    value = np.asarray(value, np.float32)
    h = np.broadcast_to(np.asarray(h, np.float32), value.shape)
    out = np.zeros(value.shape)
    for i in np.ndindex(value.shape):
        if h[i] == 0:
            continue
        up, down = value.copy(), value.copy()
        up[i] += h[i]
        down[i] -= h[i]
        out[i] = (f(up) - f(down)) / np.float64(up[i] - down[i])
    return out


@pytest.mark.parametrize("mode", ["clipped", "learned"])
@pytest.mark.parametrize("shape,axis,num_bits,narrow", SECOND_ORDER_CASES)
def test_grad_op_gradient_matches_finite_differences(shape, axis, num_bits, narrow, mode):
    x, mn, mx, dy, weights, s = second_order_inputs(shape, axis, num_bits, narrow)
    got_dy, got_x, got_min, got_max = registered_second_order(
        dy, x, mn, mx, weights, num_bits, narrow, axis, mode)

    def objective(dy=dy, x=x, mn=mn, mx=mx):
        return grad_op_objective(dy, x, mn, mx, weights, num_bits, narrow, axis, mode)

    # Linear in dy: differences with a unit step are exact up to float rounding.
    want_dy = central_difference(lambda v: objective(dy=v), dy, 1.0)
    np.testing.assert_allclose(got_dy, want_dy, rtol=1e-5, atol=1e-5)
    assert np.abs(got_dy).max() > 0.1
    # x, min, max: zero by the straight-through convention (see the composed-ops test
    # for the learned mode, where the exact derivative of q − u is not zero).
    assert not np.any(got_x) and not np.any(got_min) and not np.any(got_max)
    if mode == "clipped":  # there the op is piecewise constant: differences agree
        h_x = 0.01 * broadcast_s(s, shape, axis)
        # A zero range is a single point of the (min, max) plane: no difference there.
        h_range = np.where(np.asarray(mn) == 0, 0.0, 0.01 * np.abs(s))
        for f, value, h in ((lambda v: objective(x=v), x, h_x),
                            (lambda v: objective(mn=v), mn, h_range),
                            (lambda v: objective(mx=v), mx, h_range)):
            np.testing.assert_allclose(central_difference(f, value, h), 0.0, atol=1e-3)


@pytest.mark.parametrize("mode", ["clipped", "learned"])
@pytest.mark.parametrize("shape,axis,num_bits,narrow", SECOND_ORDER_CASES)
def test_grad_op_gradient_through_dx_alone_matches_finite_differences(shape, axis, num_bits,
                                                                     narrow, mode):
    """Only dx differentiated (zero gradients of dmin and dmax, as a tape passes for a
    range nothing trained depends on): the registered gradient's one-op path."""
    x, mn, mx, dy, weights, _ = second_order_inputs(shape, axis, num_bits, narrow)
    weights = [weights[0], np.zeros_like(weights[1]), np.zeros_like(weights[2])]
    got_dy, got_x, got_min, got_max = registered_second_order(
        dy, x, mn, mx, weights, num_bits, narrow, axis, mode)
    want_dy = central_difference(
        lambda v: grad_op_objective(v, x, mn, mx, weights, num_bits, narrow, axis, mode),
        dy, 1.0)
    np.testing.assert_allclose(got_dy, want_dy, rtol=1e-5, atol=1e-5)
    assert np.abs(got_dy).max() > 0.1 and np.any(got_dy == 0)  # the mask cuts some
    assert not np.any(got_x) and not np.any(got_min) and not np.any(got_max)


def composed_fake_quant(z, s, qn, qp, mode):
    """The same quantizer from TF ops with min = −Qn·s, max = Qp·s: clipped mode is the
    STE through a clip; learned mode is LSQ, s·round_ste(clip(z/s, −Qn, Qp))."""
    if mode == "clipped":
        clipped = tf.clip_by_value(z, -qn * s, qp * s)
        return clipped + tf.stop_gradient(s * tf.round(clipped / s) - clipped)
    u = tf.clip_by_value(z / s, -qn, qp)
    return s * (u + tf.stop_gradient(tf.round(u) - u))


@pytest.mark.parametrize("mode", ["clipped", "learned"])
@pytest.mark.parametrize("shape,axis,num_bits,narrow", SECOND_ORDER_CASES)
def test_double_backprop_matches_composed_ops(shape, axis, num_bits, narrow, mode):
    """A gradient-ℓ1-like objective, P = Σ|∂L/∂a| + Σ k·∂L/∂s with L = Σ c·Q(a·x),
    differentiated again w.r.t. a, s and c: the op's registered second order against
    the same quantizer composed from TF ops (round with a straight-through gradient)."""
    x, _, _, _, (c, k, _), s = second_order_inputs(shape, axis, num_bits, narrow, seed=1)
    qn, qp = lsq_levels(num_bits, narrow)
    k = k if axis is not None else np.float32(k.sum())
    rng = np.random.default_rng(2)
    a0 = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    x = x / a0  # a·x stays on lsq_inputs' safe points

    def derivatives(quantize):
        a, sv, cv = tf.Variable(a0), tf.Variable(s), tf.Variable(c)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                sb = tf.reshape(sv, broadcast_s(s, shape, axis).shape) if axis is not None else sv
                loss = tf.reduce_sum(cv * quantize(a * x, sv, sb))
            g_a, g_s = inner.gradient(loss, [a, sv])
            penalty = tf.reduce_sum(tf.abs(g_a)) + tf.reduce_sum(k * g_s)
        grads = outer.gradient(penalty, [a, sv, cv])
        # None: not connected (TF's clip has no second derivative), i.e. zero.
        return [np.zeros(v.shape) if g is None else g.numpy() for g, v in zip(grads, [a, sv, cv])]

    ours = derivatives(lambda z, sv, sb: fake_quant(
        z, -qn * sv, qp * sv, num_bits=num_bits, narrow_range=narrow, axis=axis,
        range_gradient=mode))
    composed = derivatives(lambda z, sv, sb: composed_fake_quant(z, sb, qn, qp, mode))
    # The composed learned mode cancels u − z/s in float: noise of a few ulp of the sums.
    scale = max(np.abs(w).max() for w in composed) + 1.0
    for got, want in zip(ours, composed):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    assert np.abs(ours[2]).max() > 0  # the penalty does depend on c
