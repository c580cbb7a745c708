"""DAQ (Kim, Lee & Ham 2021): distance-aware soft rounding, the hard grids, the learned
interval, scale and bound against finite differences, config, save/load and export."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.quantizers import DAQQuantizer, Deployment, deserialize_quantizer, serialize_quantizer
from tfquant.quantizers.daq import distance_aware_soft_round


def reference_soft_round(z, temperature, sigma, frozen_t=None):
    """An independent float64 port of the reference's `soft_argmax` (two levels 0, 1;
    torch's max picks the first of equal values). `frozen_t`: the temperature to use
    instead of the controller's (the reference detaches it). Returns (value, T)."""
    z = np.asarray(z, np.float64)
    base = np.floor(z)
    f = z - base
    levels = np.array([0.0, 1.0]).reshape(2, *([1] * z.ndim))
    m = np.exp(-np.abs(f[None] - levels))
    nearest = np.argmax(m, axis=0)[None].astype(np.float64)
    score = m * np.exp(-((levels - nearest) ** 2) / sigma ** 2)
    t = temperature / np.abs(score[0] - score[1]) if frozen_t is None else frozen_t
    logits = t * score
    p = np.exp(logits - logits.max(axis=0))
    p /= p.sum(axis=0)
    shift = 1.0 / (math.exp(temperature) - 1.0)
    moved = np.array([-shift, 1.0 + shift]).reshape(levels.shape)
    return (moved * p).sum(axis=0) + base, t


def _dasr_gradient(z, temperature, sigma):
    z = tf.constant(np.asarray(z, np.float32))
    with tf.GradientTape() as tape:
        tape.watch(z)
        y = distance_aware_soft_round(z, temperature, sigma)
    return y.numpy(), tape.gradient(y, z).numpy()


def test_soft_round_is_the_nearest_level_with_the_distance_aware_gradient():
    z = np.array([-1.0, 0.0, 0.2, 0.5, 0.7, 2.5, 2.9], np.float32)
    for gamma in (0.5, 2.0, 8.0, 60.0):
        value, _ = _dasr_gradient(z, gamma, 1.0)
        # ties at ½ go to the lower level (the reference's first maximum)
        np.testing.assert_allclose(value, [-1, 0, 0, 0, 1, 2, 3], atol=2e-6)
    for sigma in (1.0, 2.0):
        far = math.exp(-1.0 / sigma ** 2)
        gain = 2.0 / (2.0 * math.sinh(2.0))  # γ/(2 sinh γ) at γ = 2
        at_level = gain * (1 + far / math.e) / (1 - far / math.e)
        at_midpoint = gain * (1 + far) / (1 - far)
        _, grad = _dasr_gradient([3.0, 3.5, -0.5], 2.0, sigma)
        np.testing.assert_allclose(grad, [at_level, at_midpoint, at_midpoint], rtol=1e-5)
    assert at_midpoint == pytest.approx(2.2172, abs=1e-4)  # σ = 2: steepest between levels
    # T large: hard rounding and a vanishing gradient
    _, grad = _dasr_gradient(z, 60.0, 1.0)
    assert np.max(np.abs(grad)) < 1e-20


def test_soft_round_matches_the_reference_algorithm_and_its_gradient():
    z = np.random.default_rng(0).uniform(-3.0, 3.0, 200)
    for gamma, sigma in ((2.0, 1.0), (2.0, 2.0), (1.0, 0.7)):
        value, grad = _dasr_gradient(z, gamma, sigma)
        expected, t = reference_soft_round(z, gamma, sigma)
        np.testing.assert_allclose(value, expected, atol=2e-6)
        np.testing.assert_allclose(expected, np.floor(z + 0.5), atol=1e-12)
        eps = 1e-6  # the reference's T is detached: differentiate with it held
        numeric = (reference_soft_round(z + eps, gamma, sigma, t)[0]
                   - reference_soft_round(z - eps, gamma, sigma, t)[0]) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-4)


def _build(quantizer, shape):
    layer = keras.layers.Layer()
    return quantizer.build(shape, "t", layer)


def test_weights_are_odd_multiples_of_scale_and_training_forward_is_inference():
    rng = np.random.default_rng(1)
    w = rng.normal(0.02, 0.1, (3, 3, 4, 6)).astype(np.float32)
    for bits in (1, 2, 4, 8):
        q = DAQQuantizer(bits)
        variables = _build(q, w.shape)
        trained = q(tf.constant(w), True, variables).numpy()
        inferred = q(tf.constant(w), False, variables).numpy()
        np.testing.assert_array_equal(trained, inferred)
        top = 2 ** bits - 1
        beta = float(variables["scale"].numpy())
        codes = inferred / (beta * w.std()) * top  # β is in units of σ_w
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert set(np.unique(np.round(codes)).astype(int)) <= set(range(-top, top + 1, 2))
        # the formula with the reference's init l = −3, u = 3
        normalized = (w - w.mean()) / w.std()
        k = np.round(np.clip((normalized + 3.0) / (6.0 / top), 0, top))
        levels = (2 * k - top) / top
        np.testing.assert_allclose(codes, levels * top, atol=1e-3)
        # β from the first call: mean|w| / (σ_w·mean|q|)
        assert beta == pytest.approx(np.mean(np.abs(w)) / (w.std() * np.mean(np.abs(levels))),
                                     rel=1e-5)


def test_per_channel_weights_keep_each_filters_mean_and_scale():
    rng = np.random.default_rng(6)
    w = (rng.normal(0.0, 1.0, (9, 4)) * [0.01, 0.1, 1.0, 10.0] + [0.0, 0.1, 0.5, 0.0])
    w = w.astype(np.float32)
    q = DAQQuantizer(4, per_channel=True)
    variables = _build(q, w.shape)
    y = q(tf.constant(w), True, variables).numpy()
    rms = np.sqrt(np.mean(w.astype(np.float64) ** 2, axis=0))
    top = 15
    k = np.round(np.clip((w / rms + 3.0) / (6.0 / top), 0, top))
    levels = (2 * k - top) / top
    beta = variables["scale"].numpy()
    np.testing.assert_allclose(beta, np.mean(np.abs(w), 0) / (rms * np.mean(np.abs(levels), 0)),
                               rtol=1e-5)
    np.testing.assert_allclose(y, beta * rms * levels, rtol=1e-5, atol=1e-9)
    # each channel's output follows its own scale and mean
    np.testing.assert_allclose(np.mean(np.abs(y), 0), np.mean(np.abs(w), 0), rtol=1e-5)
    assert np.mean(y[:, 2]) > 0.25


def test_activations_clip_at_zero_and_start_at_three_standard_deviations():
    x = np.random.default_rng(2).normal(0.5, 1.0, (32, 10)).astype(np.float32)
    q = DAQQuantizer(3, signed=False)
    variables = _build(q, (None, 10))
    trained = q(tf.constant(x), True, variables).numpy()
    upper = float(variables["upper"].numpy())
    assert upper == pytest.approx(3.0 * x.std(), rel=1e-5)
    inferred = q(tf.constant(x), False, variables).numpy()
    np.testing.assert_array_equal(trained, inferred)
    expected = upper * np.round(np.clip(x / upper * 7, 0, 7)) / 7
    np.testing.assert_allclose(inferred, expected, atol=1e-5)
    assert inferred.min() == 0.0 and inferred.max() == pytest.approx(upper)


def _frozen_t_surrogate(z, gamma, sigma):
    """The reference's training value as a function of z with T held at z's value."""
    _, t = reference_soft_round(z, gamma, sigma)
    return lambda zz: reference_soft_round(zz, gamma, sigma, t)[0]


def test_weight_gradients_of_interval_scale_and_inputs_against_finite_differences():
    rng = np.random.default_rng(3)
    w = rng.normal(0.0, 0.2, (12, 3)).astype(np.float32)
    q = DAQQuantizer(3, per_channel=True, axis=-1)
    variables = _build(q, w.shape)
    q(tf.constant(w), True, variables)  # β initialized
    variables["lower"].assign([-2.5, -3.0, -2.0])
    variables["upper"].assign([2.0, 3.5, 2.5])
    upstream = rng.normal(size=w.shape)
    x = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, True, variables)
        total = tf.reduce_sum(y * upstream.astype(np.float32))
    keys = ["lower", "upper", "scale"]
    grads = tape.gradient(total, [x] + [variables[k] for k in keys])
    grads = [g.numpy() for g in grads]

    w64 = w.astype(np.float64)
    rms = np.sqrt(np.mean(w64 ** 2, axis=0))  # per channel: σ_w about 0 (μ = 0)
    normalized = w64 / rms
    top = 7.0
    base = {k: variables[k].numpy().astype(np.float64) for k in keys}

    def z_of(values, lower, upper):
        return np.clip((values - lower) / ((upper - lower) / top), 0.0, top)

    z0 = z_of(normalized, base["lower"], base["upper"])
    soft = _frozen_t_surrogate(z0, 2.0, 1.0)

    def loss(values=normalized, lower=base["lower"], upper=base["upper"], scale=base["scale"]):
        out = scale * rms * (2.0 * soft(z_of(values, lower, upper)) - top) / top
        return np.sum(out * upstream)

    eps = 1e-6
    for key, grad in zip(keys, grads[1:]):
        numeric = np.zeros(3)
        for ch in range(3):
            plus, minus = base[key].copy(), base[key].copy()
            plus[ch] += eps
            minus[ch] -= eps
            numeric[ch] = (loss(**{key: plus}) - loss(**{key: minus})) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)
        assert np.max(np.abs(grad)) > 1e-2
    # ∂/∂β is also the finite difference of the (hard) forward itself
    scale = variables["scale"].numpy()
    y0 = q(x, True, variables).numpy()
    variables["scale"].assign(scale + 1e-2)
    y1 = q(x, True, variables).numpy()
    variables["scale"].assign(scale)
    np.testing.assert_allclose(((y1 - y0) / 1e-2 * upstream).sum(0), grads[3], rtol=1e-3)
    # x: through the normalization by the (constant) σ_w
    numeric = np.zeros_like(w64)
    for index in np.ndindex(*w.shape):
        plus, minus = normalized.copy(), normalized.copy()
        plus[index] += eps / rms[index[1]]
        minus[index] -= eps / rms[index[1]]
        numeric[index] = (loss(values=plus) - loss(values=minus)) / (2 * eps)
    np.testing.assert_allclose(grads[0], numeric, rtol=1e-3, atol=1e-4)


def test_activation_bound_gradient_against_finite_differences():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(-0.5, 2.0, 40), [3.0, 4.0]]).astype(np.float32)
    q = DAQQuantizer(2, signed=False)
    variables = _build(q, (None,))
    variables["initialized"].assign(1.0)
    variables["upper"].assign(2.5)
    upstream = rng.normal(size=x.shape)
    tx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tx)
        total = tf.reduce_sum(q(tx, True, variables) * upstream.astype(np.float32))
    grad_x, grad_u = (g.numpy() for g in tape.gradient(total, [tx, variables["upper"]]))
    x64, top = x.astype(np.float64), 3.0
    soft = _frozen_t_surrogate(np.clip(x64 * top / 2.5, 0, top), 2.0, 2.0)

    def loss(values=x64, upper=2.5):
        return np.sum(upper * soft(np.clip(values * top / upper, 0, top)) / top * upstream)

    eps = 1e-6
    numeric_u = (loss(upper=2.5 + eps) - loss(upper=2.5 - eps)) / (2 * eps)
    assert float(grad_u) == pytest.approx(numeric_u, rel=1e-4)
    numeric_x = np.array([(loss(values=x64 + eps * e) - loss(values=x64 - eps * e)) / (2 * eps)
                          for e in np.eye(len(x))])
    np.testing.assert_allclose(grad_x, numeric_x, rtol=1e-3, atol=1e-5)
    assert np.all(grad_x[x < 0] == 0) and np.all(grad_x[x > 2.5] == 0)


def test_arguments_are_checked_and_the_config_round_trips():
    with pytest.raises(ValueError, match=r"num_bits=9 is not supported; allowed: 1, 2"):
        DAQQuantizer(9)
    with pytest.raises(ValueError, match=r"num_bits=1 is not supported; allowed: 2, 3"):
        DAQQuantizer(1, signed=False)
    with pytest.raises(ValueError, match=r"temperature=0 is not supported; allowed: a finite"):
        DAQQuantizer(temperature=0)
    with pytest.raises(ValueError, match=r"sigma=-1.0 is not supported"):
        DAQQuantizer(sigma=-1.0)
    with pytest.raises(ValueError, match=r"per_channel=True is not supported for activations"):
        DAQQuantizer(4, signed=False, per_channel=True)
    with pytest.raises(ValueError, match=r"axis='x' is not supported; allowed: an int"):
        DAQQuantizer(axis="x")
    q = deserialize_quantizer(serialize_quantizer(DAQQuantizer(3, True, True, 0, 1.5, 0.8)))
    assert isinstance(q, DAQQuantizer) and q.get_config() == {
        "num_bits": 3, "signed": True, "per_channel": True, "axis": 0,
        "temperature": 1.5, "sigma": 0.8}
    assert DAQQuantizer(signed=True).kernel_width == 1.0
    assert DAQQuantizer(signed=False).kernel_width == 2.0
    assert [DAQQuantizer(b).deployment() for b in (1, 2, 3, 4, 7, 8)] == [
        Deployment.INT4, Deployment.INT4, Deployment.INT4, Deployment.INT8, Deployment.INT8,
        Deployment.SIMULATION]
    assert DAQQuantizer(4, signed=False).deployment() is Deployment.INT8_WIDENED
    assert DAQQuantizer(8, signed=False).deployment() is Deployment.INT8


def _trained_w4a4_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(8, 3, name="conv2")(x)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(x))
    config = tfquant.QuantConfig(weight_quantizer="DAQQuantizer",
                                 activation_quantizer="DAQQuantizer", weight_bits=4,
                                 activation_bits=4, first_last_bits=None)
    qmodel = tfquant.quantize_model(keras.Model(inputs, outputs), config)
    qmodel.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.default_rng(5)
    x = rng.random((64, 8, 8, 3)).astype(np.float32)
    y = rng.normal(size=(64, 4)).astype(np.float32)
    before = [v.numpy().copy() for v in qmodel.trainable_variables]
    qmodel.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return qmodel, x, before


def test_quantized_model_trains_saves_loads_and_exports_exactly(tmp_path):
    qmodel, x, before = _trained_w4a4_model()
    quantizers = {type(v.quantizer).__name__ for v in tfquant.keras.quantizer_slots(qmodel)}
    assert "DAQQuantizer" in quantizers
    names = [v.name for v in qmodel.trainable_variables]
    moved = {n for n, a, b in zip(names, before, qmodel.trainable_variables)
             if not np.array_equal(a, b.numpy())}
    for part in ("lower", "upper", "scale"):
        assert any(part in n for n in moved), (part, sorted(moved))
    path = str(tmp_path / "daq.keras")
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(qmodel.predict(x, verbose=0), loaded.predict(x, verbose=0))

    report = tfquant.export_tflite(loaded, representative_data=x)
    assert report.float_ops == []
    kernels = [t for t in report.summary.weight_tensors().values()
               if {"CONV_2D", "FULLY_CONNECTED"} & set(t.used_by)
               and t.type_name in ("INT4", "INT8")]
    assert len(kernels) == 3 and {t.type_name for t in kernels} == {"INT8"}
    assert report.max_abs_diff_lsb <= 2, report


def test_eight_bit_weights_need_nine_bit_integers_and_export_on_the_nearest_grid():
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(3, name="dense")(keras.layers.Dense(5, name="hidden")(inputs))
    qmodel = tfquant.quantize_model(keras.Model(inputs, outputs), tfquant.QuantConfig(
        weight_quantizer="DAQQuantizer", weight_bits=8))
    qmodel.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(7).normal(size=(32, 6)).astype(np.float32)
    qmodel.fit(x, x[:, :3], epochs=1, batch_size=16, verbose=0)
    with pytest.raises(tfquant.ExportError, match="no exact integer form"):
        tfquant.export_tflite(qmodel, representative_data=x)
    report = tfquant.export_tflite(qmodel, representative_data=x, nonuniform="nearest_grid")
    assert report.float_ops == []
    assert any("nearest int8 grid" in note for note in report.notes)
