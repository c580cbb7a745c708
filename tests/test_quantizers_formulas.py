"""The quantizer families' forwards: the docstring examples, the clip and threshold
formulas, bit-identical training and inference forwards, stochastic rounding, argument
checks, deployments and get_config round trips."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.quantizers import (BinaryQuantizer, Deployment, DoReFaActivationQuantizer,
                                DoReFaWeightQuantizer, LQNetsQuantizer, LSQPlusQuantizer,
                                LSQQuantizer, PACTQuantizer, SAWBQuantizer, SoftQuantizer,
                                TernaryQuantizer, TQTQuantizer, TTQQuantizer,
                                check_applies_to, deserialize_quantizer, serialize_quantizer)
from quantizers_helpers import ACTS, WEIGHTS, build, grads


# -- the docstring examples --------------------------------------------------------------


def test_docstring_examples_give_the_documented_outputs():
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


def test_sawb_two_bit_clip_of_a_standard_normal_is_1_47():
    w = np.random.default_rng(0).normal(size=200_000).astype(np.float32)
    alpha = float(SAWBQuantizer(2).clip(w))
    assert abs(alpha - 1.47) / 1.47 < 0.03
    per_channel = SAWBQuantizer(2, per_channel=True).clip(w.reshape(-1, 4), axis=1).numpy()
    # No coefficients above 5 bits: the clip is the range.
    assert float(SAWBQuantizer(8).clip(w)) == pytest.approx(float(np.max(np.abs(w))))
    assert per_channel.shape == (4,) and np.all(np.abs(per_channel - 1.47) < 0.05)


def test_twn_threshold_is_0_7_mean_and_scale_the_mean_above_it():
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


def test_deployment_follows_the_bits_the_kind_and_the_family():
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
