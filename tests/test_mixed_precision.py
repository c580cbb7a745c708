"""Mixed-precision policies: quantizer math stays float32, the model trains and exports."""

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant.keras import ActivationFakeQuant, QuantizedConvolution
from tfquant.keras.dtypes import float32_copy


def small_cnn():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Add(name="add")([x, layers.Conv2D(6, 1, name="pointwise")(x)])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    # The Keras mixed-precision recipe: the logits layer in float32.
    return keras.Model(inputs, layers.Dense(4, dtype="float32", name="logits")(x))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_model_quantizes_trains_and_exports(policy):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 4, 64)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        qmodel = tfquant.quantize_model(small_cnn())
        qmodel.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = qmodel.fit(x, y, batch_size=32, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert np.isfinite(history.history["loss"][0])
    conv = qmodel.get_layer("conv")
    assert isinstance(conv, QuantizedConvolution) and conv.dtype_policy.name == policy
    # The float32 logits layer keeps its policy; its wrapper computes and returns float32.
    assert qmodel.get_layer("logits").dtype_policy.name == "float32"
    assert qmodel(x[:2]).dtype == "float32"
    assert qmodel.get_layer("relu_quant")(np.ones((1, 2), "float16")).dtype == policy[6:]
    # Every quantizer and kernel variable is float32, and the ranges observed the data.
    for layer in qmodel.layers:
        for weight in layer.weights:
            assert weight.dtype == "float32", (layer.name, weight.name)
    fake_quants = [layer for layer in qmodel.layers if isinstance(layer, ActivationFakeQuant)]
    for layer in fake_quants:
        low = float(layer.quantizer_variables["min"].numpy())
        high = float(layer.quantizer_variables["max"].numpy())
        assert float(layer.quantizer_variables["observed"].numpy()) == 1.0
        assert low <= 0.0 <= high and (low, high) != (-6.0, 6.0), layer.name
    # The export goes through a float32 copy (no float16/bfloat16 casts in the graph).
    exportable = float32_copy(qmodel)
    assert exportable is not qmodel and float32_copy(exportable) is exportable
    report = tfquant.export_tflite(exportable, representative_data=x)
    assert report.float_ops == [] and report.max_abs_diff_lsb <= 1.001
    assert report.argmax_agreement >= 0.95
    # The copy computes what the mixed model does, up to float16 rounding of the layers
    # between the quantizers (a few output steps at most).
    difference = np.abs(np.asarray(exportable(x)) - np.asarray(qmodel(x), dtype="float32"))
    assert difference.max() < 0.1 * np.abs(np.asarray(exportable(x))).max() + 1e-3
