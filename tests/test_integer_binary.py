"""ADD, SUB and MUL with broadcasting (LayerNormalization's and a transformer block's
arithmetic) of the integer model against LiteRT: 0 LSB on both backends.

The builtin kernels round a value one way inside a vector block and another in the row's
scalar tail, and the rows are those of TFLite's broadcast loop, not of the flattened
tensor. Random scales seldom put a result on a rounding tie, so each case also runs with
scales that put many results on exact ties, on every int8 input value.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

import tfquant
from tfquant.export.flatbuffer import builtin_op_name
from tfquant.export.int2 import builtin_code
from tfquant.export.integer_exact import run_integer_model
from tfquant.export.litert_runner import run_litert

BACKENDS = ("xnnpack", "builtin")


def _constant(rng, shape):
    return tf.constant(rng.normal(rng.uniform(-1, 1), rng.uniform(0.2, 2), shape), tf.float32)


def _lambda(function):
    return keras.layers.Lambda(function)


# name → (input shapes, build(inputs, rng) → output, the one operator expected). T·C off
# multiples of 8 and 16 leaves a tail in every row; [T, 1] against [T, C] takes the
# scalar-broadcast rows, [C] the elementwise rows, `+ ε` a row spanning the batch.
CASES = {
    "sub_row": ([(7, 12), (7, 1)], lambda i, r: _lambda(lambda v: v[0] - v[1])(i), "SUB"),
    "sub_row_first": ([(5, 20), (5, 1)], lambda i, r: _lambda(lambda v: v[1] - v[0])(i), "SUB"),
    "add_beta": ([(7, 12)], lambda i, r: _lambda(lambda v, k=_constant(r, (12,)): v + k)(i[0]),
                 "ADD"),
    "add_row": ([(5, 20), (5, 1)], lambda i, r: _lambda(lambda v: v[0] + v[1])(i), "ADD"),
    "add_position": ([(7, 12)], lambda i, r: _lambda(
        lambda v, k=_constant(r, (1, 7, 12)): v + k)(i[0]), "ADD"),
    "add_epsilon": ([(13, 1)], lambda i, r: _lambda(lambda v: v + 0.37)(i[0]), "ADD"),
    "add_epsilon_4d": ([(4, 5, 1)], lambda i, r: _lambda(lambda v: v + 1e-3)(i[0]), "ADD"),
    "mul_gamma": ([(7, 12)], lambda i, r: _lambda(lambda v, k=_constant(r, (12,)): v * k)(i[0]),
                  "MUL"),
    "mul_row_4d": ([(3, 4, 20), (3, 4, 1)], lambda i, r: _lambda(lambda v: v[0] * v[1])(i),
                   "MUL"),
    "mul_square": ([(7, 12)], lambda i, r: _lambda(lambda v: v * v)(i[0]), "MUL"),
}
# (input 1, input 2, output) scales that put many results on exact ties, where the
# blocks and the tails of the builtin kernels part; MUL's first makes float32(s1·s2)/s_out
# exactly 0.5 and the double product just below. ADD's last ratios (350, 50) are beyond
# what XNNPACK takes, so the builtin kernel runs under both backends.
TIE_SCALES = {"ADD": [(1, 1 / 3, 2 / 3), (0.5, 1 / 6, 1 / 3), (0.7, 0.1, 0.002)],
              "SUB": [(1, 1 / 3, 2 / 3), (0.5, 1 / 6, 1 / 3), (0.7, 0.1, 0.2)],
              "MUL": [(1 / 1.3, 1.3, 2), (0.1, 0.3, 0.03), (0.5, 0.25, 0.0625)]}


def _convert(name, seed):
    shapes, build, _ = CASES[name]
    rng = np.random.default_rng(seed)
    inputs = [keras.Input(s, name=f"in{k}") for k, s in enumerate(shapes)]
    model = keras.Model(inputs, build(inputs, rng))
    data = [rng.normal(rng.uniform(-2, 2), rng.uniform(0.3, 3), (48, *s)).astype(np.float32)
            for s in shapes]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [d[k:k + 1] for d in data] for k in range(len(data[0])))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert(), shapes


def _with_tie_scales(flatbuffer, scales, seed):
    """The one operator's input/output scales set to `scales`, random zero points."""
    rng = np.random.default_rng(seed)
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = parsed.subgraphs[0]
    (op,) = graph.operators
    slots = [op.inputs[0], op.inputs[1], op.outputs[0]]
    for index, scale in zip(slots, scales):
        data = parsed.buffers[graph.tensors[index].buffer].data
        if data is not None and len(data):
            continue  # a constant keeps the scale its values were quantized with
        quantization = graph.tensors[index].quantization
        quantization.scale, quantization.zeroPoint = [float(np.float32(scale))], [
            int(rng.integers(-20, 21))]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))


def _differing_values(flatbuffer, inputs, backend, batch_size):
    litert = run_litert(flatbuffer, inputs, batch_size=batch_size, backend=backend)[0]
    model = tfquant.integer_model(flatbuffer, backend)
    ours = run_integer_model(model, inputs, batch_size)[0]
    output = model.output_quantization()
    codes = np.round(litert / output[0]) + output[1]
    return int(np.count_nonzero(codes != ours)), codes.size


@pytest.mark.parametrize("ties", [None, 0, 1, 2],
                         ids=["random_scales", "ties_0", "ties_1", "ties_2"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_broadcast_arithmetic_equals_litert_bit_for_bit(name, ties):
    flatbuffer, shapes = _convert(name, sorted(CASES).index(name))
    expected = CASES[name][2]
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    assert [builtin_op_name(builtin_code(parsed, op))
            for op in parsed.subgraphs[0].operators] == [expected]
    if ties is not None:
        flatbuffer = _with_tie_scales(flatbuffer, TIE_SCALES[expected][ties], ties)
    rng = np.random.default_rng(7)
    inputs = [rng.integers(-128, 128, (40, *s)).astype(np.int8) for s in shapes]
    for backend in BACKENDS:
        for batch_size in (1, 6):  # 6 rows of 40: a padded last batch too
            differ, total = _differing_values(flatbuffer, inputs, backend, batch_size)
            assert differ == 0, (f"{name} on {backend}, batch {batch_size}: {differ} of "
                                 f"{total} values differ")


def test_traced_with_an_unknown_batch_equals_eager():
    """Traced with an unknown batch (a `tf.function` over any batch size), the tail masks
    of a row that spans the batch (`+ ε`) come from the runtime shape."""
    flatbuffer, shapes = _convert("add_epsilon", 0)
    flatbuffer = _with_tie_scales(flatbuffer, TIE_SCALES["ADD"][2], 0)
    model = tfquant.integer_model(flatbuffer, "builtin")
    traced = tf.function(model, input_signature=[tf.TensorSpec([None, *shapes[0]], tf.int32)])
    x = np.random.default_rng(1).integers(-128, 128, (5, *shapes[0])).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(traced(x)), np.asarray(model(x)))
