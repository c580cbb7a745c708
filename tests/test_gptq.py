"""GPTQ (tfquant/ptq/gptq.py): the column update against a direct OBQ reference, the
layer-output error against rounding to nearest, grid-exact weights, argument errors, and
the export of a GPTQ'd model through LiteRT."""

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant import ptq


def _correlated(rng, n, k, rank=4):
    return (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, k))
            + 0.1 * rng.normal(size=(n, k))).astype(np.float32)


def _obq_reference(kernel, hess, bits, group_size, act_order, damping):
    """GPTQ without Cholesky or lazy blocks: after each rounding, invert the damped
    Hessian of the features left and move them by `−(w_q − ŵ_q)/[H_F⁻¹]_qq · [H_F⁻¹]_q,:`
    (the OBQ update, Frantar & Alistarh 2022) — O(K⁴), for tiny kernels only."""
    k, _ = kernel.shape
    qmax = 2 ** (bits - 1) - 1
    h = hess + damping * np.mean(np.diag(hess)) * np.eye(k)
    order = list(np.argsort(-np.diag(hess), kind="stable")) if act_order else list(range(k))
    w = kernel.T.copy()
    codes, steps = np.zeros_like(w), np.zeros_like(w)
    for index, feature in enumerate(order):
        group = range(k) if group_size is None else range(
            feature // group_size * group_size, (feature // group_size + 1) * group_size)
        if not steps[:, list(group)].any():
            steps[:, list(group)] = (np.abs(w[:, list(group)]).max(1) / qmax)[:, None]
        left = order[index:]
        inverse = np.linalg.inv(h[np.ix_(left, left)])
        step = steps[:, feature]
        codes[:, feature] = np.clip(np.floor(w[:, feature] / step + 0.5), -qmax, qmax)
        error = w[:, feature] - codes[:, feature] * step
        w[:, left] -= np.outer(error / inverse[0, 0], inverse[0])
    return codes.T, steps.T


@pytest.mark.parametrize("group_size, act_order", [(None, True), (None, False), (3, True)])
def test_cholesky_update_with_lazy_blocks_equals_the_direct_obq_update(group_size,
                                                                       act_order):
    rng = np.random.default_rng(3)
    x = _correlated(rng, 64, 9, rank=3).astype(np.float64)
    kernel = rng.normal(size=(9, 4))
    hess = ptq.hessian(x)
    result = ptq.gptq_kernel(kernel, hess, 3, group_size=group_size, act_order=act_order,
                             block_size=2)
    codes, steps = _obq_reference(kernel, hess, 3, group_size, act_order, 0.01)
    np.testing.assert_array_equal(result.codes, codes)
    np.testing.assert_allclose(result.steps, steps, rtol=1e-9)
    if act_order:  # the largest diag H first
        assert (np.diff(np.diag(hess)[result.order]) <= 0).all()
    else:
        np.testing.assert_array_equal(result.order, np.arange(9))


def _dense_model(rng):
    inputs = keras.Input((32,))
    outputs = layers.Dense(16, name="dense")(inputs)
    model = keras.Model(inputs, outputs)
    model.get_layer("dense").kernel.assign(rng.normal(size=(32, 16)).astype(np.float32))
    return model


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_lowers_the_layer_output_error_and_keeps_weights_on_the_grid(bits):
    rng = np.random.default_rng(bits)
    model, x = _dense_model(rng), _correlated(rng, 512, 32)
    config = tfquant.QuantConfig(weight_bits=bits, first_last_bits=None)
    nearest = ptq.quantize(model, x, config=config, verbose=0)
    rounded = ptq.quantize(model, x, config=config, rounding="gptq", verbose=0)
    w = model.get_layer("dense").kernel.numpy()

    def deployed(qmodel):
        return {l.name: l for l in qmodel.layers}["dense"].deployed_kernels()["kernel"][0]

    def error(qmodel):
        return np.sum((x @ w - x @ deployed(qmodel)) ** 2)

    assert error(rounded) < 0.5 * error(nearest)
    # Grid-exact: the weight quantizer leaves the stored kernel as it is, every value
    # an integer multiple (|k| ≤ Q) of its channel's step max|w|/Q.
    stored = {l.name: l for l in rounded.layers}["dense"].layer.kernel.numpy()
    np.testing.assert_allclose(deployed(rounded), stored, atol=1e-6)
    qmax = 2 ** (bits - 1) - 1
    codes = stored / (np.abs(stored).max(0) / qmax)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert (np.abs(np.round(codes)).max(0) == qmax).all()


def test_group_steps_and_act_order_lower_the_error_further():
    rng = np.random.default_rng(5)
    x = _correlated(rng, 1024, 64, rank=8)
    kernel = rng.normal(size=(64, 24))
    hess = ptq.hessian(x)
    plain = ptq.gptq_kernel(kernel, hess, 4, act_order=False)
    ordered = ptq.gptq_kernel(kernel, hess, 4)
    grouped = ptq.gptq_kernel(kernel, hess, 4, group_size=16)
    assert ordered.gptq_error < plain.gptq_error < plain.nearest_error
    assert grouped.gptq_error < ordered.gptq_error
    # One step per (group, output channel), fixed for the whole group.
    steps = grouped.steps.reshape(4, 16, 24)
    assert np.all(steps == steps[:, :1])
    direct = np.mean(np.sum((x @ kernel - x @ (grouped.codes * grouped.steps)) ** 2, 1))
    np.testing.assert_allclose(grouped.gptq_error, direct, rtol=1e-4)


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(0)
    kernel, hess = rng.normal(size=(12, 4)), ptq.hessian(rng.normal(size=(40, 12)))
    with pytest.raises(ValueError, match=r"weight bits=1 is not supported; allowed: 2, 3"):
        ptq.gptq_kernel(kernel, hess, 1)
    with pytest.raises(ValueError, match="group_size=5 is not supported; allowed: None or "
                                         "a divisor of the 12 input features"):
        ptq.gptq_kernel(kernel, hess, 4, group_size=5)
    with pytest.raises(ValueError, match=r"damping=0 is not supported"):
        ptq.gptq_kernel(kernel, hess, 4, damping=0)
    with pytest.raises(ValueError, match=r"Hessian must be a finite \[12, 12\]"):
        ptq.gptq_kernel(kernel, hess[:6, :6], 4)
    with pytest.raises(ValueError, match="inputs are empty"):
        ptq.hessian(np.zeros((0, 12)))
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        ptq.hessian(np.where(np.eye(12, dtype=bool)[:1], np.nan, 1.0))
    model = _dense_model(rng)
    with pytest.raises(ValueError, match="calibration data is empty"):
        ptq.quantize(model, [], rounding="gptq", verbose=0)
    with pytest.raises(ValueError, match="rounding='gptx'"):
        ptq.quantize(model, np.ones((8, 32), np.float32), rounding="gptx", verbose=0)
    nan = np.ones((8, 32), np.float32)
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ptq.quantize(model, nan, rounding="gptq", verbose=0)


def test_a_gptq_model_exports_int4_and_litert_agrees():
    rng = np.random.default_rng(7)
    inputs = keras.Input((8, 16))
    x = layers.EinsumDense("abc,cd->abd", output_shape=(8, 32), bias_axes="d",
                           activation="gelu", name="up")(inputs)
    x = layers.Flatten()(x)
    outputs = layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs)
    data = _correlated(rng, 256, 128).reshape(256, 8, 16)
    config = tfquant.QuantConfig(weight_bits=4, first_last_bits=None)
    qmodel = ptq.quantize(model, data, config=config, rounding="gptq", verbose=0)
    results = ptq.gptq_weights(qmodel, [[data]], verbose=0)  # again: already on the grid
    assert set(results) == {"up", "logits"}
    report = tfquant.export_tflite(qmodel, representative_data=data[:64])
    assert report.float_ops == []
    counts = report.weight_dtype_counts()
    assert counts["INT4"] == 2 and counts["INT8"] == 0  # both kernels, 4-bit
    assert report.argmax_agreement >= 0.95, report
    assert report.max_abs_diff_lsb <= 4
