"""BN re-estimation (`tfquant.reestimate_batch_norm`, `callbacks.ReestimateBatchNorm`):
the moving statistics become the batch statistics of the current weights; nothing else
of the model changes."""

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant.callbacks import ReestimateBatchNorm


def model_with_three_kinds_of_bn():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2))
    x = layers.Conv2D(6, 3, name="conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.99, name="folded")(x))
    x = layers.BatchNormalization(name="standalone")(layers.Dropout(0.5)(x))
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(x))


def conv_outputs_the_bn_sees(qmodel, x):
    """What the folded BN normalizes: the deployed (folded, quantized) convolution of the
    layer's own, quantized, input, divided by the fold factor γ/σ_mv, plus the bias."""
    conv = qmodel.get_layer("conv")
    conv_inputs = keras.Model(qmodel.inputs, conv.input)(x)
    kernel, _ = conv.deployed_kernels()["kernel"]
    unfolded = kernel / np.asarray(conv.fold_factor())
    return np.asarray(conv.layer.convolution_op(conv_inputs, unfolded) + conv.layer.bias)


def quantizer_state(qmodel):
    return [v.numpy().copy() for slot in tfquant.keras.quantizer_slots(qmodel)
            for v in slot.variables.values()]


def test_moving_statistics_become_the_batch_statistics_of_the_current_weights():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(96, 8, 8, 2)) * 3 + 1).astype(np.float32)
    qmodel = tfquant.quantize_model(model_with_three_kinds_of_bn())
    qmodel(x[:32], training=True)  # calibrate the ranges once
    weights = [w.numpy().copy() for w in qmodel.trainable_weights]
    ranges = quantizer_state(qmodel)
    folded = qmodel.get_layer("conv")
    assert tfquant.reestimate_batch_norm(qmodel, x, batch_size=32) == 2
    # Over the three batches: the means of the batch means and variances.
    outputs = conv_outputs_the_bn_sees(qmodel, x).reshape(3, -1, 6)
    np.testing.assert_allclose(folded.batch_norm.moving_mean.numpy(),
                               outputs.mean(axis=1).mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(folded.batch_norm.moving_variance.numpy(),
                               outputs.var(axis=1).mean(axis=0), rtol=1e-4, atol=1e-5)
    # Weights, quantizer ranges, momenta, the freeze switch and dropout are as they were.
    for before, after in zip(weights, qmodel.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    for before, after in zip(ranges, quantizer_state(qmodel)):
        np.testing.assert_array_equal(before, after)
    assert folded.batch_norm.momentum == 0.99 and not folded.batch_norm_frozen
    assert [l.rate for l in qmodel.layers if isinstance(l, layers.Dropout)] == [0.5]


def test_the_callback_reestimates_at_the_end_of_training():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(64, 8, 8, 2)) * 3 + 1).astype(np.float32)
    y = rng.integers(0, 3, 64)
    qmodel = tfquant.quantize_model(model_with_three_kinds_of_bn())
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[ReestimateBatchNorm(x)])
    bn = qmodel.get_layer("conv").batch_norm
    outputs = conv_outputs_the_bn_sees(qmodel, x).reshape(-1, 6)
    np.testing.assert_allclose(bn.moving_mean.numpy(), outputs.mean(axis=0), rtol=1e-4,
                               atol=1e-5)


def test_bad_arguments_are_refused():
    qmodel = tfquant.quantize_model(model_with_three_kinds_of_bn())
    with pytest.raises(ValueError, match="data is empty"):
        tfquant.reestimate_batch_norm(qmodel, np.zeros((0, 8, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"batch_size=0 is not supported; allowed: a whole "
                                         r"number ≥ 1"):
        ReestimateBatchNorm(np.zeros((4, 8, 8, 2)), batch_size=0)
