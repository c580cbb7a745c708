"""inspect_flatbuffer on flatbuffers made by the real TFLite converter."""

import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from tfquant.export.flatbuffer import inspect_flatbuffer
from tfquant.export.report import ExportReport


class ActFakeQuant(keras.layers.Layer):
    """Per-tensor 8-bit activation fake quant, as a QAT graph has at export."""

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_vars(x, -4.0, 4.0, num_bits=8)


class WeightFakeQuantConv(keras.layers.Layer):
    """Conv2D whose kernel variable feeds a symmetric narrow-range per-channel FakeQuant."""

    def __init__(self, filters, num_bits, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_bits = num_bits

    def build(self, input_shape):
        shape = (3, 3, input_shape[-1], self.filters)
        self.kernel = self.add_weight(shape=shape, initializer="glorot_uniform")
        self.bias = self.add_weight(shape=(self.filters,), initializer="random_normal")

    def call(self, x):
        m = tf.reduce_max(tf.abs(self.kernel), axis=[0, 1, 2])
        k = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            self.kernel, -m, m, num_bits=self.num_bits, narrow_range=True
        )
        return tf.nn.conv2d(x, k, 1, "SAME") + self.bias


def _convert(model, **attributes):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    for name, value in attributes.items():
        setattr(converter, name, value)
    return converter.convert()


def _conv_dense_model(fake_quant=True):
    maybe_fq = ActFakeQuant if fake_quant else (lambda: (lambda t: t))
    inp = keras.Input((8, 8, 3))
    x = maybe_fq()(inp)
    x = keras.layers.Conv2D(6, 3, padding="same")(x)
    x = maybe_fq()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5)(x)
    x = maybe_fq()(x)
    return keras.Model(inp, x)


@pytest.fixture(scope="module")
def qat_tflite():
    return _convert(_conv_dense_model(), optimizations=[tf.lite.Optimize.DEFAULT])


@pytest.fixture(scope="module")
def float_tflite():
    return _convert(_conv_dense_model(fake_quant=False))


@pytest.fixture(scope="module")
def int4_tflite():
    inp = keras.Input((8, 8, 3))
    x = ActFakeQuant()(inp)
    x = WeightFakeQuantConv(5, num_bits=4)(x)
    x = ActFakeQuant()(x)
    return _convert(keras.Model(inp, x), optimizations=[tf.lite.Optimize.DEFAULT])


def _op(summary, name):
    (op,) = [op for op in summary.main.operators if op.name == name]
    return op


def test_qat_model_has_int8_conv_and_fully_connected(qat_tflite):
    s = inspect_flatbuffer(qat_tflite)
    assert s.size_bytes == len(qat_tflite)
    counts = s.op_counts()
    assert counts["CONV_2D"] == 1 and counts["FULLY_CONNECTED"] == 1
    # Execution order: float in, quantize, ..., dequantize, float out.
    assert s.main.operators[0].name == "QUANTIZE"
    assert s.main.operators[-1].name == "DEQUANTIZE"
    tensors = s.main.tensors
    for name in ("CONV_2D", "FULLY_CONNECTED"):
        op = _op(s, name)
        assert tensors[op.inputs[0]].type_name == "INT8"
        assert tensors[op.outputs[0]].type_name == "INT8"
        weight = tensors[op.inputs[1]]
        assert weight.type_name == "INT8" and weight.is_constant
        assert weight.buffer_bytes == int(np.prod(weight.shape))
        # Symmetric per-output-channel weights.
        q = weight.quantization
        assert q.quantized_dimension == 0 and len(q.scales) == weight.shape[0]
        assert set(q.zero_points) == {0}
    conv = _op(s, "CONV_2D")
    assert tensors[conv.inputs[1]].shape == (6, 3, 3, 3)
    assert tensors[conv.inputs[2]].type_name == "INT32"
    assert s.float_compute_ops() == []

    weights = s.weight_tensors()
    by_type = {w.type_name for w in weights.values()}
    assert {"INT8", "INT32"} <= by_type and "FLOAT32" not in by_type
    assert weights[tensors[conv.inputs[1]].name].used_by == ("CONV_2D",)
    # Non-constant tensors carry no bytes; the model input is float with no quantization.
    model_input = tensors[s.main.inputs[0]]
    assert model_input.buffer_bytes == 0 and model_input.type_name == "FLOAT32"
    assert model_input.quantization is None
    assert model_input.shape_signature[0] == -1
    assert s.signatures and s.signatures[0].key == "serving_default"


def test_float_model_reports_float_ops(float_tflite):
    s = inspect_flatbuffer(float_tflite)
    names = {op.name for op in s.float_compute_ops()}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= names
    assert "QUANTIZE" not in s.op_counts()
    assert all(t.quantization is None for t in s.main.tensors)
    weights = s.weight_tensors()
    conv = _op(s, "CONV_2D")
    assert weights[s.main.tensors[conv.inputs[1]].name].type_name == "FLOAT32"
    report = ExportReport.from_flatbuffer(float_tflite)
    assert any(line.startswith("CONV_2D") for line in report.float_ops)
    assert "float ops" in str(report) and "CONV_2D" in str(report)


def test_qat_model_without_optimizations_computes_in_float():
    # The FakeQuants become QUANTIZE/DEQUANTIZE pairs around float kernels.
    s = inspect_flatbuffer(_convert(_conv_dense_model()))
    assert s.op_counts()["QUANTIZE"] >= 1 and s.op_counts()["DEQUANTIZE"] >= 1
    assert {"CONV_2D", "FULLY_CONNECTED"} <= {op.name for op in s.float_compute_ops()}


def test_int4_weights_are_typed_from_the_flatbuffer_and_in_the_report(int4_tflite):
    s = inspect_flatbuffer(int4_tflite)
    conv = _op(s, "CONV_2D")
    kernel = s.main.tensors[conv.inputs[1]]
    assert kernel.type_name == "INT4"
    assert kernel.shape == (5, 3, 3, 3)
    assert kernel.buffer_bytes == (np.prod(kernel.shape) + 1) // 2  # two values a byte
    assert kernel.quantization.quantized_dimension == 0 and len(kernel.quantization.scales) == 5
    assert s.weight_tensors()[kernel.name].type_name == "INT4"
    assert s.float_compute_ops() == []
    # The interpreter calls the same tensor int8: types must come from the flatbuffer.
    interpreter = Interpreter(model_content=int4_tflite)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    assert details[kernel.index]["dtype"] == np.int8

    report = ExportReport.from_flatbuffer(int4_tflite, path="m.tflite", max_abs_diff_lsb=0.5,
                                          argmax_agreement=0.9875, num_samples=80, notes=["checked"])
    assert report.weight_dtypes[kernel.name] == "INT4"
    text = str(report)
    assert "INT4" in text and "KiB" in text and "98.75 %" in text and "m.tflite" in text
    assert "float ops" in text and "none" in text
    assert repr(report).startswith("ExportReport(") and "\n" not in repr(report)


def test_static_qdq_mode_exports_an_int4_fully_connected_kernel():
    inp = keras.Input((16,))
    x = ActFakeQuant()(inp)

    class WeightFakeQuantDense(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 3), initializer="glorot_uniform")

        def call(self, x):
            m = tf.reduce_max(tf.abs(self.kernel), axis=0)
            k = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                self.kernel, -m, m, num_bits=4, narrow_range=True)
            return tf.matmul(x, k)

    x = ActFakeQuant()(WeightFakeQuantDense()(x))
    data = _convert(keras.Model(inp, x), optimizations=[tf.lite.Optimize.DEFAULT],
                    _experimental_qdq_conversion_mode="STATIC")
    s = inspect_flatbuffer(data)
    fc = _op(s, "FULLY_CONNECTED")
    assert s.main.tensors[fc.inputs[1]].type_name == "INT4"
    assert s.main.tensors[fc.inputs[1]].shape == (3, 16)


def _rewrite(data, edit):
    """Change a converted model through TF's schema objects and serialize it again."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    edit(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def test_custom_deprecated_and_extended_operator_codes_are_named(float_tflite):
    ops = schema_fb.BuiltinOperator
    original = [op.name for op in inspect_flatbuffer(float_tflite).main.operators]
    reshape_at = original.index("RESHAPE")

    def edit(model):
        for code in model.operatorCodes:
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            if builtin == ops.CONV_2D:  # old files: the code only in deprecated_builtin_code
                code.builtinCode, code.deprecatedBuiltinCode = 0, ops.CONV_2D
            elif builtin == ops.FULLY_CONNECTED:
                code.builtinCode = code.deprecatedBuiltinCode = ops.CUSTOM
                code.customCode = b"MyPackedMatMul"
        # Codes >= 127 live in builtin_code, with a placeholder in the old field.
        extended = schema_fb.OperatorCodeT()
        extended.builtinCode = ops.STABLEHLO_ADD
        extended.deprecatedBuiltinCode = ops.PLACEHOLDER_FOR_GREATER_OP_CODES
        model.operatorCodes.append(extended)
        model.subgraphs[0].operators[reshape_at].opcodeIndex = len(model.operatorCodes) - 1

    s = inspect_flatbuffer(_rewrite(float_tflite, edit))
    expected = ["MyPackedMatMul" if n == "FULLY_CONNECTED" else n for n in original]
    expected[reshape_at] = "STABLEHLO_ADD"
    assert [op.name for op in s.main.operators] == expected
    (custom,) = [op for op in s.main.operators if op.is_custom]
    assert custom.name == custom.custom_code == "MyPackedMatMul"
    assert custom.builtin_code == ops.CUSTOM


def test_buffer_offsets_give_the_same_summary():
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(4)(keras.layers.Dense(8)(inp)))
    plain = inspect_flatbuffer(_convert(model))
    offset = inspect_flatbuffer(_convert(model, _experimental_use_buffer_offset=True))
    assert offset.uses_buffer_offsets and not plain.uses_buffer_offsets
    as_table = lambda s: {k: (w.type_name, w.shape, w.size_bytes) for k, w in s.weight_tensors().items()}
    assert as_table(offset) == as_table(plain)
    assert sorted(w.size_bytes for w in plain.weight_tensors().values())[-1] == 8 * 6 * 4


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"TFL", "only 3 bytes"),
        (b"\x1c\x00\x00\x00xxxx" + bytes(40), "file identifier is b'xxxx', expected b'TFL3'"),
        (b"PK\x03\x04" + bytes(100), "file identifier"),
        (b"\xff\xff\xff\x7fTFL3" + bytes(8), "root table offset"),
    ],
)
def test_bad_headers_raise_value_error(data, message):
    with pytest.raises(ValueError, match="TFLite flatbuffer") as info:
        inspect_flatbuffer(data)
    assert message in str(info.value)


def test_a_path_instead_of_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        inspect_flatbuffer("model.tflite")


def test_truncated_and_corrupted_files_raise_value_error(qat_tflite):
    data = qat_tflite
    rng = random.Random(1234)
    for cut in sorted(rng.sample(range(8, len(data)), 150)):
        with pytest.raises(ValueError):
            inspect_flatbuffer(data[:cut])
    # Random bytes behind a valid identifier, and random byte flips in a real file:
    # either a clean ValueError or a summary, never another exception or a hang.
    for _ in range(200):
        junk = bytearray(rng.randbytes(rng.randrange(8, 400)))
        junk[4:8] = b"TFL3"
        try:
            inspect_flatbuffer(bytes(junk))
        except ValueError as e:
            assert "TFLite flatbuffer" in str(e)
    for _ in range(300):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        try:
            inspect_flatbuffer(bytes(flipped))
        except ValueError as e:
            assert "TFLite flatbuffer" in str(e)
