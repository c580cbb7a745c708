"""LiteRT's int8 ADD, SUB and MUL with broadcasting, as TensorFlow ops.

The elementwise arithmetic of residuals, squeeze-excite gates, LayerNormalization and
transformer blocks (`x − mean[…, 1]`, `x · rsqrt[…, 1]`, `x · gamma[C]`, `x + beta[C]`,
`x + pos[1, T, C]`, `var[…, 1] + ε`, `x · x`), per backend (docs/ARCHITECTURE.md §5).
Where a value sits decides its rounding in the builtin kernels, so the tail masks follow
TFLite's broadcast loop; under tracing with an unknown batch they are computed from the
runtime shape.

ADD, SUB (a = s_a/(2·max s), b = s_b/(2·max s), out = 2·max s/(2^20·s_out), each a 31-bit
multiplier from QuantizeMultiplierSmallerThanOneExp; inputs centred, shifted left 20):

- xnnpack (taken only if each s_in/s_out is in [2^-10, 2^8), else builtin runs): one
  multiplier per input, `(bias + x·m_a ± y·m_b) >> shift` with the
  rounding in the bias (ties up); SUB is ADD with m_b negated. Integer arithmetic with a
  single rounding, so where a value sits (block or tail, broadcast or not) does not matter.
- builtin ADD (optimized_integer_ops): TFLite's ProcessBroadcastShapes splits the shapes
  into a "fivefold" loop y0…y4. With a non-broadcast innermost extent (y4 > 1, and also
  the same-shape case, where the whole tensor is one row) each row of y4 values goes to
  AddElementwise: blocks of 16 fold the input shift into the left shift (no rounding of
  its own), the row's last y4 mod 16 values round each input and the sum with
  RoundingDivideByPOT. With y4 = 1 (one input is one value per row: `x + mean[…, 1]`,
  `var + ε`) each row of y3 values goes to AddScalarBroadcast: blocks of 8 shift each
  input right without rounding (NEON's vshl, truncating), the last y3 mod 8 values round.
  Shapes the fivefold loop cannot take run BroadcastAdd6DSlow: rounded everywhere.
- builtin SUB (sub.cc sends int8 to reference_ops::Sub / BroadcastQuantSubSlow): the
  scalar arithmetic everywhere, both inputs and the difference rounded; the output
  multiplier may exceed one (QuantizeMultiplierGreaterThanOne then).

MUL ((x − z_x)·(y − z_y) requantized):

- xnnpack (taken only if float32(s_x·s_y)/s_out is in [2^-16, 2^8), else builtin):
  `round_half_even(float32(product) · float32(s_x·s_y/s_out))`, float32 scale.
- builtin: MultiplyByQuantizedMultiplier (ties away) in blocks and tail alike (the
  broadcast paths MulElementwise / MulSimpleBroadcast do the same arithmetic), but the
  real multiplier is `s_x·s_y/s_out` evaluated in float32 (mul.cc multiplies the float
  scales), then QuantizeMultiplier of that float.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfquant.export import integer_ops as ops
from tfquant.export.integer_tensors import UnsupportedOperatorError, activation_range, operand

_LEFT_SHIFT = 20  # int8 ADD/SUB: inputs shifted left by 20 before rescaling


def _static_shape(x, fallback):
    """The shape of `x` as ints (an unknown batch taken as 2: any batch > 1 gives the
    same broadcast plan), or `fallback` (a constant's shape in the file)."""
    if x is None:
        return tuple(int(d) for d in fallback)
    return tuple(2 if d is None else int(d) for d in x.shape)


def _broadcast_plan(shape0, shape1):
    """TFLite's ProcessBroadcastShapes: ("none" | "fivefold" | "generic", y[5], swapped,
    spans_batch).

    y = (y0, y1, y2, y3, y4): y4 the extent both inputs share innermost, y3 the one the
    fast-broadcasting input repeats. `swapped`: the second input is the one broadcast
    (kSecondInputBroadcastsFast). `spans_batch`: y3 includes axis 0 (the batch).
    """
    n = max(len(shape0), len(shape1))
    a0 = (1,) * (n - len(shape0)) + tuple(shape0)
    a1 = (1,) * (n - len(shape1)) + tuple(shape1)
    if a0 == a1:
        return "none", None, False, False
    category = None
    for i in range(n - 1, -1, -1):
        if a0[i] == a1[i]:
            continue
        if a0[i] == 1:
            category = "first"
        elif a1[i] == 1:
            category = "second"
        else:
            return "generic", None, False, False
        break
    swapped = category == "second"
    sa, sb = (a1, a0) if swapped else (a0, a1)
    spans_batch = False
    y = [1] * 5
    i = n - 1
    while i >= 0 and sa[i] == sb[i]:
        y[4] *= sb[i]
        i -= 1
    while i >= 0 and sa[i] == 1:
        y[3] *= sb[i]
        spans_batch = spans_batch or i == 0
        i -= 1
    while i >= 0 and sa[i] == sb[i]:
        y[2] *= sa[i]
        i -= 1
    while i >= 0 and sb[i] == 1:
        y[1] *= sa[i]
        i -= 1
    while i >= 0 and sa[i] == sb[i]:
        y[0] *= sb[i]
        i -= 1
    if i >= 0:
        return "generic", None, False, False
    return "fivefold", y, swapped, spans_batch


def _vector_tail(a_shape, b_shape, values, elementwise_block, scalar_block):
    """(kind, tail mask over `values`, the broadcast output) of the builtin optimized
    dispatch: "elementwise" (rows of y4 in blocks of `elementwise_block`), "scalar"
    (AddScalarBroadcast-like rows of y3 in blocks of `scalar_block`) or "generic" (the
    reference loop, no blocks, no mask)."""
    category, y, _, spans_batch = _broadcast_plan(a_shape, b_shape)
    if category == "generic":
        return "generic", None
    if category == "none":
        return "elementwise", ops.row_tail(values, tf.size(values, tf.int64),
                                           elementwise_block)
    if y[4] > 1:
        return "elementwise", ops.row_tail(values, y[4], elementwise_block)
    run = y[3]
    if spans_batch:  # the batch's share of y3 from the runtime shape
        run = run // _static_shape(values, ())[0] * tf.shape(values, out_type=tf.int64)[0]
    return "scalar", ops.row_tail(values, run, scalar_block)


def _wrap16(v):
    """int32 → int16 keeping the low 16 bits (NEON's vmovn_s32, vaddq_s16)."""
    return tf.math.floormod(v + 32768, 65536) - 32768


def _vector_output(values, zero_point, low, high, saturate):
    """The NEON blocks' narrowing: to int16 (saturating, vqmovn_s32, if `saturate`,
    else wrapping, vmovn_s32), + zero point in int16 (wrapping), saturated to int8,
    then the activation clamp. Differs from the scalar loop only past ±2^15."""
    values = tf.cast(values, tf.int64)
    values = tf.clip_by_value(values, -32768, 32767) if saturate else _wrap16(values)
    values = _wrap16(values + int(zero_point))
    return tf.cast(tf.clip_by_value(values, max(low, -128), min(high, 127)), tf.int32)


def _operands(op, t, inputs):
    """The two operands as int64 tensors (constants from the file) and their runtime
    shapes."""
    a, b = t[op.inputs[0]], t[op.inputs[1]]
    x, y = inputs[:2]
    a_shape = _static_shape(x, a.shape)
    b_shape = _static_shape(y, b.shape)
    x, y = operand(op, t, inputs, 0, tf.int64), operand(op, t, inputs, 1, tf.int64)
    return a, b, x, y, a_shape, b_shape


def _broadcast(values, x, y):
    """`values` broadcast to the shape of `x` op `y` (at run time)."""
    return tf.broadcast_to(values, tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y)))


# ---------------------------------------------------------------- ADD and SUB

def _shift_right_truncating(x, amount):
    """NEON's vshl by a negative amount: an arithmetic shift right, no rounding."""
    return tf.bitwise.right_shift(x, tf.constant(int(amount), tf.int64)) if amount > 0 else x


def _shift_left(x, amount):
    """vshl by `amount` (negative: an arithmetic shift right, truncating)."""
    if amount >= 0:
        return tf.bitwise.left_shift(x, tf.constant(int(amount), tf.int64))
    return tf.bitwise.right_shift(x, tf.constant(int(-amount), tf.int64))


def _smaller_than_one(x, multiplier, shift):
    """MultiplyByQuantizedMultiplierSmallerThanOneExp: srdhm, then RoundingDivideByPOT
    by −shift (shift ≤ 0); a positive shift (QuantizeMultiplierGreaterThanOne) shifts
    left first, as MultiplyByQuantizedMultiplier."""
    if shift > 0:
        return ops.srdhm(tf.bitwise.left_shift(x, tf.constant(int(shift), tf.int64)), multiplier)
    return ops.rounding_divide_by_pot(ops.srdhm(x, multiplier), -shift)


def _xnnpack_add(a, b, x, y, output, low, high, sign):
    """XNNPACK qs8 vadd: `(bias + x·m_a + y·m_b) >> shift`; SUB negates m_b."""
    ra = np.float32(a.scale) / np.float32(output.scale)
    rb = np.float32(b.scale) / np.float32(output.scale)
    exponent = np.frexp(max(abs(ra), abs(rb)))[1] - 1
    shift = int(20 - exponent)
    ma = int(np.round(np.float64(ra) * 2.0**shift))
    mb = sign * int(np.round(np.float64(rb) * 2.0**shift))
    bias = (1 << (shift - 1)) - ma * a.zero_point - mb * b.zero_point
    acc = bias + x * ma + y * mb
    values = tf.bitwise.right_shift(acc, tf.constant(shift, tf.int64))
    return ops.clamp_to_output(values, output.zero_point, low, high)


def _xnnpack_takes_add(a, b, output):
    """The XNNPACK delegate takes int8 ADD / SUB only if each input's scale over the
    output's (float32) lies in [2^-10, 2^8); otherwise the builtin kernel runs."""
    return all(2.0**-10 <= np.float32(s.scale) / np.float32(output.scale) < 2.0**8
               for s in (a, b))


def _xnnpack_takes_mul(a, b, output):
    """… and MUL only if float32(s_a·s_b)/s_out lies in [2^-16, 2^8)."""
    ratio = np.float32(np.float32(a.scale) * np.float32(b.scale)) / np.float32(output.scale)
    return 2.0**-16 <= ratio < 2.0**8


def _builtin_multipliers(a, b, output, allow_greater_than_one):
    twice_max = 2.0 * max(np.float64(a.scale), np.float64(b.scale))
    m1, s1 = ops.quantize_multiplier(np.float64(a.scale) / twice_max)
    m2, s2 = ops.quantize_multiplier(np.float64(b.scale) / twice_max)
    real_out = twice_max / np.float64(np.float32(2**_LEFT_SHIFT) * np.float32(output.scale))
    if real_out > 1 and not allow_greater_than_one:
        raise UnsupportedOperatorError("ADD whose output multiplier exceeds one")
    mo, so = ops.quantize_multiplier(real_out)
    return (int(m1[0]), int(s1[0])), (int(m2[0]), int(s2[0])), (int(mo[0]), int(so[0]))


def _rounded_sum(x, y, in1, in2, out, sign):
    """The scalar loop: each input and the sum (difference) rounded."""
    xs = _smaller_than_one(x * 2**_LEFT_SHIFT, *in1)
    ys = _smaller_than_one(y * 2**_LEFT_SHIFT, *in2)
    return _smaller_than_one(xs + sign * ys, *out)


def _add(op, t, inputs, backend):
    """int8 ADD, any broadcast (see the module docstring)."""
    a, b, x, y, a_shape, b_shape = _operands(op, t, inputs)
    output = t[op.outputs[0]]
    if not output.scales.size:  # int32 index arithmetic (an Embedding's negative indices)
        return tf.cast(x + y, tf.int32)
    low, high = activation_range(op.builtinOptions.fusedActivationFunction, output, backend)
    if backend == "xnnpack" and _xnnpack_takes_add(a, b, output):
        return _xnnpack_add(a, b, x, y, output, low, high, 1)
    low, high = activation_range(op.builtinOptions.fusedActivationFunction, output, "builtin")
    in1, in2, out = _builtin_multipliers(a, b, output, allow_greater_than_one=False)
    x, y = x - a.zero_point, y - b.zero_point
    scalar = _broadcast(_rounded_sum(x, y, in1, in2, out, 1), x, y)
    kind, tail = _vector_tail(a_shape, b_shape, scalar, 16, 8)
    if kind == "generic":
        return ops.clamp_to_output(scalar, output.zero_point, low, high)
    if kind == "elementwise":
        # AddElementwiseInt8's blocks of 16: the input shift folded into the left shift.
        blocks = (ops.srdhm(_shift_left(x, _LEFT_SHIFT + in1[1]), in1[0])
                  + ops.srdhm(_shift_left(y, _LEFT_SHIFT + in2[1]), in2[0]))
        blocks = ops.rounding_divide_by_pot(ops.srdhm(blocks, out[0]), -out[1])
    else:
        # AddScalarBroadcast's blocks of 8: each input's shift truncates (vshl).
        blocks = (_shift_right_truncating(ops.srdhm(x * 2**_LEFT_SHIFT, in1[0]), -in1[1])
                  + _shift_right_truncating(ops.srdhm(y * 2**_LEFT_SHIFT, in2[0]), -in2[1]))
        blocks = ops.rounding_divide_by_pot(ops.srdhm(blocks, out[0]), -out[1])
    scalar = ops.clamp_to_output(scalar, output.zero_point, low, high)
    blocks = _vector_output(_broadcast(blocks, x, y), output.zero_point, low, high,
                            saturate=False)
    return tf.where(tail, scalar, blocks)


def _sub(op, t, inputs, backend):
    """int8 SUB, any broadcast: builtin is the reference kernel (rounded everywhere)."""
    a, b, x, y, a_shape, b_shape = _operands(op, t, inputs)
    output = t[op.outputs[0]]
    low, high = activation_range(op.builtinOptions.fusedActivationFunction, output, backend)
    if backend == "xnnpack" and _xnnpack_takes_add(a, b, output):
        return _xnnpack_add(a, b, x, y, output, low, high, -1)
    low, high = activation_range(op.builtinOptions.fusedActivationFunction, output, "builtin")
    in1, in2, out = _builtin_multipliers(a, b, output, allow_greater_than_one=True)
    values = _rounded_sum(x - a.zero_point, y - b.zero_point, in1, in2, out, -1)
    return ops.clamp_to_output(_broadcast(values, x, y), output.zero_point, low, high)


# ---------------------------------------------------------------- MUL

def _mul(op, t, inputs, backend):
    """int8 MUL, any broadcast (see the module docstring)."""
    a, b, x, y, a_shape, b_shape = _operands(op, t, inputs)
    output = t[op.outputs[0]]
    low, high = activation_range(op.builtinOptions.fusedActivationFunction, output, backend)
    product = (x - a.zero_point) * (y - b.zero_point)
    if backend == "xnnpack" and _xnnpack_takes_mul(a, b, output):
        scale = np.float32(a.scale) * np.float32(b.scale) / np.float32(output.scale)
        values = ops.requantize_float(product, scale)
    else:
        low, high = activation_range(op.builtinOptions.fusedActivationFunction, output,
                                     "builtin")
        # mul.cc: input1->params.scale * input2->params.scale / output->params.scale,
        # float32 arithmetic, then QuantizeMultiplier of that float.
        real = np.float32(np.float32(a.scale) * np.float32(b.scale)) / np.float32(output.scale)
        multiplier, shift = ops.quantize_multiplier(np.float64(np.float32(real)))
        values = _broadcast(ops.multiply_by_quantized_multiplier(product, multiplier, shift),
                            x, y)
        kind, tail = _vector_tail(a_shape, b_shape, values, 16, 16)
        if kind != "generic":
            # Blocks and tail round alike; only the blocks' int16 narrowing differs.
            return tf.where(tail, ops.clamp_to_output(values, output.zero_point, low, high),
                            _vector_output(values, output.zero_point, low, high,
                                           saturate=True))
    return ops.clamp_to_output(_broadcast(values, x, y), output.zero_point, low, high)


OPERATORS = {"ADD": _add, "SUB": _sub, "MUL": _mul}
