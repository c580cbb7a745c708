"""LOGISTIC, TANH, HARD_SWISH, SOFTMAX, GELU and RSQRT of the integer model against
LiteRT: 0 LSB.

Two kinds of flatbuffer: the converter's int8 quantization of small float models with
random weights (as tests/test_integer_model.py), and a lone activation whose input scale
and zero point are set in the file, fed every int8 value, so that each of the 256
table entries is compared, including ones where the two backends' tables part.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

import tfquant
# Collected here, the imported test runs on this module's `single_op` (both backends).
from test_integer_model import (  # noqa: F401
    BACKENDS, _convert_int8, test_single_op_equals_litert_bit_for_bit)
from tfquant.export.flatbuffer import builtin_op_name
from tfquant.export.int2 import builtin_code
from tfquant.export.integer_exact import run_integer_model
from tfquant.export.litert_runner import output_lsb, run_litert


def _conv(filters):
    return keras.layers.Conv2D(filters, 1)


def _hard_sigmoid(x):  # MobileNetV3's squeeze-excite gate: relu6(x + 3) / 6
    return keras.layers.Multiply()([x, keras.layers.Lambda(
        lambda h: keras.ops.relu6(h + 3.0) * (1.0 / 6.0))(_conv(5)(x))])


# name → (input shape, build(x) → output); 12·12·5 values a sample leave tails off 8, 16.
OPS = {
    "logistic": ((12, 12, 5), lambda x: keras.layers.Activation("sigmoid")(_conv(5)(x))),
    "swish": ((12, 12, 5), lambda x: keras.layers.Activation("swish")(_conv(5)(x))),
    "tanh": ((12, 12, 5), lambda x: keras.layers.Activation("tanh")(_conv(5)(x))),
    "hard_swish": ((12, 12, 5), lambda x: keras.layers.Activation("hard_swish")(_conv(5)(x))),
    "hard_sigmoid_gate": ((12, 12, 5), _hard_sigmoid),
    "softmax_dense": ((6, 6, 3), lambda x: keras.layers.Softmax()(
        keras.layers.Dense(10)(keras.layers.Flatten()(x)))),
    "softmax_channels": ((6, 6, 3), lambda x: keras.layers.Softmax()(_conv(7)(x))),
    "softmax_1000_classes": ((2, 2, 3), lambda x: keras.layers.Softmax()(
        keras.layers.Dense(1000)(keras.layers.Flatten()(x)))),
    "gelu": ((12, 12, 5), lambda x: keras.layers.Activation("gelu")(_conv(7)(x))),
    "gelu_tanh": ((12, 12, 5), lambda x: keras.layers.Lambda(
        lambda v: tf.nn.gelu(v, approximate=True))(_conv(7)(x))),
    "rsqrt": ((12, 12, 5), lambda x: keras.layers.Lambda(
        lambda v: tf.math.rsqrt(v * v + 0.1))(_conv(7)(x))),
}


@pytest.fixture(scope="module", params=sorted(OPS))
def single_op(request):
    shape, build = OPS[request.param]
    rng = np.random.default_rng(sorted(OPS).index(request.param))
    inputs = keras.Input(shape)
    model = keras.Model(inputs, build(inputs))
    for w in model.weights:
        w.assign(rng.normal(0, rng.uniform(0.1, 1.0), w.shape))
    spread = rng.uniform(0.5, 3) * rng.uniform(0.5, 3)
    x = rng.normal(rng.uniform(-1, 1), spread, (96, *shape)).astype(np.float32)
    return request.param, _convert_int8(model, x), x



def _lone_activation(layer, input_scale, input_zero_point, output=None, low=-4.0):
    """QUANTIZE → activation → DEQUANTIZE with the activation's input quantization (and
    `output` = (scale, zero point), if given) set; the inputs: every int8 value from
    `low` up (RSQRT refuses negative reals)."""
    inputs = keras.Input((256,))
    x = np.linspace(low, 4, 256, dtype=np.float32)[None].repeat(8, 0)
    flatbuffer = _convert_int8(keras.Model(inputs, layer(inputs)), x)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    (activation,) = [op for op in subgraph.operators if builtin_op_name(
        builtin_code(model, op)) not in ("QUANTIZE", "DEQUANTIZE")]
    quantization = subgraph.tensors[activation.inputs[0]].quantization
    quantization.scale, quantization.zeroPoint = [input_scale], [input_zero_point]
    if output is not None:
        quantization = subgraph.tensors[activation.outputs[0]].quantization
        quantization.scale, quantization.zeroPoint = [output[0]], [output[1]]
    codes = np.arange(-128, 128, dtype=np.float32)
    if low >= 0:
        codes = np.maximum(codes, input_zero_point)
    every_value = ((codes - input_zero_point) * np.float32(input_scale))[None]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), every_value


# (layer, input scale, zero point, do the backends' tables differ?). The scales are found
# by searching: at 0.0589…/3 entry −20 of XNNPACK's sigmoid (double exp, ties to even)
# is one below TFLite's (float expf, ties away); at 0.0353…/10 entry 102 would part from
# LiteRT if XNNPACK's sigmoid were taken in float. HARD_SWISH's scales reach its shift
# branches (relu-ish value shifted right; shifted left, moderately and far).
TABLES = {
    "logistic_backends_part": (keras.layers.Activation("sigmoid"), 0.05890664458274841, 3, True),
    "logistic_fine": (keras.layers.Activation("sigmoid"), 0.004, -7, False),
    "logistic_double_exp": (keras.layers.Activation("sigmoid"), 0.03539208322763443, 10, False),
    "tanh": (keras.layers.Activation("tanh"), 0.031, 11, False),
    "hard_swish_small_scale": (keras.layers.Activation("hard_swish"), 0.004, 20, False),
    "hard_swish": (keras.layers.Activation("hard_swish"), 0.04, -30, False),
    "hard_swish_large_scale": (keras.layers.Activation("hard_swish"), 0.3, 60, False),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_entry_equals_litert(name):
    layer, scale, zero_point, backends_part = TABLES[name]
    flatbuffer, x = _lone_activation(layer, scale, zero_point)
    codes = {}  # output steps (DEQUANTIZE's float32 rounding differs between backends)
    for backend in BACKENDS:
        litert = run_litert(flatbuffer, x, backend=backend)[0]
        ours = run_integer_model(tfquant.integer_model(flatbuffer, backend), [x])[0]
        codes[backend] = np.round(ours / output_lsb(flatbuffer)[0])
        differ = np.nonzero(np.round(litert / output_lsb(flatbuffer)[0]) != codes[backend])
        assert differ[1].size == 0, f"{name} on {backend}: entries {differ[1] - 128} differ"
    assert np.any(codes["xnnpack"] != codes["builtin"]) == backends_part


_RSQRT = keras.layers.Lambda(lambda v: tf.math.rsqrt(v))
_GELU_TANH = keras.layers.Lambda(lambda v: tf.nn.gelu(v, approximate=True))
# (layer, s_in, z_in, s_out, z_out, lowest input). GELU: scales where the older double
# erf form or XNNPACK's own reference (double, ties to even) would give another table,
# and one where y·(1/s_out) falls on k + 1/2; RSQRT: zero points at both ends, and
# scales where sqrt(s_in)·s_out in double would change the multiplier.
FULL_TABLES = {
    "gelu_formulas_part": (keras.layers.Activation("gelu"), 0.004298703745007515, -83,
                           0.003677830332890153, 36, -4.0),
    "gelu_formulas_part_wide": (keras.layers.Activation("gelu"), 0.03458849713206291, -118,
                                0.009350454434752464, -9, -4.0),
    "gelu_tie": (keras.layers.Activation("gelu"), 0.03844880685210228, -56,
                 0.023337220773100853, 36, -4.0),
    "gelu_tanh_formulas_part": (_GELU_TANH, 0.028753049671649933, 4, 0.0007291276706382632,
                                -16, -4.0),
    "gelu_tanh_coarse": (_GELU_TANH, 0.01446002908051014, -13, 0.12070003896951675, 15, -4.0),
    "rsqrt_zero_point_127": (_RSQRT, 0.01, 127, 0.004, -128, 0.1),
    "rsqrt_zero_point_-128": (_RSQRT, 0.002, -128, 0.3, -128, 0.1),
    "rsqrt_multiplier_rounding": (_RSQRT, 0.0013155997730791569, -107, 0.03807983919978142,
                                  -128, 0.1),
    "rsqrt_multiplier_rounding_coarse": (_RSQRT, 0.25012680888175964, 11,
                                         0.001679172390140593, -128, 0.1),
}


@pytest.mark.parametrize("name", sorted(FULL_TABLES))
def test_gelu_and_rsqrt_tables_equal_litert_on_both_backends(name):
    """XNNPACK takes neither in int8: TFLite's kernel runs under both backends, and the
    integer model gives the same table for both."""
    layer, s_in, z_in, s_out, z_out, low = FULL_TABLES[name]
    flatbuffer, x = _lone_activation(layer, s_in, z_in, (s_out, z_out), low)
    for backend in BACKENDS:
        litert = run_litert(flatbuffer, x, backend=backend)[0]
        ours = run_integer_model(tfquant.integer_model(flatbuffer, backend), [x])[0]
        differ = np.nonzero(np.round(litert / s_out) != np.round(ours / s_out))
        assert differ[1].size == 0, f"{name} on {backend}: entries {differ[1] - 128} differ"


def test_rsqrt_of_a_negative_input_fails_as_litert_does():
    flatbuffer, x = _lone_activation(_RSQRT, 0.01, 0, (0.004, -128), 0.1)
    x = np.concatenate([x, -x], 0)
    with pytest.raises(RuntimeError, match="positive"):
        run_litert(flatbuffer, x, batch_size=2, backend="builtin")
    with pytest.raises(tf.errors.InvalidArgumentError, match="positive"):
        run_integer_model(tfquant.integer_model(flatbuffer, "builtin"), [x], 2)
