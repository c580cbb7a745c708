"""Weight-only export (`export_tflite(..., activations="dynamic")`): hybrid ops, the
Keras model's weights in the flatbuffer, LiteRT within the documented tolerance."""

import os

import keras
import numpy as np
import pytest
from tensorflow.lite.tools import flatbuffer_utils

import tfquant
from tfquant.export import dynamic
from tfquant.export.flatbuffer import inspect_flatbuffer
from tfquant.export.litert_runner import run_litert
from tfquant.keras.slots import quantizer_slots, quantizers_bypassed


def _float_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="gelu", name="mlp1")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="mlp2")(x))


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).random((48, 8, 8, 2), np.float32)


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    config = tfquant.QuantConfig(activation_quantizer=None, weight_bits=4, first_last_bits=None)
    qmodel = tfquant.ptq.quantize(_float_model(), data, config, verbose=0)
    path = str(tmp_path_factory.mktemp("dyn") / "model.tflite")
    report = tfquant.export_tflite(qmodel, path, representative_data=data,
                                   activations="dynamic")
    return qmodel, report, path


def test_weight_only_config_has_no_activation_quantization():
    config = tfquant.QuantConfig(activation_quantizer=None)
    qmodel = tfquant.quantize_model(_float_model(), config)
    kinds = {type(s.quantizer).__name__ for s in quantizer_slots(qmodel, weights=False)}
    assert kinds == {"FloatActivations"}
    x = np.random.default_rng(1).random((4, 8, 8, 2), np.float32)
    # Only the weights are quantized: the model equals the float model on quantized weights.
    with quantizers_bypassed(qmodel):
        float_out = np.asarray(qmodel(x, training=False))
    assert not np.allclose(np.asarray(qmodel(x, training=False)), float_out)
    assert tfquant.QuantConfig(**config.get_config()).get_config() == config.get_config()


def test_compute_ops_are_hybrid(exported):
    _, report, _ = exported
    main = inspect_flatbuffer(report.flatbuffer).main
    filters = {}
    for op in main.operators:
        if op.name in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"):
            x, w = main.tensors[op.inputs[0]], main.tensors[op.inputs[1]]
            assert x.type_name == "FLOAT32" and w.quantization.per_channel
            filters[op.name] = filters.get(op.name, set()) | {w.type_name}
    # 4-bit weights: INT4 where LiteRT's hybrid kernels take it, int8 for depthwise.
    assert filters == {"CONV_2D": {"INT4"}, "DEPTHWISE_CONV_2D": {"INT8"},
                       "FULLY_CONNECTED": {"INT4"}}
    assert report.argmax_agreement is not None and report.num_samples == 48


def test_flatbuffer_weights_are_the_keras_weights(exported):
    qmodel, report, _ = exported
    assert dynamic.check_hybrid(report.flatbuffer, qmodel)[1] == []
    # One integer changed in a filter: the check finds the layer whose weights differ.
    model = flatbuffer_utils.convert_bytearray_to_object(report.flatbuffer)
    subgraph = model.subgraphs[0]
    op = next(op for op in subgraph.operators
              if subgraph.tensors[op.inputs[1]].type == 9)  # the int8 depthwise filter
    buffer = model.buffers[subgraph.tensors[op.inputs[1]].buffer]
    values = np.array(buffer.data, np.uint8).view(np.int8)
    values[0] = values[0] + 1 if values[0] < 127 else values[0] - 1
    buffer.data = values.view(np.uint8)
    tampered = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    problems = dynamic.check_hybrid(tampered, qmodel)[1]
    assert len(problems) == 1 and "dw.kernel" in problems[0]


def test_litert_within_documented_tolerance(exported, data):
    qmodel, report, _ = exported
    keras_out = np.asarray(qmodel(data, training=False))
    litert_out = run_litert(report.flatbuffer, data)[0]
    difference = np.max(np.abs(keras_out - litert_out)) / np.max(np.abs(keras_out))
    assert 0 < difference <= dynamic.TOLERANCE  # > 0: LiteRT did quantize the activations
    assert any("within" in note for note in report.notes)


def test_bad_arguments_and_activation_quantizers(exported, data, tmp_path):
    qmodel, _, path = exported
    with pytest.raises(ValueError, match=r"activations='dynamc' is not supported; allowed: "
                                         r"'static', 'dynamic'"):
        tfquant.export_tflite(qmodel, activations="dynamc")
    with pytest.raises(ValueError, match="keeps float32 inputs"):
        tfquant.export_tflite(qmodel, activations="dynamic", input_type="int8")
    static = tfquant.quantize_model(_float_model())
    static(data[:4], training=True)
    target = tmp_path / "kept.tflite"
    target.write_bytes(b"old")
    with pytest.raises(tfquant.ExportError, match=r"quantizes activations at: .*"
                                                  r"activation_quantizer=None"):
        tfquant.export_tflite(static, str(target), activations="dynamic")
    assert target.read_bytes() == b"old"  # a refused export writes nothing
    assert os.listdir(tmp_path) == ["kept.tflite"]


def test_file_written_whole(exported):
    _, report, path = exported
    with open(path, "rb") as handle:
        assert handle.read() == report.flatbuffer
    assert [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tfquant-")] == []
