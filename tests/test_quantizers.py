"""The quantizer families: formulas, gradients, train/inference identity, Keras training
and saving. Small tensors throughout (the machine is shared)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.keras import quantizer_slots
from tfquant.keras import ActivationFakeQuant, QuantizedConvolution
from tfquant.quantizers import (
    BinaryQuantizer,
    Deployment,
    DoReFaActivationQuantizer,
    DoReFaWeightQuantizer,
    LQNetsQuantizer,
    LSQPlusQuantizer,
    LSQQuantizer,
    PACTQuantizer,
    SAWBQuantizer,
    SoftQuantizer,
    TernaryQuantizer,
    TQTQuantizer,
    TTQQuantizer,
    check_applies_to,
    deserialize_quantizer,
    serialize_quantizer,
)

RNG = np.random.default_rng(7)
WEIGHTS = RNG.normal(0.0, 0.1, size=(24, 6)).astype(np.float32)  # a Dense kernel
ACTS = np.abs(RNG.normal(0.0, 1.0, size=(8, 12))).astype(np.float32)  # ReLU outputs


def build(quantizer, x, activation):
    """Variables of `quantizer` on a throwaway layer; activation shapes get a None batch."""
    host = keras.layers.Layer()
    shape = (None,) + tuple(x.shape[1:]) if activation else tuple(x.shape)
    return host, quantizer.build(shape, "t", host)


def grads(quantizer, x, variables, upstream, training=True):
    x = tf.constant(x)
    trainable = [v for v in variables.values() if v.trainable]
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x, training, variables)
        loss = tf.reduce_sum(y * upstream)
    dx, *dv = tape.gradient(loss, [x] + trainable)
    return y.numpy(), dx.numpy(), [None if g is None else g.numpy() for g in dv]


# -- the docstring examples --------------------------------------------------------------


def test_docstring_examples():
    q = PACTQuantizer(2, alpha_init=3.0)
    _, v = build(q, np.zeros((1, 4), np.float32), True)
    y, _, (d_alpha,) = grads(q, np.array([[-1, 0.4, 1.6, 5]], np.float32), v, 1.0)
    np.testing.assert_allclose(y, [[0, 0, 2, 3]])
    assert d_alpha == pytest.approx(1.0)

    q = SAWBQuantizer(2)
    y = q(tf.constant([-1.2, -0.3, 0.5, 2.0]), False).numpy()
    np.testing.assert_allclose(y, [-1.6834, 0, 0, 1.6834], atol=1e-3)

    q = DoReFaWeightQuantizer(2, per_channel=False)
    y = q(tf.constant([-2.0, 0.1, 0.5, 3.0]), True).numpy()
    np.testing.assert_allclose(y, [-3, 1, 1, 3], atol=1e-6)
    # Per channel, each output channel keeps its own scale max|w| (folded BN's γ/σ).
    w = np.array([[-2.0, 0.1], [0.5, 3.0], [1.0, -0.4]], np.float32)
    y = DoReFaWeightQuantizer(2, axis=-1)(tf.constant(w), True).numpy()
    np.testing.assert_allclose(y, [[-2, 1], [2 / 3, 3], [2 / 3, -1]], atol=1e-6)
    y = DoReFaActivationQuantizer(2)(tf.constant([-0.5, 0.2, 0.5, 1.7]), True).numpy()
    np.testing.assert_allclose(y, [0, 1 / 3, 2 / 3, 1], atol=1e-6)

    q = TTQQuantizer()
    _, v = build(q, np.zeros((4,), np.float32), False)
    v["positive_scale"].assign(1.2)
    v["negative_scale"].assign(0.9)
    y = q(tf.constant([-0.8, 0.01, 0.5, 1.0]), True, v).numpy()
    np.testing.assert_allclose(y, [-0.9, 0, 1.2, 1.2], atol=1e-6)

    q = LQNetsQuantizer(2, per_channel=False)
    _, v = build(q, np.zeros((3,), np.float32), False)
    v["basis"].assign([[0.1, 0.3]])
    np.testing.assert_allclose(q(tf.constant([-0.5, -0.05, 0.25]), False, v), [-0.4, -0.2, 0.2],
                               atol=1e-6)

    q = TQTQuantizer(4)
    _, v = build(q, np.zeros((3,), np.float32), False)
    v["log2_threshold"].assign(0.3)
    np.testing.assert_allclose(q(tf.constant([0.3, -0.9, 2.5]), False, v), [0.25, -1.0, 1.75])

    q = SoftQuantizer(2)
    _, v = build(q, np.zeros((1,), np.float32), False)
    v["alpha"].assign(2.0)
    v["initialized"].assign(1.0)
    assert float(q(tf.constant([0.8]), True, v)[0]) == pytest.approx(1.995, abs=1e-3)
    assert float(q(tf.constant([0.8]), False, v)[0]) == 2.0


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


def test_pact_penalty_and_per_channel():
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


def test_unsigned_quantizers_stay_off_outputs_that_may_be_negative():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    branch = keras.layers.Conv2D(4, 1, name="branch")(x)  # signed, added to x
    x = keras.layers.ReLU(name="relu")(keras.layers.Add(name="add")([x, branch]))
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    for name in ("PACTQuantizer", "DoReFaActivationQuantizer"):
        config = tfquant.QuantConfig(activation_quantizer=name, activation_bits=4)
        qmodel = tfquant.quantize_model(model, config)
        chosen = {slot.layer.name: type(slot.quantizer).__name__
                  for slot in quantizer_slots(qmodel, weights=False)}
        assert chosen["branch"] == chosen["logits"] == "MovingAverageQuantizer", chosen
        assert chosen["conv"] == name, chosen


def lsq_expected_step_grad(x, s, qn, qp, upstream):
    """LSQ's ∂L/∂s (before the gradient scale). Finite differences are meaningless here:
    x̂(s) is piecewise linear in s with jumps, and LSQ's gradient deliberately keeps the
    −x/s term that the straight-through round contributes."""
    v = x / s
    inside = np.floor(v + 0.5) - v
    return float(np.sum(upstream * np.where(v < -qn, -qn, np.where(v > qp, qp, inside))))


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_step_gradient_closed_form(signed):
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


def test_lsq_per_channel_init_and_gradient():
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


def test_lsq_plus_offset_gradient_and_inits():
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


def test_tqt_gradient_closed_form_and_init():
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
        base = float(v[key].numpy())
        v[key].assign(base + 1e-2)
        up = loss()
        v[key].assign(base - 1e-2)
        down = loss()
        v[key].assign(base)
        assert (up - down) / 2e-2 == pytest.approx(float(analytic), rel=1e-3)
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
        base = float(v[key].numpy())
        v[key].assign(base + 1e-3)
        up = loss()
        v[key].assign(base - 1e-3)
        down = loss()
        v[key].assign(base)
        assert (up - down) / 2e-3 == pytest.approx(float(analytic), rel=2e-2)
    for i in range(4):
        e = np.zeros_like(x)
        e[i] = 1e-3
        assert (loss(x + e) - loss(x - e)) / 2e-3 == pytest.approx(dx[i], rel=2e-2)


def test_straight_through_gradients():
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


def test_sawb_two_bit_clip_for_standard_normal():
    w = np.random.default_rng(0).normal(size=200_000).astype(np.float32)
    alpha = float(SAWBQuantizer(2).clip(w))
    assert abs(alpha - 1.47) / 1.47 < 0.03
    per_channel = SAWBQuantizer(2, per_channel=True).clip(w.reshape(-1, 4), axis=1).numpy()
    # No coefficients above 5 bits: the clip is the range.
    assert float(SAWBQuantizer(8).clip(w)) == pytest.approx(float(np.max(np.abs(w))))
    assert per_channel.shape == (4,) and np.all(np.abs(per_channel - 1.47) < 0.05)


def test_twn_threshold_and_scale():
    q = TernaryQuantizer()
    delta, alpha = q.threshold_and_scale(tf.constant([-1.0, -0.2, 0.3, 0.9]))
    assert float(delta) == pytest.approx(0.42)
    assert float(alpha) == pytest.approx(0.95)
    y = q(tf.constant([-1.0, -0.2, 0.3, 0.9]), True).numpy()
    np.testing.assert_allclose(y, [-0.95, 0, 0, 0.95])
    pc = TernaryQuantizer(per_channel=True)
    delta, alpha = pc.threshold_and_scale(WEIGHTS, axis=1)
    for ch in range(6):
        col = np.abs(WEIGHTS[:, ch])
        assert float(delta[ch]) == pytest.approx(0.7 * col.mean(), rel=1e-5)
        assert float(alpha[ch]) == pytest.approx(col[col > 0.7 * col.mean()].mean(), rel=1e-5)


def test_lqnets_qem_reduces_error_and_codes():
    q = LQNetsQuantizer(2, per_channel=True)
    _, v = build(q, WEIGHTS, False)
    errors = []
    for _ in range(6):
        y = q(tf.constant(WEIGHTS), True, v).numpy()
        errors.append(np.mean((y - WEIGHTS) ** 2))
    assert errors[-1] < errors[0]
    for ch in range(6):  # every output uses 2^K levels of its own channel's basis
        assert len(np.unique(y[:, ch])) <= 4
    a = LQNetsQuantizer(2, signed=False, per_channel=False)
    _, va = build(a, ACTS, True)
    y = a(tf.constant(ACTS), True, va).numpy()
    assert y.min() >= 0.0 and len(np.unique(y)) <= 4


# -- ARCHITECTURE.md §3.1: bit-identical training and inference forwards -----------------------------

UNIFORM = [
    (lambda: PACTQuantizer(4, alpha_init=1.5), True),
    (lambda: PACTQuantizer(8, alpha_init=1.5, per_channel=True), True),
    (lambda: LSQQuantizer(4, per_channel=True), False),
    (lambda: LSQQuantizer(8, signed=False), True),
    (lambda: LSQPlusQuantizer(4, kind="weights", per_channel=True), False),
    (lambda: LSQPlusQuantizer(3, signed=False), True),
    (lambda: SAWBQuantizer(2), False),
    (lambda: SAWBQuantizer(4, per_channel=True), False),
    (lambda: TQTQuantizer(4, per_channel=True), False),
    (lambda: TQTQuantizer(8, signed=False), True),
    (lambda: DoReFaWeightQuantizer(3), False),
    (lambda: DoReFaActivationQuantizer(4), True),
    (lambda: TernaryQuantizer(per_channel=True), False),
    (lambda: TTQQuantizer(per_channel=True), False),
]


@pytest.mark.parametrize("make, activation", UNIFORM)
def test_training_and_inference_forwards_are_bit_identical(make, activation):
    q = make()
    x = ACTS * 1.3 - 0.2 if activation else WEIGHTS
    _, v = build(q, x, activation)
    q(tf.constant(x), True, v)  # first call initializes learned ranges
    train = q(tf.constant(x), True, v).numpy()
    infer = q(tf.constant(x), False, v).numpy()
    np.testing.assert_array_equal(train, infer)


def test_stochastic_rounding_is_unbiased():
    s = 0.25
    q = LSQQuantizer(4, signed=True, kind="weights", stochastic_rounding=True)
    x = np.full((4000,), 0.3 * s + s, np.float32)  # 1.3 grid steps: deterministic gives 1
    _, v = build(q, x, False)
    v["initialized"].assign(1.0)
    v["step"].assign(s)
    y = q(tf.constant(x), True, v).numpy()
    assert set(np.unique(y / s).round(5)) == {1.0, 2.0}
    std_error = s * math.sqrt(0.3 * 0.7 / x.size)
    assert abs(y.mean() - x[0]) < 4 * std_error
    np.testing.assert_array_equal(q(tf.constant(x), False, v).numpy(), s)  # inference: round
    # SAWB: per-element mean over repeated draws equals the weights (within noise).
    w = WEIGHTS[:, :2]
    sq = SAWBQuantizer(3, stochastic_rounding=True)
    draws = np.mean([sq(tf.constant(w), True).numpy() for _ in range(300)], axis=0)
    step = float(sq.clip(w)) / 3
    inside = np.abs(w) < float(sq.clip(w))
    assert np.all(np.abs(draws - w)[inside] < 4 * 0.5 * step / math.sqrt(300))


# -- arguments, deployment, config -------------------------------------------------------


def test_invalid_arguments_name_quantizer_value_and_allowed():
    with pytest.raises(ValueError, match=r"LSQQuantizer: num_bits=1 .*allowed: 2, 3"):
        LSQQuantizer(1)
    with pytest.raises(ValueError, match=r"SAWBQuantizer: num_bits=9 .*allowed: 2, 3, 4, 5, 6, 7, 8"):
        SAWBQuantizer(9)
    with pytest.raises(ValueError, match=r"BinaryQuantizer: scale='mean'"):
        BinaryQuantizer("mean")
    with pytest.raises(ValueError, match=r"PACTQuantizer cannot quantize weights"):
        check_applies_to(PACTQuantizer(), "weights")
    with pytest.raises(ValueError, match=r"signed=False"):
        LSQQuantizer(8, signed=False).build((3, 4), "kernel", keras.layers.Layer())
    with pytest.raises(ValueError, match=r"PACTQuantizer: alpha_init=-1"):
        PACTQuantizer(alpha_init=-1)
    with pytest.raises(ValueError, match=r"PACTQuantizer: init_percentile=150 .*\(0, 100\]"):
        PACTQuantizer(init_percentile=150)
    check_applies_to(LSQQuantizer(), "weights")
    check_applies_to(LSQQuantizer(), "activations")


def test_deployments():
    d = Deployment
    assert LSQQuantizer(8).deployment() is d.INT8
    assert LSQQuantizer(4).deployment() is d.INT4
    assert LSQQuantizer(2).deployment() is d.INT4
    assert LSQQuantizer(3).deployment() is d.INT4  # exact 3-bit values in INT4
    assert LSQQuantizer(6).deployment() is d.INT8
    assert LSQQuantizer(4, kind="activations").deployment() is d.INT8_WIDENED
    assert LSQQuantizer(8, signed=False).deployment() is d.INT8
    assert SAWBQuantizer(2).deployment() is d.INT4
    assert SAWBQuantizer(5).deployment() is d.INT8
    assert TQTQuantizer(7).deployment() is d.INT8
    assert PACTQuantizer(8).deployment() is d.INT8
    assert TernaryQuantizer().deployment() is d.INT4
    for q in (TTQQuantizer(), BinaryQuantizer(), LQNetsQuantizer(), SoftQuantizer(),
              DoReFaWeightQuantizer(8)):
        assert q.deployment() is d.SIMULATION


ALL = [PACTQuantizer(4, alpha_init=6.0, per_channel=True, regularization=0.0),
       PACTQuantizer(2, init_percentile=99.9),
       LSQQuantizer(4, per_channel=True, axis=-2, stochastic_rounding=True),
       LSQPlusQuantizer(3, signed=False, kind="activations"),
       SAWBQuantizer(3, per_channel=True), TQTQuantizer(6, signed=False, init_percentile=99.0),
       DoReFaWeightQuantizer(3, per_channel=False, axis=0), DoReFaActivationQuantizer(5), TernaryQuantizer(0.6, True),
       TTQQuantizer(0.1), BinaryQuantizer("per_channel_mean"), LQNetsQuantizer(3, False, False),
       SoftQuantizer(3, signed=False, initial_temperature=5.0)]


@pytest.mark.parametrize("quantizer", ALL, ids=lambda q: type(q).__name__)
def test_get_config_round_trips(quantizer):
    config = serialize_quantizer(quantizer)
    again = deserialize_quantizer(config)
    assert type(again) is type(quantizer)
    assert again.get_config() == quantizer.get_config()
    assert serialize_quantizer(again) == config


# -- Keras training and saving -------------------------------------------------------------

PAIRS = [  # (weight quantizer, activation quantizer): each family in both roles it has
    (LSQQuantizer(4, per_channel=True), LSQQuantizer(4, signed=False)),
    (LSQPlusQuantizer(4, kind="weights"), LSQPlusQuantizer(4, signed=False)),
    (SAWBQuantizer(2, per_channel=True), PACTQuantizer(4, alpha_init=4.0)),
    (TQTQuantizer(4), TQTQuantizer(4, signed=False)),
    (DoReFaWeightQuantizer(2), DoReFaActivationQuantizer(2)),
    (TernaryQuantizer(per_channel=True), BinaryQuantizer()),
    (TTQQuantizer(per_channel=True), LQNetsQuantizer(2, signed=False, per_channel=False)),
    (BinaryQuantizer("per_channel_mean"), SoftQuantizer(2, signed=False)),
    (LQNetsQuantizer(2), PACTQuantizer(8, per_channel=True)),
    (SoftQuantizer(2), LSQQuantizer(8, signed=False, stochastic_rounding=True)),
]


def small_model(weight_quantizer, activation_quantizer):
    def fresh(q):
        return deserialize_quantizer(serialize_quantizer(q))

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Flatten(),
        QuantizedConvolution(keras.layers.Dense(16, activation="relu"),
                             weight_quantizer=fresh(weight_quantizer)),
        ActivationFakeQuant(fresh(activation_quantizer), name="act"),
        QuantizedConvolution(keras.layers.Dense(10), weight_quantizer=fresh(weight_quantizer)),
    ])


def quantizer_state(model):
    return {v.path: v.numpy().copy() for layer in model.layers for v in layer.weights
            if v.path.rsplit("/", 1)[-1] not in ("kernel", "bias")
            and not v.path.endswith("initialized")}


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{type(p[0]).__name__}-"
                         f"{type(p[1]).__name__}")
def test_trains_in_fit_and_survives_keras_save(pair, fashion_mnist_small, tmp_path):
    (x, y), _ = fashion_mnist_small
    x, y = x[:512], y[:512]
    model = small_model(*pair)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model(x[:64], training=True)  # initializes learned ranges from data
    before = quantizer_state(model)
    history = model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    after = quantizer_state(model)
    learned = [k for k in before if not k.endswith(("steps", "biases", "temperature"))]
    changed = [k for k in learned if not np.array_equal(before[k], after[k])]
    if learned:
        assert changed, f"no quantizer parameter changed: {learned}"
    if isinstance(pair[1], PACTQuantizer) and pair[1].regularization:
        model(x[:8], training=True)
        assert model.losses
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x[:32], verbose=0),
                                  model.predict(x[:32], verbose=0))
    for layer, other in zip(model.layers, loaded.layers):
        for q in ("weight_quantizer", "quantizer"):
            if hasattr(layer, q):
                assert getattr(other, q).get_config() == getattr(layer, q).get_config()
