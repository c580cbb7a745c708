"""Fused fake quantization op and its gradient.

The forward is bit-identical to tf.quantization.fake_quant_with_min_max_vars
(per tensor) and ..._per_channel (per channel), but works along any axis; the
gradient is the straight-through estimator of TF's gradient ops, with
deterministic range-gradient sums. With range_gradient="learned" the gradient
w.r.t. min and max is that of the learned-step-size family (LSQ, LSQ+, TQT).
"""

import numbers

import numpy as np
import tensorflow as tf

from tfquant.ops import _library
from tfquant.ops.arguments import check_bits, check_choice
from tfquant.ops.fake_quant_xla import composed_fake_quant, in_xla_context

_ops = _library.load_op_library()

MIN_NUM_BITS = 2
MAX_NUM_BITS = 16
RANGE_GRADIENTS = ("clipped", "learned")


def _check_axis(axis, x, min, max):
    """Checks what is known statically; returns the axis attr for the op."""
    min_rank, max_rank = min.shape.rank, max.shape.rank
    if axis is None:
        for name, rank, shape in (("min", min_rank, min.shape), ("max", max_rank, max.shape)):
            if rank is not None and rank != 0:
                raise ValueError(
                    f"axis=None means per-tensor quantization, so {name} must be a "
                    f"scalar; got {name} of shape {shape}")
        return -1
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"axis={axis!r} is not supported; allowed values are None or an int")
    axis = int(axis)
    rank = x.shape.rank
    if rank is not None:
        if not -rank <= axis < rank:
            raise ValueError(
                f"axis={axis} is out of range for inputs of rank {rank}; allowed "
                f"values are None or {-rank}..{rank - 1}")
        axis %= rank
    for name, t in (("min", min), ("max", max)):
        if t.shape.rank is not None and t.shape.rank != 1:
            raise ValueError(
                f"axis={axis} means per-channel quantization, so {name} must be 1-D; "
                f"got {name} of shape {t.shape}")
        if rank is not None and t.shape.rank == 1:
            channels, length = x.shape[axis], t.shape[0]
            if channels is not None and length is not None and channels != length:
                raise ValueError(
                    f"{name} has {length} elements but inputs have {channels} "
                    f"along axis {axis} (shape {x.shape}); they must be equal")
    return axis


def fake_quant(x, min, max, num_bits=8, narrow_range=False, axis=None,
               range_gradient="clipped", name=None):
    """Fake-quantizes x to `num_bits` on the nudged range [min, max].

    Args:
      x: float tensor (other float dtypes are computed in float32 and cast back).
      min, max: scalars (axis=None, per tensor) or 1-D of length x.shape[axis]
        (per channel along `axis`, any axis, negative allowed).
      num_bits: 2..16. narrow_range: use levels [1, 2^bits - 1] instead of
        [0, 2^bits - 1].
      range_gradient: how gradients reach min and max (the forward and the
        gradient w.r.t. x are the same in both modes):
        "clipped" (TF's): dy summed where x is below (min) / above (max) the
          nudged range.
        "learned" (LSQ, LSQ+, TQT in the (min, max) parametrization): with
          N = 2^bits - 1 (- 1 if narrow), s the nudged scale, u = (x - nudged_min)/s
          and q = round(u) as in the forward, each element inside the range adds
          dy*-(q - u)/N to d/dmin and dy*(q - u)/N to d/dmax; elements below add
          dy to d/dmin, above add dy to d/dmax. With min = -Qn*s, max = Qp*s this
          gives LSQ's d/ds = round(x/s) - x/s inside, -Qn below, Qp above (apply
          LSQ's gradient scale yourself).

    Returns a tensor like x. Gradients flow to x (inside the range) and to
    min/max as chosen by `range_gradient`, summed per channel in double.
    """
    num_bits = check_bits("fake_quant", num_bits, range(MIN_NUM_BITS, MAX_NUM_BITS + 1))
    check_choice("fake_quant", "range_gradient", range_gradient, RANGE_GRADIENTS)
    with tf.name_scope(name or "fake_quant"):
        x = tf.convert_to_tensor(x)
        out_dtype = x.dtype
        if out_dtype != tf.float32:
            if not out_dtype.is_floating:
                raise ValueError(f"fake_quant needs a floating-point x; got {out_dtype.name}")
            x = tf.cast(x, tf.float32)
        min = tf.cast(min, tf.float32)
        max = tf.cast(max, tf.float32)
        axis_attr = _check_axis(axis, x, min, max)
        if in_xla_context():
            y = composed_fake_quant(x, min, max, num_bits, bool(narrow_range), axis_attr,
                                    range_gradient)
            return y if out_dtype == tf.float32 else tf.cast(y, out_dtype)
        y = _ops.tfquant_fake_quant(
            x, min, max, num_bits=num_bits, narrow_range=bool(narrow_range), axis=axis_attr,
            range_gradient=range_gradient)
        return y if out_dtype == tf.float32 else tf.cast(y, out_dtype)


def _fake_quant_grad(op, grad):
    return _ops.tfquant_fake_quant_grad(
        grad, op.inputs[0], op.inputs[1], op.inputs[2],
        num_bits=op.get_attr("num_bits"),
        narrow_range=op.get_attr("narrow_range"),
        axis=op.get_attr("axis"),
        range_gradient=op.get_attr("range_gradient"))


def _broadcast_channels(values, x, axis):
    """Per-channel `values` reshaped to broadcast against x (a scalar when axis == -1)."""
    if axis == -1:
        return values
    shape = tf.tensor_scatter_nd_update(tf.ones([tf.rank(x)], tf.int32), [[axis]], [-1])
    return tf.reshape(values, shape)


def _attrs(op, **overrides):
    attrs = {name: op.get_attr(name)
             for name in ("num_bits", "narrow_range", "axis", "range_gradient")}
    attrs.update(overrides)
    return attrs


def _nudged_range(op):
    """(nudged_min, nudged_max) per channel, exactly as the kernels compute them: the
    forward maps −Inf to nudged_min and +Inf to nudged_max (a zero range gives 0, 0)."""
    _, _, min, _ = op.inputs
    per_channel = op.get_attr("axis") != -1
    infinities = tf.stack([tf.fill(tf.shape(min), -float("inf")),
                           tf.fill(tf.shape(min), float("inf"))])
    edges = _ops.tfquant_fake_quant(infinities, min, op.inputs[3],
                                    **_attrs(op, axis=1 if per_channel else -1))
    return edges[0], edges[1]


def _known_zero(gradient):
    """True for a missing gradient or one that is zero at trace time (the zeros a
    gradient tape passes for an op output nothing differentiated)."""
    if gradient is None:
        return True
    if getattr(getattr(gradient, "op", None), "type", None) == "ZerosLike":
        return True
    value = tf.get_static_value(gradient)
    return value is not None and not np.any(value)


def _fake_quant_grad_grad(op, grad_dx, grad_dmin, grad_dmax):
    """Gradient of the gradient op, for double backprop (gradient-ℓ1 on QAT models).

    The grad op is linear in dy: dx_i = m_i·dy_i, dmin_c = Σ_{i∈c} a_i·dy_i,
    dmax_c = Σ_{i∈c} b_i·dy_i, with m the in-range mask and, per range mode,
      clipped: a = below, b = above;
      learned: a = below − w, b = above + w, w = m·(q − u)/N.
    So ∂/∂dy_i = m_i·g_dx_i + a_i·g_dmin_c + b_i·g_dmax_c (c the channel of i): g_dmin
    below the range, g_dmax above, g_dx + (g_dmax − g_dmin)·w inside, 0 for NaN x.
    m is the kernels' own (the grad op with dy = 1), below/above compare with the
    kernels' nudged range; w = (y − x)/(N·scale) from the forward y, which equals
    (q − u)/N up to float rounding of the reconstruction.

    W.r.t. x, min and max the gradient is zero (returned as None: no tensors to fill). The
    masks and q are piecewise constant in them (the jumps at range edges and rounding
    midpoints are ignored, as the straight-through estimator ignores them). The learned
    mode's residual q − u is linear between midpoints, but the straight-through estimator
    takes round(u) to move with u at every order, which makes q − u constant too: this is
    what double backprop through a composed LSQ, `s·(u + stop_gradient(round(u) − u))`,
    gives.
    """
    dy, x, min, max = op.inputs
    if _known_zero(grad_dmin) and _known_zero(grad_dmax):
        # Only dx is used (a range that is no function of a trained kernel; the tape
        # passes zeros for the unused range gradients): ∂/∂dy = m·g_dx is the grad op
        # itself, one op instead of the masks below.
        d_dy = None if grad_dx is None else _ops.tfquant_fake_quant_grad(
            grad_dx, x, min, max, **_attrs(op))[0]
        return d_dy, None, None, None
    axis = op.get_attr("axis")
    zeros = tf.zeros_like(x)
    grad_dx = zeros if grad_dx is None else grad_dx
    grad_dmin = tf.zeros_like(min) if grad_dmin is None else grad_dmin
    grad_dmax = tf.zeros_like(max) if grad_dmax is None else grad_dmax
    in_range = _ops.tfquant_fake_quant_grad(tf.ones_like(x), x, min, max, **_attrs(op))[0]
    nudged_min, nudged_max = _nudged_range(op)
    # A zero range (min == max == 0) has no outside: every x gets dy (m = 1), w = 0.
    zero_range = tf.logical_and(tf.equal(min, 0.0), tf.equal(max, 0.0))
    lower = tf.where(zero_range, -float("inf"), nudged_min)
    upper = tf.where(zero_range, float("inf"), nudged_max)
    inside = grad_dx
    if op.get_attr("range_gradient") == b"learned":
        y = _ops.tfquant_fake_quant(x, min, max, **_attrs(op))
        # N·scale = nudged_max − nudged_min; 0 for a zero range, where w must be 0.
        w = tf.math.divide_no_nan(y - x, _broadcast_channels(nudged_max - nudged_min, x, axis))
        inside = inside + _broadcast_channels(grad_dmax - grad_dmin, x, axis) * w
    d_dy = tf.where(
        x < _broadcast_channels(lower, x, axis), _broadcast_channels(grad_dmin, x, axis),
        tf.where(x > _broadcast_channels(upper, x, axis),
                 _broadcast_channels(grad_dmax, x, axis),
                 tf.where(in_range > 0.0, inside, zeros)))
    return d_dy, None, None, None


for _op_name, _gradient in (("TfquantFakeQuant", _fake_quant_grad),
                            ("TfquantFakeQuantGrad", _fake_quant_grad_grad)):
    try:
        tf.RegisterGradient(_op_name)(_gradient)
    except KeyError:  # already registered (module reloaded)
        pass
