import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfquant
from model_zoo import conv_bn_relu, subclassed_model
from tfquant.keras import ActivationFakeQuant, QuantizedConvolution


def all_layers_model():
    """Every layer kind quantize_model supports, in one Functional model."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = conv_bn_relu(inputs, 8, 3, padding="same")
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = layers.BatchNormalization(name="bn_dw")(y)
    y = layers.ReLU(max_value=6.0, name="relu6")(y)
    y = layers.SeparableConv2D(8, 3, padding="same", name="sep")(y)
    x = layers.Add(name="add")([x, y])
    z = layers.Conv2D(4, 1, activation="relu", name="conv_relu")(x)
    z = layers.LeakyReLU(negative_slope=0.1, name="leaky")(z)
    x = layers.Concatenate(name="concat")([x, z])
    x = layers.MaxPooling2D(2, name="maxpool")(x)
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="convt")(x)
    x = layers.AveragePooling2D(2, name="avgpool")(x)
    x = layers.UpSampling2D(2, name="up")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="sigmoid", name="conv_sig")(x)
    x = layers.Activation("relu", name="act_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Reshape((2, 4), name="reshape")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    x = layers.Dense(16, name="dense")(x)
    x = layers.BatchNormalization(name="bn_dense")(x)
    x = layers.ReLU(name="relu_dense")(x)
    outputs = layers.Dense(5, name="logits")(x)
    return keras.Model(inputs, outputs, name="all_layers")


def calibrate(qmodel, x):
    """Frozen BN + one training-mode pass: sets every activation range from `x`."""
    tfquant.freeze_batch_norm(qmodel)
    qmodel(x, training=True)


def test_layers_are_wrapped_folded_and_quantized():
    model = all_layers_model()
    qmodel = tfquant.quantize_model(model)
    by_name = {layer.name: layer for layer in qmodel.layers}
    for name in ("conv", "dw", "sep", "conv_relu", "convt", "conv_sig", "dense", "logits"):
        assert isinstance(by_name[name], QuantizedConvolution), name
    # BN folded into the convolution before it; none left in the model.
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in qmodel.layers)
    assert by_name["conv"].batch_norm is not None
    assert by_name["dw"].batch_norm is not None and by_name["dense"].batch_norm is not None
    # The output quantizer of conv moves past the ReLU that TFLite fuses into it.
    assert by_name["conv"].output_quantizer is None
    assert isinstance(by_name["relu_quant"], ActivationFakeQuant)
    # A sigmoid is not fused: quantized before and after it.
    assert by_name["conv_sig"].pre_activation_quantizer is not None
    assert by_name["conv_sig"].output_quantizer is not None
    for name in ("add", "concat", "leaky", "act_relu", "gap", "image"):
        assert isinstance(by_name[f"{name}_quant"], ActivationFakeQuant), name
    # Layers that only move values pass through without a quantizer; so does local
    # average pooling, whose int8 TFLite kernel keeps its input's scale.
    for name in ("maxpool", "reshape", "flatten", "dropout", "up", "avgpool"):
        assert f"{name}_quant" not in by_name, name
    assert qmodel.output_shape == model.output_shape


def test_add_followed_by_relu_is_quantized_once_after_the_relu():
    # TFLite fuses the ReLU into ADD; a quantizer between them would round twice.
    inputs = keras.Input((4, 4, 2))
    x = layers.Conv2D(2, 1, name="conv")(inputs)
    x = layers.Add(name="add")([inputs, x])
    outputs = layers.ReLU(name="relu")(x)
    names = [layer.name for layer in tfquant.quantize_model(keras.Model(inputs, outputs)).layers]
    assert "add_quant" not in names and "relu_quant" in names


def test_input_model_is_not_modified():
    model = all_layers_model()
    before = [w.copy() for w in model.get_weights()]
    names = [layer.name for layer in model.layers]
    qmodel = tfquant.quantize_model(model)
    calibrate(qmodel, np.random.rand(4, 16, 16, 3).astype(np.float32))
    qmodel.compile(optimizer="adam", loss="mse")
    qmodel.fit(np.random.rand(8, 16, 16, 3), np.random.rand(8, 5), epochs=1, verbose=0)
    assert [layer.name for layer in model.layers] == names
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_quantized_inference_tracks_float_model():
    model = all_layers_model()
    x = np.random.rand(16, 16, 16, 3).astype(np.float32)
    # Give the BNs non-trivial statistics, as a trained model has.
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.random.uniform(-0.2, 0.2, n))
            layer.moving_variance.assign(np.random.uniform(0.5, 2.0, n))
            layer.gamma.assign(np.random.uniform(0.5, 1.5, n))
            layer.beta.assign(np.random.uniform(-0.2, 0.2, n))
    qmodel = tfquant.quantize_model(model)
    calibrate(qmodel, x)
    expected = model(x, training=False).numpy()
    got = qmodel(x, training=False).numpy()
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.999


def test_folded_kernel_and_bias_equal_conv_then_batch_norm():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(5, 3, use_bias=True, name="conv")(inputs)
    outputs = layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.random.randn(5))
    bn.moving_variance.assign(np.random.uniform(0.1, 3.0, 5))
    bn.gamma.assign(np.random.randn(5))
    bn.beta.assign(np.random.randn(5))
    qmodel = tfquant.quantize_model(model)
    wrapper = qmodel.get_layer("conv")
    kernels, bias = wrapper.folded_kernels_and_bias()
    x = np.random.randn(2, 8, 8, 3).astype(np.float32)
    folded = tf.nn.conv2d(x, kernels["kernel"], 1, "VALID") + bias
    np.testing.assert_allclose(folded.numpy(), model(x, training=False).numpy(), rtol=1e-4,
                               atol=1e-4)


def test_training_and_inference_paths_are_bit_identical():
    """docs/ARCHITECTURE.md §3.1: the C++ op (training) and TF's fake quant (inference) agree exactly."""
    inputs = keras.Input((10, 10, 4))
    x = layers.Conv2D(6, 3, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    outputs = layers.Dense(3, name="dense")(layers.Flatten()(x))
    qmodel = tfquant.quantize_model(keras.Model(inputs, outputs),
                                    tfquant.QuantConfig(activation_ema_decay=0.0))
    tfquant.freeze_batch_norm(qmodel)
    x = np.random.randn(4, 10, 10, 4).astype(np.float32)
    trained = qmodel(x, training=True).numpy()  # sets every range from this batch
    inferred = qmodel(x, training=False).numpy()
    np.testing.assert_array_equal(trained, inferred)


def test_batch_norm_uses_batch_statistics_until_frozen():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = layers.BatchNormalization(momentum=0.5, name="bn")(x)
    model = keras.Model(inputs, outputs)
    qmodel = tfquant.quantize_model(model)
    wrapper = qmodel.get_layer("conv")
    x = (np.random.randn(32, 6, 6, 2) * 3 + 1).astype(np.float32)

    # Before the freeze: batch statistics, so training-mode output ≈ float conv→BN
    # in training mode, and the moving statistics move.
    mean_before = wrapper.batch_norm.moving_mean.numpy().copy()
    got = qmodel(x, training=True).numpy()
    expected = model(x, training=True).numpy()
    assert np.abs(got - expected).max() < 0.1
    assert not np.allclose(wrapper.batch_norm.moving_mean.numpy(), mean_before)

    # After the freeze: moving statistics, which stop changing, also inside fit.
    assert tfquant.freeze_batch_norm(qmodel) == 1 and wrapper.batch_norm_frozen
    qmodel.compile(optimizer="sgd", loss="mse")
    frozen_mean = wrapper.batch_norm.moving_mean.numpy().copy()
    frozen_variance = wrapper.batch_norm.moving_variance.numpy().copy()
    qmodel.fit(x, np.zeros((32, 4, 4, 4)), epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(wrapper.batch_norm.moving_mean.numpy(), frozen_mean)
    np.testing.assert_array_equal(wrapper.batch_norm.moving_variance.numpy(), frozen_variance)
    # ... and training-mode output equals inference-mode output.
    np.testing.assert_allclose(qmodel(x, training=True).numpy(),
                               qmodel(x, training=False).numpy(), atol=1e-5)


def test_folded_batch_norm_before_the_freeze_is_batch_norm_on_the_quantized_float_layer():
    # The one convolution runs with the deployed (folded, quantized) kernel divided by
    # γ/σ_mv; BN in training mode follows. A channel with γ = 0 gives β and keeps its moving
    # statistics (it once gave NaN: 0/0 in the normalization).
    inputs = keras.Input((12,))
    x = layers.Dense(5, name="hidden")(inputs)
    x = layers.BatchNormalization(momentum=0.25, name="bn")(x)
    model = keras.Model(inputs, layers.Dense(2, name="logits")(layers.ReLU()(x)))
    bn = model.get_layer("bn")
    bn.gamma.assign([0.0, -1.5, 0.7, 2.0, 1.0])
    bn.beta.assign([0.5, -0.2, 0.1, 0.0, 0.3])
    bn.moving_mean.assign([0.1, -0.3, 0.2, 0.0, 0.4])
    bn.moving_variance.assign([0.5, 1.0, 2.0, 0.25, 4.0])
    qmodel = tfquant.quantize_model(model)
    wrapper = qmodel.get_layer("hidden")
    assert wrapper.output_quantizer is None
    bn = wrapper.batch_norm
    x = np.random.RandomState(3).randn(40, 12).astype(np.float32) * 2
    kernel, _ = wrapper.deployed_kernels()["kernel"]
    factor = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    safe = np.where(factor == 0, 1.0, factor)
    float_outputs = x @ (kernel / safe)
    mean, variance = float_outputs.mean(0), float_outputs.var(0)
    expected = (bn.gamma.numpy() * (float_outputs - mean) / np.sqrt(variance + bn.epsilon)
                + bn.beta.numpy())
    moving_mean, moving_variance = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    bias = wrapper.layer.bias.numpy()

    got = wrapper(x, training=True).numpy()

    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[:, 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_mean.numpy()[1:], (0.25 * moving_mean
                               + 0.75 * (mean + bias))[1:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy()[1:], (0.25 * moving_variance
                               + 0.75 * variance)[1:], rtol=1e-4)
    assert bn.moving_mean.numpy()[0] == np.float32(0.1)
    assert bn.moving_variance.numpy()[0] == np.float32(0.5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(qmodel(x, training=True)))
    grads = tape.gradient(loss, qmodel.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: layers.Conv1D(4, 3), (10, 3)),
    (lambda: layers.DepthwiseConv2D(3, depth_multiplier=2), (7, 7, 2)),
    (lambda: layers.SeparableConv2D(4, 3), (7, 7, 2)),
    (lambda: layers.Conv3D(3, 2), (4, 4, 4, 2)),
])
def test_folded_batch_norm_batch_statistics_match_float_training_for_every_rank(make_layer,
                                                                                shape):
    inputs = keras.Input(shape)
    outputs = layers.BatchNormalization(momentum=0.5, name="bn")(make_layer()(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer("bn").gamma.assign(
        np.linspace(-2.0, 2.0, outputs.shape[-1]).astype(np.float32) + 0.1)
    qmodel = tfquant.quantize_model(model)
    x = (np.random.RandomState(4).randn(16, *shape) * 3 + 1).astype(np.float32)
    got = qmodel(x, training=True).numpy()
    expected = model(x, training=True).numpy()
    assert np.abs(got - expected).max() < 0.1  # 8-bit weights and outputs
    qbn = [layer for layer in qmodel.layers if isinstance(layer, QuantizedConvolution)][0]
    np.testing.assert_allclose(qbn.batch_norm.moving_mean.numpy(),
                               model.get_layer("bn").moving_mean.numpy(), atol=0.05)
    np.testing.assert_allclose(qbn.batch_norm.moving_variance.numpy(),
                               model.get_layer("bn").moving_variance.numpy(), rtol=0.05)


class Jitter(layers.Layer):
    """A custom layer the layer registry does not know."""

    def call(self, x):
        return x + keras.ops.sin(x)


def test_unsupported_layers_are_listed_with_the_fix():
    inputs = keras.Input((8, 4))
    x = layers.Dense(8, name="dense_in")(inputs)
    x = layers.UnitNormalization(name="norm")(x)
    x = layers.Conv1D(4, 3, name="conv1d")(x)
    x = Jitter(name="jitter")(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(2, name="out")(x)
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError) as info:
        tfquant.quantize_model(model)
    message = str(info.value)
    assert "'norm' (UnitNormalization)" in message
    # A user layer is traced through its call: the error names it and the operation.
    # (The operation's automatic name depends on what ran before in the process.)
    assert re.search(r"'jitter' \(Jitter\): its call uses 'sin(_\d+)?' \(the operation "
                     r"keras\.ops\.Sin\)", message), message
    assert "conv1d" not in message and "float_layers=['norm', 'jitter']" in message
    assert "register_layer_handler" in message
    qmodel = tfquant.quantize_model(model, tfquant.QuantConfig(float_layers=["norm", "jitter"]))
    assert isinstance(qmodel.get_layer("conv1d"), QuantizedConvolution)
    assert type(qmodel.get_layer("jitter")) is Jitter
    assert type(qmodel.get_layer("norm")) is layers.UnitNormalization
    x = np.random.randn(4, 8, 4).astype(np.float32)
    np.testing.assert_allclose(qmodel(x).numpy(), qmodel(x).numpy())
    assert qmodel(x).shape == (4, 2)


def test_float_layers_match_by_regex_and_class():
    model = all_layers_model()
    config = tfquant.QuantConfig(float_layers=[r"conv_.*", layers.Dense])
    qmodel = tfquant.quantize_model(model, config)
    for name in ("conv_relu", "conv_sig", "dense", "logits"):
        assert not isinstance(qmodel.get_layer(name), QuantizedConvolution), name
    assert isinstance(qmodel.get_layer("conv"), QuantizedConvolution)


def test_sequential_models_quantize_and_unbuilt_or_subclassed_are_refused():
    sequential = keras.Sequential([keras.Input((6,)), layers.Dense(4), layers.ReLU(),
                                   layers.Dense(2)])
    qmodel = tfquant.quantize_model(sequential)
    assert sum(isinstance(layer, QuantizedConvolution) for layer in qmodel.layers) == 2

    with pytest.raises(ValueError, match="not built"):
        tfquant.quantize_model(keras.Sequential([layers.Dense(4)]))

    with pytest.raises(ValueError, match="subclassed model"):
        tfquant.quantize_model(subclassed_model())
    with pytest.raises(ValueError, match="keras.Model"):
        tfquant.quantize_model(layers.Dense(3))


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_bits": 1}, "weight_bits=1"),
    ({"weight_bits": 9}, "weight_bits=9"),
    ({"activation_bits": 1}, "activation_bits=1"),
    ({"activation_bits": 12}, "activation_bits=12"),
    ({"first_last_bits": 16}, "first_last_bits=16"),
    ({"weight_quantizer": "NoSuchQuantizer"}, "Unknown quantizer 'NoSuchQuantizer'"),
    ({"rules": ["conv"]}, "rules must be LayerRule"),
    ({"activation_ema_decay": 1.0}, "ema_decay=1.0"),
    ({"float_layers": ["("]}, "not a valid regular expression"),
    ({"float_layers": [3]}, "must be a layer name"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        tfquant.QuantConfig(**kwargs)


def test_save_and_load_keras_without_custom_objects(tmp_path):
    model = all_layers_model()
    qmodel = tfquant.quantize_model(model)
    x = np.random.rand(4, 16, 16, 3).astype(np.float32)
    calibrate(qmodel, x)
    path = str(tmp_path / "q.keras")
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  qmodel(x, training=False).numpy())
    assert loaded.get_layer("conv").batch_norm_frozen


def test_qat_fit_learns_on_fashion_mnist(fashion_mnist_small):
    (x_train, y_train), (x_test, y_test) = fashion_mnist_small
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    outputs = layers.Dense(10)(layers.Flatten()(x))
    qmodel = tfquant.quantize_model(keras.Model(inputs, outputs))
    qmodel.compile(optimizer=keras.optimizers.Adam(3e-3),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    history = qmodel.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    accuracy = qmodel.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.7  # 10 classes: chance is 0.1; float reaches ≈ 0.79
