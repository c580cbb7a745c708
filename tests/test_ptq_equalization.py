import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from model_zoo import pooled_dense_head
from tfquant import ptq


def _randomize_bn(model, rng, gamma=(0.2, 3.0), beta=(-1.0, 1.0), variance=(0.5, 2.0)):
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(*gamma, n), rng.uniform(*beta, n),
                               rng.normal(0, 1, n), rng.uniform(*variance, n)])


def mobile_block_model():
    """conv-BN-ReLU6 → depthwise-BN-ReLU → conv-BN-ReLU → pool → dense-ReLU → dense."""
    inputs = keras.Input((10, 10, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(6.0, name="r1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="r2")(x)
    x = layers.Conv2D(12, 1, name="c2")(x)
    x = layers.BatchNormalization(name="bn3")(x)
    x = layers.ReLU(name="r3")(x)
    return keras.Model(inputs, pooled_dense_head(x, 10, 4, names=("gap", "d1", "d2")))


def randomized_model(seed, n=8, **bn_ranges):
    """mobile_block_model with random BN parameters and statistics, and `n` random inputs."""
    rng = np.random.default_rng(seed)
    model = mobile_block_model()
    _randomize_bn(model, rng, **bn_ranges)
    return model, rng.normal(size=(n, 10, 10, 3)).astype(np.float32)


def _by_name(model):
    return {layer.name: layer for layer in model.layers}


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_fold_batch_norm_keeps_the_function():
    model, x = randomized_model(0)
    folded = ptq.fold_batch_norm(model)
    assert not any(isinstance(l, layers.BatchNormalization) for l in folded.layers)
    assert _rel(folded(x).numpy(), model(x).numpy()) < 1e-5
    assert set(ptq.bn_statistics(folded)) == {"c1", "dw", "c2"}


def channel_ranges(layer, side):
    """max |w| per output ("out") or input ("in") channel of a Dense, conv or depthwise
    (multiplier 1) kernel."""
    kernel = np.abs(layer.get_weights()[0])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = kernel[..., 0]
    elif side == "in":
        kernel = np.moveaxis(kernel, -2, -1)
    return kernel.reshape(-1, kernel.shape[-1]).max(axis=0)


def test_cross_layer_equalization_equalizes_ranges_and_keeps_outputs():
    model, x = randomized_model(1)
    reference = ptq.fold_batch_norm(model, relu6_to_relu=True)
    equalized = ptq.cross_layer_equalize(model)
    layers_ = _by_name(equalized)
    r1 = channel_ranges(layers_["c1"], "out")
    r2 = channel_ranges(layers_["dw"], "out")
    r3 = channel_ranges(layers_["c2"], "in")
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    np.testing.assert_allclose(r3, r2, rtol=1e-5)
    np.testing.assert_allclose(channel_ranges(layers_["c2"], "out"),
                               channel_ranges(layers_["d1"], "in"), rtol=1e-5)
    np.testing.assert_allclose(channel_ranges(layers_["d1"], "out"),
                               channel_ranges(layers_["d2"], "in"), rtol=1e-5)
    # Before: the depthwise triple is far from equal.
    before = _by_name(reference)
    assert np.abs(np.log(channel_ranges(before["c1"], "out")
                         / channel_ranges(before["dw"], "out"))).max() > 0.1
    assert _rel(equalized(x).numpy(), reference(x).numpy()) < 1e-4


def test_cle_skips_relu6_chains_unless_converted():
    model = mobile_block_model()
    _randomize_bn(model, np.random.default_rng(2))
    kept = _by_name(ptq.cross_layer_equalize(model, relu6_to_relu=False))
    ratio = channel_ranges(kept["c1"], "out") / channel_ranges(kept["dw"], "out")
    assert np.abs(np.log(ratio)).max() > 0.01


def test_high_bias_absorption_lowers_biases_by_beta_minus_3_gamma_keeping_outputs():
    # Large β, tiny γ: the pre-activations stay above β − 3γ, where absorption is exact.
    model, x = randomized_model(3, gamma=(0.01, 0.02), beta=(1.0, 2.0), variance=(100.0, 200.0))
    equalized = ptq.cross_layer_equalize(model)
    absorbed = ptq.absorb_high_bias(equalized)
    before, after = _by_name(equalized), _by_name(absorbed)
    # c1 (the first layer) only gives: b1 −= max(0, β − 3γ); c2 gives and receives.
    mean, std = ptq.bn_statistics(equalized)["c1"]
    shift = np.maximum(0, mean - 3 * std)
    assert np.all(shift > 0)
    np.testing.assert_allclose(after["c1"].bias.numpy(), before["c1"].bias.numpy() - shift,
                               rtol=1e-5, atol=1e-6)
    assert _rel(absorbed(x).numpy(), equalized(x).numpy()) < 1e-4


def test_weight_factorization_equalizes_output_ranges_and_keeps_outputs():
    model, x = randomized_model(4)
    reference = ptq.fold_batch_norm(model)
    factored = ptq.factorize_weights(model)
    ranges = channel_ranges(_by_name(factored)["dw"], "out")
    np.testing.assert_allclose(ranges, ranges.max(), rtol=1e-5)
    assert _rel(factored(x).numpy(), reference(x).numpy()) < 1e-4


def test_outlier_channel_splitting_keeps_outputs_and_shrinks_ranges():
    model, x = randomized_model(5)
    reference = ptq.fold_batch_norm(model)
    split = ptq.split_channels(model, expand_ratio=0.25)
    before, after = _by_name(reference), _by_name(split)
    assert after["c2"].kernel.shape[-1] == 12 + 3  # c2 → d1: 3 of 12 channels split
    assert after["d1"].kernel.shape[0] == 15
    assert np.abs(after["d1"].kernel.numpy()).max() < np.abs(before["d1"].kernel.numpy()).max()
    assert _rel(split(x).numpy(), reference(x).numpy()) < 1e-5


def test_clipped_normal_mean_matches_sampling():
    rng = np.random.default_rng(6)
    mean, std = np.array([-1.0, 0.5, 4.0]), np.array([1.0, 2.0, 3.0])
    samples = rng.normal(mean, std, size=(400000, 3))
    np.testing.assert_allclose(ptq.clipped_normal_mean(mean, std),
                               np.maximum(samples, 0).mean(0), atol=0.01)
    np.testing.assert_allclose(ptq.clipped_normal_mean(mean, std, 0.0, 6.0),
                               np.clip(samples, 0, 6).mean(0), atol=0.01)


def test_empirical_bias_correction_zeroes_the_mean_output_error():
    model, x = randomized_model(7, n=64)
    config = tfquant.QuantConfig(per_channel_weights=False, weight_bits=4, first_last_bits=None)
    reference = model(x).numpy()
    plain = ptq.quantize(model, x, config=config, verbose=0)
    corrected = ptq.quantize(model, x, config=config, bias_correction="empirical", verbose=0)
    error_plain = np.abs((plain(x).numpy() - reference).mean(0)).max()
    error_corrected = np.abs((corrected(x).numpy() - reference).mean(0)).max()
    assert error_corrected < 0.2 * error_plain
    assert error_corrected < 0.02 * np.abs(reference).mean()


def test_analytic_bias_correction_moves_biases_by_the_expected_error():
    model, x = randomized_model(8, n=16)
    config = tfquant.QuantConfig(per_channel_weights=False, weight_bits=4, first_last_bits=None)
    plain = ptq.quantize(model, x, config=config, data_free=True, bias_correction=False, verbose=0)
    corrected = ptq.quantize(model, x, config=config, data_free=True, verbose=0)
    float_model = ptq.dfq(model)
    stats = ptq.bn_statistics(float_model)
    q, p = _by_name(corrected), _by_name(plain)
    kernel = _by_name(float_model)["c2"].kernel.numpy()
    deployed = q["c2"].deployed_kernels()["kernel"][0].reshape(kernel.shape)
    expected_input = ptq.clipped_normal_mean(*stats["dw"])
    shift = np.einsum("hwio,i->o", deployed - kernel, expected_input)
    np.testing.assert_allclose(q["c2"].layer.bias.numpy(), p["c2"].layer.bias.numpy() - shift,
                               atol=1e-5)
