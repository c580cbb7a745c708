"""Zero-shot PTQ (ZeroQ): calibration inputs distilled from the BatchNormalization
statistics match those statistics, and `ptq.quantize(model, zero_shot=True)` calibrates
a model with no data."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfquant
from tfquant import ptq
from tfquant.ptq.zero_shot import _batch_norm_inputs, statistics_loss


def model_with_known_statistics():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(6, 3, name="conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
    x = layers.Conv2D(4, 3, name="conv2")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn2")(x))
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(x)))
    # Statistics some data really has (so that one input distribution meets them all):
    # images of a bright square on a dark ground, at random places.
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 0.2, (512, 8, 8, 1)).astype(np.float32)
    for image, (row, column) in zip(images, rng.integers(0, 5, (512, 2))):
        image[row:row + 4, column:column + 4] += 0.8
    tfquant.reestimate_batch_norm(model, images, batch_size=512)
    return model


def test_distilled_inputs_match_the_batch_norm_statistics():
    model = model_with_known_statistics()
    norms, probe = _batch_norm_inputs(model)
    x = ptq.distill_calibration_data(model, num_samples=64, steps=300)
    assert x.shape == (64, 8, 8, 1) and x.dtype == np.float32
    outputs = probe(x, training=False)
    for bn, output in zip(norms, outputs):
        output = np.asarray(output).reshape(-1, bn.moving_mean.shape[0])
        np.testing.assert_allclose(output.mean(0), bn.moving_mean.numpy(), atol=0.05)
        np.testing.assert_allclose(output.std(0), np.sqrt(bn.moving_variance.numpy()),
                                   rtol=0.05, atol=0.05)
    # Far from where the noise started.
    targets = [(tf.constant(bn.moving_mean.numpy()),
                tf.constant(np.sqrt(bn.moving_variance.numpy() + bn.epsilon)), -1, bn.epsilon)
               for bn in norms]
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    assert float(statistics_loss(probe, targets, x)) < 0.01 * float(
        statistics_loss(probe, targets, noise))


def test_zero_shot_quantize_calibrates_every_range_without_data():
    qmodel = ptq.quantize(model_with_known_statistics(), zero_shot=True, verbose=0)
    for site_variables in [layer.quantizer_variables for layer in qmodel.layers
                           if hasattr(layer, "quantizer_variables")]:
        low, high = float(site_variables["min"].numpy()), float(site_variables["max"].numpy())
        assert np.isfinite(low) and np.isfinite(high) and high > low


def test_zero_shot_refuses_what_it_cannot_use():
    model = model_with_known_statistics()
    with pytest.raises(ValueError, match="calibration_data or zero_shot=True, not both"):
        ptq.quantize(model, np.zeros((4, 8, 8, 1), np.float32), zero_shot=True, verbose=0)
    plain = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    with pytest.raises(ValueError, match="no BatchNormalization layer"):
        ptq.distill_calibration_data(plain)
    with pytest.raises(ValueError, match=r"steps=0 is not supported; allowed: a whole"):
        ptq.distill_calibration_data(model, steps=0)
