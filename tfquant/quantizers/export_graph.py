"""The graph a quantizer emits at export, and how each grid deploys
(docs/ARCHITECTURE.md §3.1, §3.4, §4).

With `training=False` every quantizer family ends in TensorFlow's own
`fake_quant_with_min_max_vars[_per_channel]`, the form the TFLite converter turns into
integer tensors; this module writes that form once for all families, with the
adjustments the converter and LiteRT need (low-bit activations widened to 8 bits, low-bit
weight grids made exactly storable).
"""

import contextlib
import contextvars

import tensorflow as tf

from tfquant.quantizers.base import (
    Deployment,
    export_low_bit_weights_as_int8,
    is_exporting as _exporting,
)


_RECORDS = contextvars.ContextVar("tfquant_fake_quant_records", default=None)


@contextlib.contextmanager
def recording_export_steps():
    """While active, `export_fake_quant` records the step of each grid it would apply —
    `(max − min) / (2^bits − 1 − narrow)`, per channel where the grid is — in the list
    it yields, and returns its input unchanged. Tells the step a tensor deploys with."""
    records = []
    token = _RECORDS.set(records)
    try:
        yield records
    finally:
        _RECORDS.reset(token)


def export_fake_quant(x, min_value, max_value, num_bits, narrow_range, axis=None):
    """TensorFlow's built-in fake quant, the form the TFLite converter recognizes.

    TF's per-channel op only quantizes the last axis, so another axis is moved last and
    back (the converter folds the transposes into the constant weight).
    """
    records = _RECORDS.get()
    if records is not None:
        levels = float(2 ** num_bits - 1 - int(bool(narrow_range)))
        records.append((tf.convert_to_tensor(max_value, tf.float32)
                        - tf.convert_to_tensor(min_value, tf.float32)) / levels)
        return x
    if axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, min_value, max_value, num_bits=num_bits, narrow_range=narrow_range
        )
    rank = x.shape.rank
    axis = axis % rank
    if axis == rank - 1:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, min_value, max_value, num_bits=num_bits, narrow_range=narrow_range
        )
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.transpose(x, perm), min_value, max_value, num_bits=num_bits,
        narrow_range=narrow_range,
    )
    return tf.transpose(moved, perm)


def export_activation_fake_quant(x, min_value, max_value, num_bits, narrow_range, axis=None):
    """TF's fake quant of an activation, as the export runs it.

    LiteRT's integer kernels take 8- or 16-bit activations only. While `exporting()`, a
    `num_bits` < 8 grid is therefore written as an 8-bit grid with the same step and zero
    point — range `[nudged_min, nudged_min + 255·step]` — applied before and after a clip
    to the `num_bits` range: the int8 tensors then hold exactly the trained low-bit values
    (only 2^num_bits of their 256 codes are used), so LiteRT computes what training did.
    """
    if not _exporting() or num_bits >= 8:
        return export_fake_quant(x, min_value, max_value, num_bits, narrow_range, axis)
    quant_min = 1.0 if narrow_range else 0.0
    quant_max = float(2 ** num_bits - 1)
    min_value = tf.convert_to_tensor(min_value, tf.float32)
    max_value = tf.convert_to_tensor(max_value, tf.float32)
    # TF's nudging (fake_quant_ops_functor.h): the zero point is rounded half away from
    # zero; it is ≥ quant_min here, so floor(z + 0.5) is that rounding.
    step = (max_value - min_value) / (quant_max - quant_min)
    zero_point = tf.clip_by_value(tf.floor(quant_min - min_value / step + 0.5),
                                  quant_min, quant_max)
    nudged_min = (quant_min - zero_point) * step
    nudged_max = (quant_max - zero_point) * step
    wide_max = nudged_min + 255.0 * step
    on_grid = export_fake_quant(x, nudged_min, wide_max, 8, False, axis)
    clipped = tf.clip_by_value(on_grid, per_channel(nudged_min, x, axis),
                               per_channel(nudged_max, x, axis))
    return export_fake_quant(clipped, nudged_min, wide_max, 8, False, axis)


def per_channel(values, x, axis):
    """Reshapes per-channel `values` (shape [C], or a scalar) to broadcast against `x`."""
    values = tf.convert_to_tensor(values)
    if axis is None or values.shape.rank == 0:
        return values
    shape = [1] * x.shape.rank
    shape[axis % x.shape.rank] = -1
    return tf.reshape(values, shape)


def weight_deployment(num_bits):
    """How a symmetric narrow-range weight grid of `num_bits` deploys (see
    `deployable_weight_grid`): INT4 up to 4 bits, int8 above, always exactly."""
    return Deployment.INT4 if num_bits <= 4 else Deployment.INT8


def deployable_weight_grid(quantized, scale, num_bits, axis=None):
    """Makes a `num_bits` symmetric narrow-range weight grid exportable without change.

    The converter stores 4-bit grids as INT4 and 8-bit grids as int8, but re-spreads any
    other grid over [-7, 7] or [-127, 127], rounding its values (docs/ARCHITECTURE.md §4). The
    values `k·scale`, |k| ≤ Q = 2^(b-1) − 1, also lie on the 4-bit (b < 4) or 8-bit
    (b > 4) grid of step `scale/n`, n = ⌊(2^(d-1) − 1)/Q⌋ (the finest step of which
    every level is a multiple: 2 bits n = 7, 3 bits n = 2, 5 bits n = 8, 6 bits n = 4,
    7 bits n = 2), so a second FakeQuant on that grid — range ±(2^(d-1) − 1)·scale/n —
    leaves them unchanged and makes the converter store the integers k·n exactly.
    The finer step matters for the bias: TFLite stores it in int32 with step
    `input scale × weight scale`, and at 2 bits with `n = 1` that step is about one
    output step (LiteRT then disagreed with Keras on 13–15 % of the outputs of a 2-bit
    conv). Applied only while `exporting()`: the extra op would change the last bits of
    the training-vs-inference comparison otherwise.

    Under `exporting(int8_low_bit_weights=True)` (models with sub-8-bit activations) 2–4
    bits go onto the finest int8 grid (n = 127, 42, 18): the input step of such a layer
    is a whole low-bit activation step, and with an INT4 weight step the bias step stays
    a sizeable fraction of the output step.
    """
    int8 = export_low_bit_weights_as_int8()
    if not _exporting() or num_bits == 8 or (num_bits == 4 and not int8):
        return quantized
    deploy_bits = 4 if num_bits < 4 and not int8 else 8
    deploy_max = 2 ** (deploy_bits - 1) - 1
    finer = deploy_max // (2 ** (num_bits - 1) - 1)
    limit = scale * (float(deploy_max) / finer)
    return export_fake_quant(quantized, -limit, limit, deploy_bits, True, axis)


def activation_deployment(num_bits):
    """How an activation quantizer of `num_bits` deploys (8, 16, or widened to 8)."""
    if num_bits == 16:
        return Deployment.INT16
    return Deployment.INT8 if num_bits == 8 else Deployment.INT8_WIDENED
