"""LiteRT's int8 data movement as TensorFlow ops: the values are copied, never rescaled.

RESHAPE, TRANSPOSE, STRIDED_SLICE, CONCATENATION (equal input scales), PAD/PADV2 (with
the zero point), SPACE_TO_BATCH_ND and BATCH_TO_SPACE_ND (how the converter lowers dilated
convolutions), GATHER (an Embedding's int8 table), and the int32 index arithmetic an
Embedding lowers to (LESS and SELECT_V2: a negative index counts from the end).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfquant.export.integer_tensors import UnsupportedOperatorError, constant, operand


def _concatenation(op, t, inputs, backend):
    axis = int(op.builtinOptions.axis)
    scales = {(t[i].scale, t[i].zero_point) for i in op.inputs}
    if len(scales) > 1:
        raise UnsupportedOperatorError("CONCATENATION of int8 inputs with different scales")
    return tf.concat([operand(op, t, inputs, k) for k in range(len(op.inputs))], axis)


def _pad(op, t, inputs, backend):
    paddings = t[op.inputs[1]].data.astype(np.int64)
    return tf.pad(inputs[0], paddings, constant_values=t[op.outputs[0]].zero_point)


def _reshape(op, t, inputs, backend):
    shape = list(t[op.outputs[0]].shape)
    return tf.reshape(inputs[0], [-1, *shape[1:]] if shape else [])


def _space_to_batch_nd(op, t, inputs, backend):
    # Padding holds the zero point (how the converter lowers dilated convolutions).
    zero_point = t[op.outputs[0]].zero_point
    moved = tf.space_to_batch_nd(inputs[0] - zero_point, t[op.inputs[1]].data.astype(np.int32),
                                 t[op.inputs[2]].data.astype(np.int32))
    return moved + zero_point


def _batch_to_space_nd(op, t, inputs, backend):
    return tf.batch_to_space(inputs[0], t[op.inputs[1]].data.astype(np.int32),
                             t[op.inputs[2]].data.astype(np.int32))


def _transpose(op, t, inputs, backend):
    return tf.transpose(inputs[0], constant(t, op.inputs[1]))


def _strided_slice(op, t, inputs, backend):
    opts = op.builtinOptions
    if getattr(opts, "offset", False):
        raise UnsupportedOperatorError("STRIDED_SLICE with offset=true")
    begin, end, strides = (constant(t, i) for i in op.inputs[1:4])
    return tf.strided_slice(operand(op, t, inputs, 0), begin, end, strides,
                            begin_mask=opts.beginMask, end_mask=opts.endMask,
                            ellipsis_mask=opts.ellipsisMask, new_axis_mask=opts.newAxisMask,
                            shrink_axis_mask=opts.shrinkAxisMask)


def _gather(op, t, inputs, backend):
    opts = op.builtinOptions
    return tf.gather(operand(op, t, inputs, 0), operand(op, t, inputs, 1), axis=opts.axis,
                     batch_dims=opts.batchDims)


def _unquantized(op, t):
    """Raises unless every tensor of `op` is a plain (unquantized) integer or bool."""
    for i in [*op.inputs, *op.outputs]:
        if i >= 0 and t[i].scales.size:
            raise UnsupportedOperatorError(
                f"{t[i].name!r}: a comparison or selection on quantized values (the "
                "integer model computes them on int32 indices)")


def _less(op, t, inputs, backend):
    _unquantized(op, t)
    return tf.less(operand(op, t, inputs, 0), operand(op, t, inputs, 1))


def _select_v2(op, t, inputs, backend):
    _unquantized(op, t)
    condition = operand(op, t, inputs, 0, tf.bool)
    return tf.where(condition, operand(op, t, inputs, 1), operand(op, t, inputs, 2))


OPERATORS = {
    "RESHAPE": _reshape,
    "TRANSPOSE": _transpose,
    "STRIDED_SLICE": _strided_slice,
    "GATHER": _gather,
    "LESS": _less,
    "SELECT_V2": _select_v2,
    "CONCATENATION": _concatenation,
    "PAD": _pad,
    "PADV2": _pad,
    "SPACE_TO_BATCH_ND": _space_to_batch_nd,
    "BATCH_TO_SPACE_ND": _batch_to_space_nd,
}
