"""Gradients of the quantizer families against closed forms and finite differences:
PACT, LSQ, LSQ+, TQT, TTQ, the soft quantizer and the straight-through estimators
(binary, ternary, SAWB, DoReFa); the learned ranges' initializations with them."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfquant.quantizers import (BinaryQuantizer, DoReFaWeightQuantizer, LSQPlusQuantizer,
                                LSQQuantizer, PACTQuantizer, SAWBQuantizer, SoftQuantizer,
                                TernaryQuantizer, TQTQuantizer, TTQQuantizer)
from quantizers_helpers import ACTS, RNG, WEIGHTS, build, grads


# -- gradients ---------------------------------------------------------------------------


def test_pact_alpha_gradient_is_upstream_sum_where_clipped():
    q = PACTQuantizer(4, alpha_init=1.3)
    x = RNG.uniform(-0.5, 2.5, size=(16, 5)).astype(np.float32)
    x[np.abs(x - 1.3) < 1e-3] = 0.5  # keep away from the clip edge itself
    _, v = build(q, x, True)
    upstream = RNG.normal(size=x.shape).astype(np.float32)
    _, dx, (d_alpha,) = grads(q, x, v, upstream)
    assert d_alpha == pytest.approx(upstream[x >= 1.3].sum(), rel=1e-5)
    np.testing.assert_array_equal(dx, upstream * ((x >= 0) & (x <= 1.3)))


def test_pact_per_channel_alpha_adds_an_l2_penalty_over_channels():
    q = PACTQuantizer(4, alpha_init=2.0, per_channel=True, regularization=1e-2)
    host, v = build(q, ACTS, True)
    assert v["alpha"].shape == (12,)
    with tf.GradientTape():
        q(tf.constant(ACTS), True, v)
    assert host.losses and float(host.losses[-1]) == pytest.approx(1e-2 * 12 * 4.0)


def test_pact_alpha_starts_at_a_percentile_of_the_first_batch():
    q = PACTQuantizer(2, init_percentile=90.0)
    _, v = build(q, ACTS, True)
    assert float(v["alpha"]) == 10.0
    q(tf.constant(ACTS), True, v)
    ordered = np.sort(ACTS.ravel())
    first = ordered[math.ceil(0.9 * ordered.size) - 1]  # nearest rank
    assert float(v["alpha"]) == pytest.approx(first, rel=1e-6)
    q(tf.constant(ACTS * 5.0), True, v)  # later batches leave it to training
    assert float(v["alpha"]) == pytest.approx(first, rel=1e-6)
    q = PACTQuantizer(2, per_channel=True, init_percentile=50.0)
    _, v = build(q, ACTS, True)
    q(tf.constant(ACTS), True, v)
    np.testing.assert_allclose(v["alpha"].numpy(), np.sort(ACTS, axis=0)[3], rtol=1e-6)
    assert "initialized" not in build(PACTQuantizer(2), ACTS, True)[1]


def lsq_expected_step_grad(x, s, qn, qp, upstream):
    """LSQ's ∂L/∂s (before the gradient scale). Finite differences are meaningless here:
    x̂(s) is piecewise linear in s with jumps, and LSQ's gradient deliberately keeps the
    −x/s term that the straight-through round contributes."""
    v = x / s
    inside = np.floor(v + 0.5) - v
    return float(np.sum(upstream * np.where(v < -qn, -qn, np.where(v > qp, qp, inside))))


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_step_gradient_matches_the_closed_form(signed):
    q = LSQQuantizer(3, signed=signed, kind="weights" if signed else "activations")
    x = (RNG.normal(size=(6, 10)) * 2.0).astype(np.float32)
    if not signed:
        x = np.abs(x)
    _, v = build(q, x, not signed)
    v["initialized"].assign(1.0)
    v["step"].assign(0.45)
    upstream = RNG.normal(size=x.shape).astype(np.float32)
    _, dx, (d_step,) = grads(q, x, v, upstream)
    qn, qp = (3, 3) if signed else (0, 7)
    n = x.size if signed else x.size / x.shape[0]
    g = 1.0 / math.sqrt(n * qp)
    expected = lsq_expected_step_grad(x, 0.45, qn, qp, upstream) * g
    assert float(d_step) == pytest.approx(expected, rel=1e-4)
    v_ = x / 0.45
    np.testing.assert_array_equal(dx, upstream * ((v_ >= -qn - 1e-6) & (v_ <= qp + 1e-6)))


def test_lsq_per_channel_step_init_and_gradient_match_the_formulas():
    q = LSQQuantizer(4, per_channel=True)
    _, v = build(q, WEIGHTS, False)
    upstream = RNG.normal(size=WEIGHTS.shape).astype(np.float32)
    _, _, (d_step,) = grads(q, WEIGHTS, v, upstream)
    s = 2 * np.abs(WEIGHTS).mean(axis=0) / math.sqrt(7)
    np.testing.assert_allclose(v["step"].numpy(), s, rtol=1e-5)
    g = 1 / math.sqrt(WEIGHTS.shape[0] * 7)
    for ch in range(6):
        expected = lsq_expected_step_grad(WEIGHTS[:, ch], s[ch], 7, 7, upstream[:, ch]) * g
        assert d_step[ch] == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_lsq_plus_offset_gradient_and_inits_match_the_formulas():
    q = LSQPlusQuantizer(4, signed=False, kind="activations")
    x = (RNG.normal(size=(16, 8)) * 0.5 + 0.3).astype(np.float32)  # Swish-like: negatives
    _, v = build(q, x, True)
    upstream = RNG.normal(size=x.shape).astype(np.float32)
    y, _, (d_step, d_offset) = grads(q, x, v, upstream)
    s, beta = float(v["step"].numpy()), float(v["offset"].numpy())
    assert beta < 0.0 and s > 0.0
    # The MSE search beats the plain min/max range.
    naive = tf.quantization.fake_quant_with_min_max_vars(x, x.min(), x.max(), num_bits=4)
    assert np.mean((y - x) ** 2) <= np.mean((naive.numpy() - x) ** 2) + 1e-7
    # ∂/∂β: the upstream sum where clipped (times g); rounding to the nudged grid as the op.
    low = float(tf.quantization.fake_quant_with_min_max_vars(
        tf.constant([-1e9]), beta, beta + 15 * s, num_bits=4)[0])
    high = low + 15 * s
    clipped = (x < low - 1e-6) | (x > high + 1e-6)
    g = 1 / math.sqrt(8 * 15)
    assert float(d_offset) == pytest.approx(upstream[clipped].sum() * g, rel=1e-3, abs=1e-6)

    w = LSQPlusQuantizer(4, kind="weights", per_channel=True)
    _, vw = build(w, WEIGHTS, False)
    grads(w, WEIGHTS, vw, 1.0)
    mu, sd = WEIGHTS.mean(0), WEIGHTS.std(0)
    expected = np.maximum(np.abs(mu - 3 * sd), np.abs(mu + 3 * sd)) / 8
    np.testing.assert_allclose(vw["step"].numpy(), expected, rtol=1e-4)


def test_tqt_gradient_and_init_match_the_closed_forms():
    q = TQTQuantizer(4)
    _, v = build(q, WEIGHTS, False)
    upstream = RNG.normal(size=WEIGHTS.shape).astype(np.float32)
    _, _, (d_log,) = grads(q, WEIGHTS, v, upstream)
    log2_t = float(v["log2_threshold"].numpy())
    assert log2_t == pytest.approx(math.log2(np.abs(WEIGHTS).max()), rel=1e-5)
    s = 2.0 ** math.ceil(log2_t) / 8
    expected = s * math.log(2) * lsq_expected_step_grad(WEIGHTS, s, 7, 7, upstream)
    assert float(d_log) == pytest.approx(expected, rel=1e-4)

    a = TQTQuantizer(8, signed=False, init_percentile=50.0)
    _, va = build(a, ACTS, True)
    grads(a, ACTS, va, 1.0)
    median = np.sort(ACTS.ravel())[ACTS.size // 2 - 1]
    assert float(va["log2_threshold"].numpy()) == pytest.approx(math.log2(median), rel=1e-5)


def variable_difference(variable, loss, h):
    """(loss(v + h) − loss(v − h)) / 2h for a scalar variable, restored afterwards."""
    base = float(variable.numpy())
    variable.assign(base + h)
    up = loss()
    variable.assign(base - h)
    down = loss()
    variable.assign(base)
    return (up - down) / (2 * h)


def test_ttq_scale_gradients_match_finite_differences():
    # The forward is linear in W_p and W_n, so finite differences are exact here.
    q = TTQQuantizer()
    _, v = build(q, WEIGHTS, False)
    upstream = RNG.normal(size=WEIGHTS.shape).astype(np.float32)
    _, dx, (d_pos, d_neg) = grads(q, WEIGHTS, v, upstream)
    m = np.abs(WEIGHTS).max()
    pos, neg = WEIGHTS > 0.05 * m, WEIGHTS < -0.05 * m
    assert float(d_pos) == pytest.approx(m * upstream[pos].sum(), rel=1e-5)
    assert float(d_neg) == pytest.approx(-m * upstream[neg].sum(), rel=1e-5)

    def loss():
        return float(tf.reduce_sum(q(tf.constant(WEIGHTS), False, v) * upstream))

    for key, analytic in (("positive_scale", d_pos), ("negative_scale", d_neg)):
        fd = variable_difference(v[key], loss, 1e-2)
        assert fd == pytest.approx(float(analytic), rel=1e-3)
    np.testing.assert_allclose(dx, upstream * np.where(pos | neg, 1.0, 1.0), rtol=1e-6)


def test_soft_gradients_match_finite_differences():
    # Smooth in α, β and x: central differences apply.
    q = SoftQuantizer(2)
    x = np.array([-0.31, -0.04, 0.12, 0.26], np.float32)
    _, v = build(q, x, False)
    v["initialized"].assign(1.0)
    v["alpha"].assign(0.3)
    v["beta"].assign(4.0)
    v["temperature"].assign(2.0)
    upstream = np.array([1.0, -0.5, 0.7, 2.0], np.float32)
    _, dx, (d_alpha, d_beta) = grads(q, x, v, upstream)

    def loss(xx=x):
        return float(tf.reduce_sum(q(tf.constant(xx), True, v) * upstream))

    for key, analytic in (("alpha", d_alpha), ("beta", d_beta)):
        fd = variable_difference(v[key], loss, 1e-3)
        assert fd == pytest.approx(float(analytic), rel=2e-2)
    for i in range(4):
        e = np.zeros_like(x)
        e[i] = 1e-3
        assert (loss(x + e) - loss(x - e)) / 2e-3 == pytest.approx(dx[i], rel=2e-2)


def test_straight_through_gradients_pass_dy_inside_the_clip():
    up = RNG.normal(size=(5,)).astype(np.float32)
    x = np.array([-1.5, -0.4, 0.0, 0.7, 1.2], np.float32)
    _, dx, _ = grads(BinaryQuantizer(), x, {}, up)
    np.testing.assert_array_equal(dx, up * (np.abs(x) <= 1))
    y = BinaryQuantizer()(tf.constant(x), True).numpy()
    np.testing.assert_array_equal(y, [-1, -1, 1, 1, 1])
    w = np.array([[-0.5, 1.5], [0.2, -0.1]], np.float32)
    y = BinaryQuantizer("per_channel_mean", axis=0)(tf.constant(w), True).numpy()
    np.testing.assert_allclose(y, [[-1, 1], [0.15, -0.15]], rtol=1e-6)
    for q in (TernaryQuantizer(), SAWBQuantizer(3)):
        _, dx, _ = grads(q, WEIGHTS, {}, 1.0)
        if isinstance(q, TernaryQuantizer):
            np.testing.assert_array_equal(dx, np.ones_like(WEIGHTS))
        else:
            alpha = float(q.clip(WEIGHTS))
            np.testing.assert_array_equal(dx, (np.abs(WEIGHTS) <= alpha).astype(np.float32))
    # DoReFa weights: the gradient of the un-rounded surrogate c·(2u(w) − 1), the scale
    # c = max|w| held constant (smooth: FD).
    w = tf.constant([-0.3, 0.05, 0.2, 0.4])
    _, dx, _ = grads(DoReFaWeightQuantizer(3, per_channel=False), w.numpy(), {}, up[:4])

    scale = np.abs(w.numpy()).max()

    def surrogate(ww):
        t = np.tanh(ww / scale)
        return np.sum(up[:4] * scale * (2 * (t / (2 * np.abs(t).max()) + 0.5) - 1))

    for i in range(4):
        e = np.zeros(4, np.float32)
        e[i] = 1e-3
        fd = (surrogate(w.numpy() + e) - surrogate(w.numpy() - e)) / 2e-3
        assert dx[i] == pytest.approx(fd, rel=1e-2, abs=1e-4)


# -- formulas ----------------------------------------------------------------------------
