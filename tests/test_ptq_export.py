"""A PTQ'd model exports through `export_tflite` and LiteRT agrees with it as with QAT
models (same bounds as tests/test_export.py)."""

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from model_zoo import train_float
from tfquant import ptq
from tfquant.export.litert_runner import run_litert


def inverted_residual_model():
    """Stem, an inverted residual block with ReLU6, depthwise, BN and a shortcut, and a
    dense head."""
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.Conv2D(48, 1, use_bias=False, name="expand")(x)
    y = layers.BatchNormalization(momentum=0.9, name="expand_bn")(y)
    y = layers.ReLU(6.0, name="expand_relu")(y)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(y)
    y = layers.BatchNormalization(momentum=0.9, name="dw_bn")(y)
    y = layers.ReLU(6.0, name="dw_relu")(y)
    y = layers.Conv2D(16, 1, use_bias=False, name="project")(y)
    y = layers.BatchNormalization(momentum=0.9, name="project_bn")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.Flatten(name="flatten")(layers.MaxPooling2D(2, name="pool")(x))
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained_float_model(fashion_mnist_small):
    return train_float(inverted_residual_model, 11, fashion_mnist_small[0])


@pytest.mark.parametrize("setting", ["w8a8_percentile", "w8a8_per_tensor_dfq",
                                     "w4a8_mse_adaround"])
def test_ptq_model_exports_and_agrees_with_litert(trained_float_model, fashion_mnist_small,
                                                  setting):
    (x_train, _), (x_test, y_test) = fashion_mnist_small
    calib = x_train[:256]
    if setting == "w8a8_percentile":
        qmodel = ptq.quantize(trained_float_model, calib, calibrator="percentile", verbose=0)
    elif setting == "w8a8_per_tensor_dfq":
        qmodel = ptq.quantize(trained_float_model, calib, data_free=True, verbose=0,
                              config=tfquant.QuantConfig(per_channel_weights=False))
    else:
        qmodel = ptq.quantize(trained_float_model, calib, rounding="adaround",
                              adaround_iterations=100, verbose=0,
                              config=tfquant.QuantConfig(weight_bits=4,
                                                         weight_calibrator="mse"))
    report = tfquant.export_tflite(qmodel, representative_data=x_test)
    assert report.float_ops == []
    assert report.num_samples == len(x_test)
    assert report.argmax_agreement >= 0.99, report
    assert report.max_abs_diff_lsb <= 3, report
    if setting.startswith("w4"):
        assert "INT4" in report.weight_dtypes.values()
    litert = run_litert(report.flatbuffer, x_test)[0]
    keras_logits = qmodel.predict(x_test, verbose=0)
    litert_accuracy = np.mean(np.argmax(litert, -1) == y_test)
    keras_accuracy = np.mean(np.argmax(keras_logits, -1) == y_test)
    assert abs(litert_accuracy - keras_accuracy) <= 0.01
    assert keras_accuracy > 0.4  # far above chance (0.1): the PTQ model still works
