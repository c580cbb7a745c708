"""Helpers shared by the quantizer families (argument checks, straight-through pieces,
per-channel reshapes, stochastic rounding)."""

import numbers
import weakref

import tensorflow as tf

from tfquant.ops import fake_quant
# The families reach these through this module (`c.check_bits`, `c.weight_deployment`).
from tfquant.ops.arguments import check_bits, check_choice  # noqa: F401
from tfquant.quantizers.export_graph import (
    export_activation_fake_quant,
    export_fake_quant,
    per_channel,
    weight_deployment,  # noqa: F401
)

KINDS = ("weights", "activations")


def check_axis(owner, axis):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"{owner}: axis={axis!r} is not supported; allowed: an int.")
    return int(axis)


def check_positive(owner, arg, value, allow_zero=False):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    ok = number >= 0.0 if allow_zero else number > 0.0
    if not ok or number != number or number == float("inf"):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {arg}={value!r} is not supported; allowed: a finite "
                         f"number {bound}.")
    return number


def check_percentile(owner, value):
    """A percentile in (0, 100], else ValueError naming `owner`."""
    number = check_positive(owner, "init_percentile", value)
    if number > 100.0:
        raise ValueError(f"{owner}: init_percentile={value!r} is not supported; allowed: a "
                         "number in (0, 100].")
    return number


def check_applies_to(quantizer, kind):
    """Raises ValueError unless `quantizer` may quantize `kind` ("weights"/"activations")."""
    check_choice("check_applies_to", "kind", kind, KINDS)
    allowed = getattr(type(quantizer), "applies_to", KINDS)
    if kind not in allowed:
        raise ValueError(
            f"{type(quantizer).__name__} cannot quantize {kind}; it applies to: "
            f"{', '.join(allowed)}.")


def channel_count(owner, tensor_shape, axis):
    """Length of `tensor_shape` along `axis` (a known, positive dimension)."""
    shape = tf.TensorShape(tensor_shape)
    if shape.rank is None or not -shape.rank <= axis < shape.rank:
        raise ValueError(f"{owner}: axis={axis} does not exist in a tensor of shape {shape}.")
    channels = shape[axis]
    if channels is None:
        raise ValueError(f"{owner}: the size of axis {axis} of shape {shape} must be known "
                         "for per-channel variables.")
    return int(channels)


def reduce_axes(x, axis):
    """All axes of `x` except `axis` (None: all axes)."""
    rank = x.shape.rank
    if axis is None:
        return list(range(rank))
    axis %= rank
    return [a for a in range(rank) if a != axis]


def percentile(x, q, axis=None):
    """The `q`-th percentile (0 < q ≤ 100, nearest rank) of `x`, per slice along `axis`
    (None: of all of `x`). Sorts `x`: meant for one-time initializations."""
    if axis is None:
        columns = tf.reshape(x, [-1, 1])
    else:
        axis %= x.shape.rank
        perm = [a for a in range(x.shape.rank) if a != axis] + [axis]
        columns = tf.reshape(tf.transpose(x, perm), [-1, tf.shape(x)[axis]])
    ordered = tf.sort(columns, axis=0)
    count = tf.shape(ordered)[0]
    rank = tf.cast(tf.math.ceil(q / 100.0 * tf.cast(count, tf.float32)), tf.int32) - 1
    values = ordered[tf.clip_by_value(rank, 0, count - 1)]
    return values[0] if axis is None else values


def straight_through(x, forward):
    """`forward(x)` in the forward pass, identity gradient for `x` (exact forward)."""

    @tf.custom_gradient
    def _op(inputs):
        return forward(inputs), lambda dy: dy

    return _op(x)


def scale_gradient(x, scale):
    """Identity forward (bit-exact); the gradient of `x` is multiplied by `scale`."""
    scale = tf.stop_gradient(tf.cast(scale, x.dtype))

    @tf.custom_gradient
    def _op(inputs):
        return tf.identity(inputs), lambda dy: dy * scale

    return _op(x)


def add_rounding_noise(x, step, axis=None):
    """`x + u·step`, `u ~ U(−½, ½)`: deterministic rounding of the result is unbiased.

    The noise carries no gradient (to `x` or to `step`).
    """
    noise = tf.random.uniform(tf.shape(x), -0.5, 0.5, dtype=x.dtype)
    return x + tf.stop_gradient(noise * per_channel(step, x, axis))


def uniform_quantize(x, min_value, max_value, num_bits, narrow_range, axis, training,
                     range_gradient=None, activation=False):
    """docs/ARCHITECTURE.md §3.1: tfquant's op in training, TF's fake quant otherwise; same forward.
    `activation`: sub-8-bit grids are exported as exact 8-bit grids (see
    `export_activation_fake_quant`)."""
    if training:
        kwargs = {} if range_gradient is None else {"range_gradient": range_gradient}
        return fake_quant(x, min_value, max_value, num_bits=num_bits,
                          narrow_range=narrow_range, axis=axis, **kwargs)
    if activation:
        return export_activation_fake_quant(x, min_value, max_value, num_bits, narrow_range,
                                            axis)
    return export_fake_quant(x, min_value, max_value, num_bits, narrow_range, axis)


class PerBuild:
    """Remembers per-build facts (the layer, whether the tensor has a batch axis) keyed
    by one of the variables `build` made, so one quantizer object may serve many layers."""

    def __init__(self):
        self._entries = {}

    def put(self, variable, **facts):
        layer = facts.pop("layer", None)
        if layer is not None:
            facts["layer"] = weakref.ref(layer)
        self._entries[id(variable)] = facts

    def get(self, variable, key, default=None):
        value = self._entries.get(id(variable), {}).get(key, default)
        if key == "layer" and value is not None:
            value = value()
        return value


class AtLeast:
    """Variable constraint `max(v, floor)` (applied by the optimizer after each step)."""

    def __init__(self, floor):
        self.floor = float(floor)

    def __call__(self, value):
        return tf.maximum(value, self.floor)

    def get_config(self):
        return {"floor": self.floor}


def make_variable(layer, name, shape, value, trainable, constraint=None):
    initializer = value if callable(value) else tf.constant_initializer(value)
    return layer.add_weight(name=name, shape=shape, initializer=initializer,
                            trainable=trainable, dtype="float32", constraint=constraint)


def run_once(flag, initialize):
    """Runs `initialize()` (assignments) the first time, when `flag` < 0.5; sets `flag`."""

    def first():
        initialize()
        flag.assign(1.0)
        return tf.constant(True)

    tf.cond(tf.convert_to_tensor(flag) < 0.5, first, lambda: tf.constant(False))
