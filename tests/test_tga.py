"""TGA ternary weights (He & Fan 2019): the truncated-Gaussian closed form of Δ and α,
the gradient through α, the INT4 export."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import tfquant
from tfquant.quantizers import TGAQuantizer, deserialize_quantizer, serialize_quantizer


def test_threshold_and_scale_of_gaussian_weights_are_the_truncated_gaussian_values():
    w = np.random.default_rng(0).normal(0.0, 1.0, size=400_000).astype(np.float32)
    delta, alpha = (float(v) for v in TGAQuantizer().threshold_and_scale(w))
    sigma = np.sqrt(np.mean(w.astype(np.float64) ** 2))
    upper = np.max(np.abs(w)) / sigma
    # The formula, independently: the mean of N(0, σ²) truncated to (0.6σ, max|w|).
    expected = sigma * stats.truncnorm(0.6, upper).mean()
    assert delta == pytest.approx(0.6 * sigma, rel=1e-6)
    assert alpha == pytest.approx(expected, rel=1e-5)
    # A large sample: the population values, and the sample's own tail mean (TWN's α).
    assert delta == pytest.approx(0.6, abs=5e-3)
    assert alpha == pytest.approx(stats.truncnorm(0.6, np.inf).mean(), abs=5e-3)
    assert alpha == pytest.approx(np.mean(np.abs(w)[np.abs(w) > delta]), rel=5e-3)


def test_per_channel_scales_follow_each_channels_spread():
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(20_000, 3)) * [0.1, 1.0, 3.0]).astype(np.float32)
    q = TGAQuantizer(per_channel=True)
    delta, alpha = (v.numpy() for v in q.threshold_and_scale(w, axis=1))
    np.testing.assert_allclose(delta, 0.6 * np.array([0.1, 1.0, 3.0]), rtol=0.02)
    np.testing.assert_allclose(alpha / delta, 1.215 / 0.6, rtol=0.02)
    y = q(tf.constant(w), False).numpy()
    for ch in range(3):
        expected = alpha[ch] * np.sign(w[:, ch]) * (np.abs(w[:, ch]) > delta[ch])
        np.testing.assert_allclose(y[:, ch], expected, rtol=1e-6, atol=1e-7)


def _kernel_away_from_the_threshold(q, size=48):
    """Weights none of which lies near ±Δ, the largest |w| well apart from the next
    (finite steps flip no ternary value and keep the same maximum)."""
    rng = np.random.default_rng(2)
    w = rng.normal(0.0, 0.5, size=(size, 2)).astype(np.float32)
    delta, _ = q.threshold_and_scale(w)
    near = np.abs(np.abs(w) - float(delta)) < 0.05
    w[near] = np.sign(w[near]) * (float(delta) + 0.1)
    top = np.unravel_index(np.argmax(np.abs(w)), w.shape)
    w[top] += 0.2 * np.sign(w[top])
    return w


def test_weight_gradient_is_straight_through_plus_the_exact_derivative_through_alpha():
    q = TGAQuantizer()
    w = _kernel_away_from_the_threshold(q)
    upstream = np.random.default_rng(3).normal(size=w.shape).astype(np.float32)

    def loss(values):
        return float(tf.reduce_sum(q(tf.constant(values), True) * upstream))

    x = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, True)
        total = tf.reduce_sum(y * upstream)
    grad = tape.gradient(total, x).numpy()
    # The forward is the hard ternary one, training or not.
    np.testing.assert_array_equal(y.numpy(), q(x, False).numpy())
    eps = 1e-2
    numeric = np.zeros_like(w)
    for index in np.ndindex(*w.shape):
        plus, minus = w.copy(), w.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric[index] = (loss(plus) - loss(minus)) / (2 * eps)
    through_alpha = grad - upstream
    assert np.max(np.abs(through_alpha)) > 0.05  # the α path is really there
    np.testing.assert_allclose(through_alpha, numeric, atol=3e-3)


def test_arguments_are_checked_and_the_config_round_trips():
    with pytest.raises(ValueError, match=r"threshold_factor=1.2 .* \(0, 1\)"):
        TGAQuantizer(1.2)
    with pytest.raises(ValueError, match="threshold_factor"):
        TGAQuantizer(0.0)
    q = deserialize_quantizer(serialize_quantizer(TGAQuantizer(0.5, True, 0)))
    assert isinstance(q, TGAQuantizer) and q.get_config() == {
        "threshold_factor": 0.5, "per_channel": True, "axis": 0}
    assert q.deployment() is tfquant.quantizers.Deployment.INT4


def test_exports_as_int4_ternary_and_litert_agrees():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    outputs = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(x))
    config = tfquant.QuantConfig(weight_quantizer="TGAQuantizer", first_last_bits=None)
    qmodel = tfquant.quantize_model(keras.Model(inputs, outputs), config)
    qmodel.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = np.random.rand(64, 8, 8, 3).astype(np.float32)
    qmodel.fit(x, np.random.randn(64, 4).astype(np.float32), epochs=2, batch_size=16,
               verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x)
    assert report.float_ops == []
    kernels = [t for t in report.summary.weight_tensors().values()
               if {"CONV_2D", "FULLY_CONNECTED"} & set(t.used_by)
               and t.type_name in ("INT4", "INT8")]
    assert {t.type_name for t in kernels} == {"INT4"} and len(kernels) == 2
    assert report.max_abs_diff_lsb <= 2, report
