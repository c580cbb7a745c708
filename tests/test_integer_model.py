"""The integer-exact model against LiteRT, per op and per backend: 0 LSB.

Single-op flatbuffers come from the converter's own int8 quantization of float models
with random weights and input ranges (so the scales and zero points are random too);
each is run by LiteRT with and without XNNPACK and by `tfquant.integer_model`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

import tfquant
from tfquant.export.flatbuffer import InvalidFlatbufferError
from tfquant.export.int2 import builtin_code
from tfquant.export.integer_exact import run_integer_model, unsupported
from tfquant.export.litert_runner import output_lsb, run_litert

BACKENDS = ("xnnpack", "builtin")


def _conv(filters, kernel=1, **kwargs):
    return keras.layers.Conv2D(filters, kernel, **kwargs)


# name → (input shape, build(x) → output). Channel counts off multiples of 8 and 16 and
# samples of 5·5·3 = 75 values reach the scalar tails of the vector kernels.
OPS = {
    "conv_relu": ((12, 12, 5), lambda x: _conv(7, 3, padding="same", activation="relu")(x)),
    "conv_stride2_valid": ((12, 12, 5), lambda x: _conv(7, 3, strides=2)(x)),
    "conv_dilated": ((12, 12, 4), lambda x: _conv(9, 3, dilation_rate=2, padding="same")(x)),
    "depthwise_relu6": ((12, 12, 16), lambda x: keras.layers.DepthwiseConv2D(
        3, padding="same", activation="relu6")(x)),
    "depthwise_tail_channels": ((12, 12, 13), lambda x: keras.layers.DepthwiseConv2D(
        3, depth_multiplier=2, strides=2, padding="same")(x)),
    "depthwise_multiplier4": ((9, 9, 3), lambda x: keras.layers.DepthwiseConv2D(
        3, depth_multiplier=4)(x)),
    "dense": ((6, 6, 3), lambda x: keras.layers.Dense(9)(keras.layers.Flatten()(x))),
    "max_pool": ((12, 12, 5), lambda x: keras.layers.MaxPooling2D(2)(_conv(4)(x))),
    "add": ((12, 12, 5), lambda x: keras.layers.Add()([_conv(5)(x), x])),
    "add_odd_size": ((5, 5, 3), lambda x: keras.layers.Add()([_conv(3)(x), x])),
    "multiply": ((12, 12, 5), lambda x: keras.layers.Multiply()([_conv(5)(x), x])),
    "global_average": ((12, 12, 6), lambda x: keras.layers.GlobalAveragePooling2D()(
        _conv(6)(x))),
    "global_average_keepdims": ((12, 12, 20), lambda x: keras.layers.GlobalAveragePooling2D(
        keepdims=True)(_conv(20)(x))),
    "average_pool_same": ((12, 12, 5), lambda x: keras.layers.AveragePooling2D(
        3, 2, padding="same")(_conv(6)(x))),
    "concatenate": ((12, 12, 5), lambda x: keras.layers.Concatenate()(
        [_conv(3)(x), _conv(4, 3, padding="same")(x)])),
    "maximum": ((12, 12, 5), lambda x: keras.layers.Maximum()([_conv(4)(x), _conv(4, 3, padding="same")(x)])),
    "clipped_relu": ((12, 12, 5), lambda x: keras.layers.Lambda(lambda v: tf.minimum(v, 1.5))(
        keras.layers.ReLU()(keras.layers.Add()([_conv(5)(x), x])))),
    "zero_padding": ((8, 8, 3), lambda x: _conv(4, 3)(keras.layers.ZeroPadding2D(2)(
        _conv(3)(x)))),
    # A ReLU whose input feeds another branch too is not fused, and its output range
    # [0, max] gets its own scale (NASNet): a rescale, then the clamp.
    "relu_rescaled": ((9, 9, 3), lambda x: (lambda h: keras.layers.Concatenate()(
        [_conv(4)(keras.layers.ReLU()(h)), h]))(_conv(5)(x))),
    "cropping": ((12, 12, 5), lambda x: _conv(3)(keras.layers.Cropping2D(((1, 2), (0, 3)))(
        _conv(4)(x)))),
    "transpose": ((6, 7, 5), lambda x: _conv(3)(keras.layers.Permute((2, 1, 3))(
        _conv(4)(x)))),
    # FULLY_CONNECTED on [B, T, C], TRANSPOSE, both BATCH_MATMULs, SOFTMAX.
    "attention": ((7, 12), lambda x: keras.layers.MultiHeadAttention(3, 5)(x, x)),
    "attention_wide_heads": ((13, 20), lambda x: keras.layers.MultiHeadAttention(2, 16)(x, x)),
}


def _random_float_model(name, seed):
    shape, build = OPS[name]
    rng = np.random.default_rng(seed)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, build(inputs))
    for w in model.weights:
        w.assign(rng.normal(0, rng.uniform(0.1, 1.0), w.shape))
    x = (rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 3), (96, *shape))).astype(np.float32)
    return model, x


def _convert_int8(model, x):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None]] for sample in x[:48])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _differing_steps(flatbuffer, x, backend, batch_size=32):
    litert = run_litert(flatbuffer, x, batch_size=batch_size, backend=backend)[0]
    model = tfquant.integer_model(flatbuffer, backend)
    ours = run_integer_model(model, [x], batch_size)[0]
    return np.round(np.abs(litert.astype(np.float64) - ours) / output_lsb(flatbuffer)[0])


@pytest.fixture(scope="module", params=sorted(OPS))
def single_op(request):
    model, x = _random_float_model(request.param, seed=sorted(OPS).index(request.param))
    return request.param, _convert_int8(model, x), x


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_op_equals_litert_bit_for_bit(single_op, backend):
    name, flatbuffer, x = single_op
    steps = _differing_steps(flatbuffer, x, backend)
    assert steps.max() == 0, (
        f"{name} on {backend}: {np.count_nonzero(steps)} of {steps.size} values differ "
        f"(max {steps.max():.0f} steps)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_lookup_equals_litert_bit_for_bit(backend):
    """An Embedding lowers to int32 index arithmetic (LESS, ADD, SELECT_V2: negative
    indices count from the end) and a GATHER from the int8 table."""
    rng = np.random.default_rng(3)
    tokens = keras.Input((9,), dtype="int32")
    model = keras.Model(tokens, keras.layers.Dense(5)(keras.layers.Flatten()(
        keras.layers.Embedding(11, 6)(tokens))))
    for w in model.weights:
        w.assign(rng.normal(0, 0.7, w.shape))
    x = rng.integers(0, 11, (96, 9)).astype(np.int32)
    flatbuffer = _convert_int8(model, x)
    assert _differing_steps(flatbuffer, x, backend).max() == 0


def test_xnnpack_takes_a_batch_matmul_whose_right_operand_has_zero_point_0():
    """XNNPACK's int8 GEMM has no right-hand zero point: with zero point 0 on the values
    (set in the file; the layer producing them requantizes to it) XNNPACK computes
    probabilities·values with its own rounding, and each backend still matches."""
    model, x = _random_float_model("attention", seed=2)
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(
        _convert_int8(model, x)))
    graph = parsed.subgraphs[0]
    matmuls = [op for op in graph.operators
               if builtin_code(parsed, op) == schema_fb.BuiltinOperator.BATCH_MATMUL]
    graph.tensors[matmuls[-1].inputs[1]].quantization.zeroPoint = [0]
    flatbuffer = bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))
    outputs = {b: run_integer_model(tfquant.integer_model(flatbuffer, b), [x], 32)[0]
               for b in BACKENDS}
    assert np.count_nonzero(outputs["xnnpack"] != outputs["builtin"]) > 0
    for backend in BACKENDS:
        assert _differing_steps(flatbuffer, x, backend).max() == 0


def test_the_two_backends_differ_where_the_model_says():
    """The builtin and XNNPACK integer models are not the same arithmetic: on a
    depthwise layer with tail channels they part, and each matches its own backend."""
    model, x = _random_float_model("depthwise_tail_channels", seed=7)
    flatbuffer = _convert_int8(model, x)
    outputs = {b: run_integer_model(tfquant.integer_model(flatbuffer, b), [x], 32)[0]
               for b in BACKENDS}
    assert np.count_nonzero(outputs["xnnpack"] != outputs["builtin"]) > 0
    for backend in BACKENDS:
        assert _differing_steps(flatbuffer, x, backend).max() == 0


def test_qat_export_report_counts_no_difference_from_the_integer_model(fashion_mnist_small):
    (x_train, y_train), (x_test, y_test) = fashion_mnist_small
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    h = keras.layers.Add()([h, keras.layers.Conv2D(8, 1)(h)])
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    qmodel = tfquant.quantize_model(model)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    qmodel.fit(x_train[:1000], y_train[:1000], epochs=1, batch_size=64, verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x_test[:300])
    (check,) = report.output_checks
    assert check.num_values == 300 * 10
    assert check.differ_from_integer == 0
    assert "from the integer model" in str(report)

    # evaluate on the integer model gives LiteRT's accuracy.
    integer = tfquant.integer_model(report)
    integer.compile(metrics=["accuracy"],
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _, accuracy = integer.evaluate(x_test[:512], y_test[:512], batch_size=256, verbose=0)
    litert = run_litert(report.flatbuffer, x_test[:512])[0]
    assert accuracy == pytest.approx(np.mean(litert.argmax(-1) == y_test[:512]), abs=1e-6)


def test_pact_w2a2_qat_export_equals_the_integer_model(fashion_mnist_small):
    """PACT's clip exports as MINIMUM after the 2-bit activations (int8 tensors holding
    their levels); the integer model follows it on both backends."""
    (x_train, y_train), (x_test, _) = fashion_mnist_small
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(h)))
    config = tfquant.QuantConfig(weight_quantizer="LSQQuantizer",
                                 activation_quantizer="PACTQuantizer",
                                 weight_bits=2, activation_bits=2)
    qmodel = tfquant.quantize_model(model, config)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train[:500], y_train[:500], epochs=1, batch_size=50, verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x_test[:128])
    assert "MINIMUM" in report.op_counts
    assert report.output_checks[0].differ_from_integer == 0
    for backend in BACKENDS:
        assert _differing_steps(report.flatbuffer, x_test[:128], backend).max() == 0


def test_bad_inputs_are_refused_clearly():
    model, x = _random_float_model("conv_relu", seed=3)
    flatbuffer = _convert_int8(model, x)
    with pytest.raises(ValueError, match="backend='gpu' is not supported; allowed: 'xnnpack'"):
        tfquant.integer_model(flatbuffer, "gpu")
    with pytest.raises(InvalidFlatbufferError):
        tfquant.integer_model(flatbuffer[:200])
    float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(tfquant.export.UnsupportedOperatorError, match="computes in float"):
        tfquant.integer_model(float_model)

    inputs = keras.Input((4, 4, 2))
    to_depth = keras.layers.Lambda(lambda x: tf.nn.space_to_depth(x, 2))
    unsupported = keras.Model(inputs, to_depth(_conv(3)(inputs)))
    with pytest.raises(tfquant.export.UnsupportedOperatorError, match="SPACE_TO_DEPTH"):
        tfquant.integer_model(_convert_int8(unsupported,
                                            np.random.rand(8, 4, 4, 2).astype("f4")))


def test_an_operator_refused_by_its_operands_quantization_is_reported_not_raised():
    """MAXIMUM of two differently quantized inputs is refused when the model runs; the
    check that `export_tflite` makes (`unsupported`) reports it instead of raising."""
    model, x = _random_float_model("maximum", seed=1)
    flatbuffer = _convert_int8(model, x)
    assert unsupported(flatbuffer) is None
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = parsed.subgraphs[0]
    maximum = next(op for op in graph.operators
                   if builtin_code(parsed, op) == schema_fb.BuiltinOperator.MAXIMUM)
    graph.tensors[maximum.inputs[1]].quantization.scale = [0.123]
    changed = bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))
    assert "min/max" in unsupported(changed)
