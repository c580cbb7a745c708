"""LiteRT's int8 activation kernels (LOGISTIC, TANH, HARD_SWISH, SOFTMAX, GELU, RSQRT) as
TensorFlow ops.

Kernels for `integer_exact._OPERATORS`: `(op, tensors, inputs, backend)` → int32 tensor of
int8 values (docs/ARCHITECTURE.md §5).

LOGISTIC, TANH and HARD_SWISH are functions of one int8 value, so both backends amount to
a 256-entry table built once per operator, and so does the integer model: the table is
computed in numpy (float32 arithmetic step for step, `expf`/`tanhf`/`exp` from the C
math library LiteRT links against) and looked up with `tf.gather`.

- LOGISTIC, TANH, builtin (TFLite's LUTPopulate): `x = s_in·(v − z_in)` in float32,
  `y = 1/(1 + expf(−x))` or `tanhf(x)`, `round(y·float32(1/s_out))` ties away, + z_out.
- LOGISTIC, TANH, xnnpack (XNNPACK builds its own table from its reference kernel):
  `x = (v − z_in)·s_in`, sigmoid as `e/(1 + e)` with `e = exp(double(x))` (±100 cut off),
  tanh as `tanhf`; `nearbyint(y·float32(1/s_out) + z_out)`, ties to even.
- HARD_SWISH (XNNPACK takes only float HARD_SWISH, so the builtin kernel runs under both
  backends; on x86 it is TFLite's reference code, the NEON path being ARM only): the
  16-bit fixed-point reference arithmetic, table entry by table entry.
- SOFTMAX (not delegated either): a float32 table `expf(−s_in·β·k)`, k = 0…255, indexed by
  `row max − v`; the row's sum is a sequential float32 sum (kept in that order with
  `tf.foldl`), each value `table · 1/(sum·s_out)` rounded ties away, + z_out.

GELU and RSQRT: XNNPACK takes neither in int8, so LiteRT leaves them to TFLite's kernels
and both backends give the same numbers (measured: on scales chosen so that XNNPACK's own
tables, built from its reference functions and rounded half to even, would part from
TFLite's, LiteRT under XNNPACK always gave TFLite's table).

- RSQRT (TFLite's elementwise.cc, int8): fixed point, no float per value.
  Prepare: `real = 1 / double(float32(sqrtf(s_in) · s_out))` → QuantizeMultiplier (m, e).
  Per value `d = v − z_in`: `d < 0` makes the interpreter fail ("Rsqrt is only defined for
  positive values", whatever the backend); `d = 0` gives 127 (not z_out-relative);
  otherwise GetInvSqrtQuantizedMultiplierExp(d) (gemmlowp Newton-Raphson, 5 steps, in
  Q3.28) → (m_d, e_d), `data = MultiplyByQuantizedMultiplier(1, m_d, e_d + 20)`,
  `out = MultiplyByQuantizedMultiplier(data, m, e − 20) + z_out`, clamped to int8.
- GELU (TFLite's gelu.cc, int8): LUTPopulate, i.e. `x = s_in·(v − z_in)` in float32,
  `y = f(x)`, `round(y·float32(1/s_out))` ties away, + z_out, clamped, with f in float32:
  exact (`approximate=False`): `0.5f·x·erfcf(x·float32(−1/√2))`;
  tanh form (`approximate=True`): `0.5f·x·(1 + tanhf(k·(x + 0.044715f·x·x·x)))`,
  `k = float32(2/√π · 1/√2)`.
  (The older TFLite exact form `erf(double(x)·1/√2)` and XNNPACK's double-precision
  reference functions each part from LiteRT on some constructed scales; the float32
  erfcf form does not.)

All are bit-exact against ai-edge-litert 2.3 on x86-64 in tests/test_integer_activations.py,
given the same math library (the tables call it through ctypes; without it numpy's
`exp`/`tanh` stand in, which may differ in the last float bit and so, rarely, by 1 LSB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
import tensorflow as tf

from tfquant.export import integer_ops as ops

_VALUES = np.arange(-128, 128, dtype=np.int64)  # the int8 values, in table order


def _libm_function(name, c_type):
    """`name` from the C math library as a numpy-vectorized function, or None."""
    path = ctypes.util.find_library("m")
    if path is None:
        return None
    try:
        function = getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = c_type, [c_type]
    numpy_type = np.float32 if c_type is ctypes.c_float else np.float64
    return lambda x: np.array([function(float(v)) for v in np.ravel(x)], numpy_type).reshape(
        np.shape(x))


_EXPF = _libm_function("expf", ctypes.c_float) or (lambda x: np.exp(np.float32(x)))
_TANHF = _libm_function("tanhf", ctypes.c_float) or (lambda x: np.tanh(np.float32(x)))
_EXP = _libm_function("exp", ctypes.c_double) or (lambda x: np.exp(np.float64(x)))


def _lookup(table, x):
    """`table[x]` for int8 values `x` (int32), `table` indexed from −128."""
    table = np.clip(np.asarray(table, np.int64), -128, 127).astype(np.int32)
    return tf.gather(tf.constant(table), tf.cast(x, tf.int32) + 128)


def _float_table(op, t, backend, builtin_function, xnnpack_function):
    """The int8 table of a float function as the backend builds it."""
    source, output = t[op.inputs[0]], t[op.outputs[0]]
    s_in, s_out = np.float32(source.scale), np.float32(output.scale)
    inverse = np.float32(1) / s_out
    values = _VALUES.astype(np.float32)
    if backend == "builtin":
        y = builtin_function(s_in * (values - np.float32(source.zero_point)))
        return ops.round_half_away(np.float32(y * inverse)).astype(np.int64) + output.zero_point
    y = xnnpack_function((values - np.float32(source.zero_point)) * s_in)
    return np.round(np.float32(y * inverse) + np.float32(output.zero_point)).astype(np.int64)


def _builtin_sigmoid(x):
    return np.float32(1) / (np.float32(1) + _EXPF(-x))


def _xnnpack_sigmoid(x):
    e = _EXP(x.astype(np.float64))
    y = (e / (1 + e)).astype(np.float32)
    return np.where(x > 100, np.float32(1), np.where(x < -100, np.float32(0), y))


def _logistic(op, t, inputs, backend):
    return _lookup(_float_table(op, t, backend, _builtin_sigmoid, _xnnpack_sigmoid), inputs[0])


def _tanh(op, t, inputs, backend):
    return _lookup(_float_table(op, t, backend, _TANHF, _TANHF), inputs[0])


# 16-bit fixed point of TFLite's reference HARD_SWISH (gemmlowp's int16 primitives).
def _saturate16(x):
    return np.clip(x, -(2**15), 2**15 - 1)


def _rounding_doubling_high_mul16(a, b):
    product = a * b
    nudge = np.where(product >= 0, 1 << 14, 1 - (1 << 14))
    high = np.fix((product + nudge) / 2**15).astype(np.int64)  # C division truncates
    return np.where((a == -(2**15)) & (b == -(2**15)), 2**15 - 1, high)


def _doubling_high_mul16(a, b):
    high = np.fix((a * b) / 2**15).astype(np.int64)
    return np.where((a == -(2**15)) & (b == -(2**15)), 2**15 - 1, high)


def _rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT (ties away from zero), on numpy or Python ints."""
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def _multiplier16(real):
    """QuantizeMultiplier of a float32 real, its 31-bit multiplier rounded to 16 bits."""
    multiplier, exponent = ops.quantize_multiplier(np.float64(real))
    multiplier, exponent = int(multiplier[0]), int(exponent[0])
    if multiplier >= 2**31 - 1 - 2**15:
        return 2**15 - 1, exponent
    return (multiplier + 2**15) >> 16, exponent


def hard_swish_table(input_scale, input_zero_point, output_scale, output_zero_point):
    """TFLite's int8 HARD_SWISH (reference_ops::HardSwish) for every int8 input."""
    hires_scale = np.float32(1.0 / 128.0) * np.float32(input_scale)
    out_multiplier, out_exponent = _multiplier16(hires_scale / np.float32(output_scale))
    relu_multiplier, relu_exponent = _multiplier16(hires_scale
                                                   / (np.float32(3) / np.float32(32768)))
    hires = (_VALUES - input_zero_point) * 128
    preshift = _rounding_doubling_high_mul16(hires, out_multiplier)
    reluish = hires
    if relu_exponent > 0:
        reluish = _saturate16(reluish * 2 ** (relu_exponent - 1))
    reluish = _rounding_doubling_high_mul16(reluish, relu_multiplier)
    if relu_exponent > 0:
        reluish = _saturate16(reluish * 2)
    if relu_exponent < 0:
        reluish = _rounding_divide_by_pot(reluish, -relu_exponent)
    reluish = (reluish + 2**15) >> 1
    out = _rounding_divide_by_pot(_doubling_high_mul16(reluish, preshift), -out_exponent)
    return out + output_zero_point


def _hard_swish(op, t, inputs, backend):
    source, output = t[op.inputs[0]], t[op.outputs[0]]
    return _lookup(hard_swish_table(source.scale, source.zero_point, output.scale,
                                    output.zero_point), inputs[0])


def _round_half_away_tf(x):
    """std::round on a float32 tensor (tf.round rounds ties to even)."""
    truncated = tf.math.floor(tf.abs(x)) * tf.sign(x)
    tie = tf.equal(tf.abs(x - truncated), 0.5)
    return tf.where(tie, truncated + tf.sign(x), tf.round(x))


def _softmax(op, t, inputs, backend):
    source, output = t[op.inputs[0]], t[op.outputs[0]]
    beta = np.float32(op.builtinOptions.beta)
    scale = -np.float32(source.scale) * beta
    table = tf.constant(_EXPF(scale * np.arange(255, -1, -1, dtype=np.float32)))
    x = tf.cast(inputs[0], tf.int32)
    shape = tf.shape(x)
    rows = tf.reshape(x, [-1, x.shape[-1]])
    exps = tf.gather(table, 255 - tf.reduce_max(rows, -1, keepdims=True) + rows)
    # float32 additions in TFLite's order, column after column.
    sums = tf.foldl(lambda total, column: total + column, tf.transpose(exps),
                    initializer=tf.zeros_like(exps[:, 0]))
    inverse = np.float32(1) / (sums * np.float32(output.scale))
    probabilities = _round_half_away_tf(exps * inverse[:, None])
    values = tf.cast(probabilities, tf.int64) + output.zero_point
    return tf.reshape(tf.cast(tf.clip_by_value(values, -128, 127), tf.int32), shape)


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_ERFCF = _libm_function("erfcf", ctypes.c_float) or (
    lambda x: np.array([math.erfc(float(v)) for v in np.ravel(x)], np.float32).reshape(
        np.shape(x)))


# gemmlowp's fixed-point primitives on Python ints holding int32 values, one value at a
# time (the RSQRT table has 255 entries to compute, once per operator).
def _wrap32(x):
    """int32 two's-complement wraparound of a Python int."""
    return (x + 2**31) % 2**32 - 2**31


def _srdhm(a, b):
    """SaturatingRoundingDoublingHighMul."""
    if a == _INT32_MIN and b == _INT32_MIN:
        return _INT32_MAX
    total = a * b + ((1 << 30) if a * b >= 0 else 1 - (1 << 30))
    return (abs(total) >> 31) * (1 if total >= 0 else -1)  # C division truncates


def _saturating_multiply_by_pot(x, exponent):
    """SaturatingRoundingMultiplyByPOT<exponent>."""
    if exponent < 0:
        return _rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    if x > threshold:
        return _INT32_MAX
    if x < -threshold:
        return _INT32_MIN
    return x << exponent


def _multiply_by_quantized_multiplier(x, multiplier, shift):
    """TFLite's MultiplyByQuantizedMultiplier (double rounding) of one int32."""
    left, right = max(shift, 0), max(-shift, 0)
    return _rounding_divide_by_pot(_srdhm(_wrap32(x * (1 << left)), multiplier), right)


def _inv_sqrt_multiplier_exp(value):
    """TFLite's GetInvSqrtQuantizedMultiplierExp(value, kReverseShift = −1):
    1/√value as a multiplier and a (left) shift."""
    if value <= 1:
        return _INT32_MAX, 0
    shift = 11
    while value >= 1 << 29:
        value //= 4
        shift += 1
    pairs = (32 - value.bit_length() - 1) // 2 - 1  # (CountLeadingZeros − 1)/2 − 1
    shift -= pairs
    value <<= 2 * pairs
    half_input = _saturating_multiply_by_pot(value >> 1, -1)  # Q3.28
    half_three = (1 << 28) + (1 << 27)  # 1.5 in Q3.28
    x = 1 << 28  # 1.0: Newton-Raphson x ← 1.5·x − (input/2)·x³, five times
    for _ in range(5):
        cube = _saturating_multiply_by_pot(_srdhm(_srdhm(x, x), x), 6)  # Q9 → Q3
        x = _saturating_multiply_by_pot(
            _wrap32(_srdhm(half_three, x) - _srdhm(half_input, cube)), 3)  # Q6 → Q3
    x = _srdhm(x, 1518500250)  # · √2/2 in Q0.31
    if shift < 0:
        x, shift = _wrap32(x << -shift), 0
    return x, -shift


def rsqrt_table(input_scale, input_zero_point, output_scale, output_zero_point):
    """TFLite's int8 RSQRT for every int8 input (entries below the input zero point,
    which LiteRT refuses, are 127 like the zero input)."""
    s_in, s_out = np.float32(input_scale), np.float32(output_scale)
    real = 1.0 / float(np.float32(np.sqrt(s_in) * s_out))  # float sqrt and product
    multiplier, shift = (int(v[0]) for v in ops.quantize_multiplier(real))
    table = []
    for v in _VALUES:
        value = int(v) - int(input_zero_point)
        if value <= 0:
            table.append(127)
            continue
        inverse, inverse_shift = _inv_sqrt_multiplier_exp(value)
        data = _multiply_by_quantized_multiplier(1, inverse, inverse_shift + 20)
        out = _multiply_by_quantized_multiplier(data, multiplier, shift - 20)
        table.append(min(max(out + int(output_zero_point), -128), 127))
    return np.array(table, np.int64)


def rsqrt(op, t, inputs, backend):
    """RSQRT: TFLite's fixed-point kernel under both backends; an input below the zero
    point (a negative real) fails as LiteRT's Invoke does."""
    source, output = t[op.inputs[0]], t[op.outputs[0]]
    x = tf.cast(inputs[0], tf.int32)
    check = tf.debugging.assert_greater_equal(
        x, tf.constant(source.zero_point, tf.int32),
        message="Rsqrt is only defined for positive values")
    with tf.control_dependencies([check]):
        return _lookup(rsqrt_table(source.scale, source.zero_point, output.scale,
                                   output.zero_point), tf.identity(x))


def _gelu_erfc(x):
    return np.float32(0.5) * x * _ERFCF(x * np.float32(-0.70710678118654752440))


_SQRT_2_OVER_PI = np.float32(1.12837916709551257390 * 0.70710678118654752440)


def _gelu_tanh(x):
    inner = _SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1) + _TANHF(inner))


def gelu(op, t, inputs, backend):
    """GELU: TFLite's float32 LUT under both backends (exact or tanh form)."""
    approximate = bool(getattr(op.builtinOptions, "approximate", False))
    function = _gelu_tanh if approximate else _gelu_erfc
    # "builtin" for both backends: XNNPACK leaves int8 GELU to TFLite's kernel.
    return _lookup(_float_table(op, t, "builtin", function, function), inputs[0])


OPERATORS = {
    "LOGISTIC": _logistic,
    "TANH": _tanh,
    "HARD_SWISH": _hard_swish,
    "SOFTMAX": _softmax,
    "RSQRT": rsqrt,
    "GELU": gelu,
}
