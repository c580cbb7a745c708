"""Nested Functional/Sequential models are inlined; subclassed models are refused."""

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant.keras import ActivationFakeQuant, QuantizedConvolution


def residual_block(name):
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    return keras.Model(inputs, layers.Add(name="add")([inputs, x]), name=name)


def nested_model():
    """stem → a Functional block (itself holding a nested Sequential) → a Sequential."""
    inner = keras.Sequential([keras.Input((8, 8, 4)), layers.Conv2D(4, 1, name="conv")],
                             name="inner_seq")
    block_in = keras.Input((8, 8, 4))
    block = keras.Model(block_in, residual_block("res")(inner(block_in)), name="block")
    tail = keras.Sequential([keras.Input((8, 8, 4)), layers.Conv2D(4, 1, name="tail_conv"),
                             layers.ReLU(name="tail_relu")], name="tail")
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = tail(block(x, training=False))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(5, name="head")(x), name="outer")


def calibrate(qmodel, x):
    tfquant.freeze_batch_norm(qmodel)
    qmodel(x, training=True)


def test_nested_models_are_inlined_and_export_agrees():
    model = nested_model()
    before = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    qmodel = tfquant.quantize_model(model)
    by_name = {layer.name: layer for layer in qmodel.layers}
    # No model inside the quantized one; the nested convolutions are wrapped, the BN of
    # the doubly nested block folded, and name clashes ("conv" twice) resolved by prefix.
    assert not any(isinstance(layer, keras.Model) for layer in qmodel.layers)
    for name in ("stem", "conv", "res_conv", "tail_conv", "head"):
        assert isinstance(by_name[name], QuantizedConvolution), name
    assert by_name["res_conv"].batch_norm is not None
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in qmodel.layers)
    # TFLite fuses the ReLU into the Add's input conv: quantized after the ReLU only.
    assert by_name["res_conv"].output_quantizer is None
    assert isinstance(by_name["relu_quant"], ActivationFakeQuant)
    assert isinstance(by_name["add_quant"], ActivationFakeQuant)
    # The original model is untouched: no new nodes on its layers.
    assert {layer.name: len(layer._inbound_nodes) for layer in model.layers} == before
    # The weights came along: the quantized model computes what the float one does.
    calibrate(qmodel, x)
    reference = model(x, training=False)
    error = np.abs(np.asarray(qmodel(x)) - np.asarray(reference)).max()
    assert error < 0.05 * np.abs(np.asarray(reference)).max()
    report = tfquant.export_tflite(qmodel, representative_data=x)
    assert report.float_ops == [] and report.max_abs_diff_lsb <= 1
    assert report.op_counts["CONV_2D"] == 4 and "BATCH_NORM" not in str(report.op_counts)


def test_shared_nested_model_stays_shared_and_float_nested_model_stays_whole():
    encoder = keras.Sequential([keras.Input((6,)), layers.Dense(4, name="enc")], name="encoder")
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    outputs = layers.Dense(1, name="head")(layers.Concatenate()([encoder(a), encoder(b)]))
    model = keras.Model([a, b], outputs)
    qmodel = tfquant.quantize_model(model)
    wrappers = [layer for layer in qmodel.layers if isinstance(layer, QuantizedConvolution)]
    assert sorted(w.name for w in wrappers) == ["enc", "head"]
    assert len(qmodel.get_layer("enc")._inbound_nodes) == 2  # one layer, two calls
    data = [np.ones((2, 6), "float32"), -np.ones((2, 6), "float32")]
    assert qmodel(data).shape == (2, 1)

    kept = tfquant.quantize_model(model, tfquant.QuantConfig(float_layers=["encoder"]))
    nested = [layer for layer in kept.layers if isinstance(layer, keras.Model)]
    assert [layer.name for layer in nested] == ["encoder"]
    np.testing.assert_allclose(nested[0].get_weights()[0], encoder.get_weights()[0])


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = layers.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


def test_subclassed_models_are_refused_with_the_class_and_the_workaround():
    model = Subclassed(name="sub")
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match=r"Subclassed.*Functional"):
        tfquant.quantize_model(model)
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, layers.Dense(2, name="head")(Subclassed(name="sub")(inputs)))
    with pytest.raises(ValueError) as error:
        tfquant.quantize_model(outer)
    message = str(error.value)
    assert "'sub' (Subclassed): a subclassed model" in message
    assert "float_layers=['sub']" in message and "Functional" in message
    # The workaround named in the message works: the subclassed model stays float.
    kept = tfquant.quantize_model(outer, tfquant.QuantConfig(float_layers=["sub"]))
    assert [type(layer).__name__ for layer in kept.layers if isinstance(layer, keras.Model)] \
        == ["Subclassed"]
    assert isinstance(kept.get_layer("head"), QuantizedConvolution)
