import os

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant.export import ExportError
from tfquant.export.litert_runner import run_litert

from model_zoo import LOSS, train_float
from test_quantize_model import all_layers_model, calibrate


def demo_like_model():
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2)(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = layers.BatchNormalization(name="bn_dw")(y)
    y = layers.ReLU(name="relu_dw")(y)
    y = layers.Conv2D(16, 1, use_bias=False, name="pw")(y)
    y = layers.BatchNormalization(name="bn_pw")(y)
    x = layers.ReLU(name="relu_res")(layers.Add(name="add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained_qat_model(fashion_mnist_small):
    (x_train, y_train), _ = fashion_mnist_small
    model = train_float(demo_like_model, 7, (x_train, y_train), metrics=["accuracy"])
    qmodel = tfquant.quantize_model(model)
    qmodel.compile(optimizer=keras.optimizers.Adam(3e-4), loss=LOSS, metrics=["accuracy"])
    qmodel.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    return model, qmodel


def test_int8_export_is_integer_and_agrees_with_keras(trained_qat_model, fashion_mnist_small,
                                                      tmp_path):
    model, qmodel = trained_qat_model
    _, (x_test, y_test) = fashion_mnist_small
    path = str(tmp_path / "sub" / "model.tflite")
    report = tfquant.export_tflite(qmodel, path, representative_data=x_test)
    assert os.path.getsize(path) == report.size_bytes == len(report.flatbuffer)
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD"):
        assert report.op_counts[op] >= 1, op
    assert report.float_ops == []
    assert set(report.weight_dtypes.values()) <= {"INT8", "INT32"}
    assert list(report.weight_dtypes.values()).count("INT8") == 4  # 3 convs + 1 dense
    assert report.num_samples == len(x_test)
    assert report.argmax_agreement >= 0.99
    assert report.max_abs_diff_lsb <= 3
    text = str(report)
    assert "FULLY_CONNECTED" in text and "argmax agree" in text
    # The LiteRT accuracy follows the Keras QAT accuracy.
    litert = run_litert(report.flatbuffer, x_test)[0]
    keras_accuracy = qmodel.evaluate(x_test, y_test, verbose=0)[1]
    litert_accuracy = np.mean(np.argmax(litert, -1) == y_test)
    assert abs(litert_accuracy - keras_accuracy) <= 0.01


def test_int8_input_and_output_export_without_quantize_ops(trained_qat_model, fashion_mnist_small):
    _, qmodel = trained_qat_model
    _, (x_test, _) = fashion_mnist_small
    report = tfquant.export_tflite(qmodel, representative_data=x_test[:200],
                                   input_type="int8", output_type="int8")
    main = report.summary.main
    assert main.tensors[main.inputs[0]].type_name == "INT8"
    assert main.tensors[main.outputs[0]].type_name == "INT8"
    assert "QUANTIZE" not in report.op_counts and "DEQUANTIZE" not in report.op_counts
    assert report.argmax_agreement >= 0.99


def test_every_supported_layer_exports_as_integer():
    model = all_layers_model()
    qmodel = tfquant.quantize_model(model)
    x = np.random.rand(64, 16, 16, 3).astype(np.float32)
    calibrate(qmodel, x)
    report = tfquant.export_tflite(qmodel, representative_data=x)
    assert report.float_ops == []
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "ADD",
               "CONCATENATION", "MAX_POOL_2D", "AVERAGE_POOL_2D", "LOGISTIC", "LEAKY_RELU"):
        assert op in report.op_counts, op
    assert report.max_abs_diff_lsb <= 4


def test_float_layers_from_the_config_export_as_float():
    inputs = keras.Input((8, 4))
    x = layers.Conv1D(8, 3, name="conv1d")(inputs)
    x = layers.UnitNormalization(name="norm")(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(3, name="out")(x)
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="norm"):
        tfquant.quantize_model(model)
    qmodel = tfquant.quantize_model(model, tfquant.QuantConfig(float_layers=["norm"]))
    x = np.random.randn(32, 8, 4).astype(np.float32)
    calibrate(qmodel, x)
    report = tfquant.export_tflite(qmodel, representative_data=x)
    assert any("norm" in note for note in report.notes)
    assert report.op_counts["FULLY_CONNECTED"] >= 1
    assert report.max_abs_diff_lsb <= 4


@pytest.mark.parametrize("bits, dtype", [(2, "INT4"), (3, "INT4"), (4, "INT4"), (5, "INT8"),
                                         (7, "INT8")])
def test_every_weight_width_exports_its_exact_grid(bits, dtype):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, name="conv")(inputs)
    outputs = layers.Dense(4, name="dense")(layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    x = np.random.rand(32, 8, 8, 3).astype(np.float32)
    qmodel = tfquant.quantize_model(
        model, tfquant.QuantConfig(weight_bits=bits, first_last_bits=None))
    calibrate(qmodel, x)
    report = tfquant.export_tflite(qmodel, representative_data=x)
    weights = {name: info for name, info in report.summary.weight_tensors().items()
               if info.type_name in ("INT4", "INT8")}
    assert len(weights) == 2 and {w.type_name for w in weights.values()} == {dtype}
    # The b-bit levels k, |k| <= Q = 2^(b-1) - 1, are stored as k·n on the finest exact
    # grid of the storage type, n = (7 or 127) // Q: multiples of n, the top level n·Q.
    limit = 2 ** (bits - 1) - 1
    finer = (7 if dtype == "INT4" else 127) // limit
    for name in weights:
        values = tensor_integers(report.flatbuffer, name).astype(np.int32)
        assert np.all(values % finer == 0)
        assert values.min() >= -limit * finer and values.max() <= limit * finer
        assert values.max() == limit * finer  # the channel maximum sits on the top level
    assert report.max_abs_diff_lsb <= 2


def tensor_integers(flatbuffer, tensor_name):
    """The integer values of a constant INT8/INT4 tensor, read with TF's schema module."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    for tensor in subgraph.tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        if name == tensor_name.split("#")[0]:
            raw = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8)
            if tensor.type == 17:  # INT4: two values a byte, low nibble first
                return np.stack([(raw << 4).astype(np.int8) >> 4, raw >> 4], -1).ravel()
            return raw
    raise KeyError(tensor_name)


def test_bad_export_requests_raise_clear_errors(trained_qat_model):
    model, qmodel = trained_qat_model
    with pytest.raises(ExportError, match="no tfquant quantizers"):
        tfquant.export_tflite(model)
    with pytest.raises(ValueError, match="NaN"):
        tfquant.export_tflite(qmodel, representative_data=np.full((4, 28, 28, 1), np.nan))
    with pytest.raises(ValueError, match=r"sample shape \(28, 28\)"):
        tfquant.export_tflite(qmodel, representative_data=np.zeros((4, 28, 28)))
    with pytest.raises(ValueError, match="non-empty"):
        tfquant.export_tflite(qmodel, representative_data=np.zeros((0, 28, 28, 1)))
    with pytest.raises(ValueError, match="input_type='int4'"):
        tfquant.export_tflite(qmodel, input_type="int4")


def test_a_float_op_in_an_integer_export_is_an_error():
    import tensorflow as tf

    from tfquant.export import inspect_flatbuffer
    from tfquant.export.tflite import check_integer_ops

    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="head")])
    summary = inspect_flatbuffer(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(ExportError, match="FULLY_CONNECTED") as info:
        check_integer_ops(summary)
    assert "float_layers" in str(info.value)
    assert check_integer_ops(summary, allow_float=True)[0].startswith("FULLY_CONNECTED")
