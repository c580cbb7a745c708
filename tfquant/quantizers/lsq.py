"""Learned step size: LSQ (Esser et al. 2019) and LSQ+ (Bhalgat et al. 2020).

Both are uniform grids on `[min, max] = [β − Qn·s, β + Qp·s]` and go through tfquant's op
with `range_gradient="learned"`, whose (min, max) gradients make TensorFlow's autodiff
give exactly LSQ's `∂x̂/∂s` and LSQ+'s `∂x̂/∂β`. With `training=False` they emit TF's
fake quant with the same range (docs/ARCHITECTURE.md §3.1): the same forward, bit for bit.
"""

import math

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Quantizer, register_quantizer
from tfquant.quantizers.export_graph import (
    activation_deployment,
    deployable_weight_grid,
    export_activation_fake_quant,
    export_fake_quant,
)
from tfquant.ops import fake_quant

_MIN_STEP = 1e-8


def agree_across_replicas(first_call, variables):
    """Under tf.distribute, on the first training call: `variables` (just initialized
    from each replica's share of the batch) take their mean over all replicas, so every
    replica trains from the same values; later calls leave them alone.

    For LSQ's `2·mean|x|/sqrt(Qp)` that mean is exactly the global batch's when the
    replicas get equal shares; for LSQ+'s MSE search and TQT's percentile it is the mean
    of the replicas' choices. (The initialization itself runs inside a `tf.cond`, where
    MirroredStrategy allows no cross-replica call, hence this step after it.)
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return
    for variable in variables:
        value = tf.convert_to_tensor(variable)
        # all_gather, as `cross_replica_range`: MultiWorkerMirroredStrategy's all_reduce
        # fails here ("destinations can not be empty").
        mean = tf.reduce_mean(context.all_gather(value[None], axis=0), axis=0)
        variable.assign(tf.where(first_call, mean, value))


class LearnedRangeQuantizer(Quantizer):
    """Shared machinery of LSQ, LSQ+ and TQT (not registered; subclass it).

    Grids: weights (and `signed` activations) are symmetric narrow range,
    `Qn = Qp = 2^(b−1) − 1` (TFLite needs weights with zero point 0 and no −2^(b−1));
    unsigned activations use `Qn = 0, Qp = 2^b − 1`.

    `kind` is "weights", "activations" or None; None decides at `build`: a tensor shape
    whose first dimension is unknown (a batch axis) is an activation, else a weight.

    Under tf.distribute an activation range initialized from the first batch is made the
    same on every replica (`agree_across_replicas`).
    """

    applies_to = ("weights", "activations")
    _BITS = range(2, 9)
    _KEY = None  # the name of the first variable `_make_variables` creates

    def __init__(self, num_bits=8, signed=True, per_channel=False, axis=-1, kind=None,
                 stochastic_rounding=False):
        owner = type(self).__name__
        self._num_bits = c.check_bits(owner, num_bits, self._BITS)
        self.signed = bool(signed)
        self.per_channel = bool(per_channel)
        self.axis = c.check_axis(owner, axis)
        self.kind = c.check_choice(owner, "kind", kind, (None,) + c.KINDS)
        if self.kind == "weights" and not self.signed:
            raise ValueError(f"{owner}: signed=False is not supported for kind='weights'; "
                             "weights are symmetric (signed=True).")
        self.stochastic_rounding = bool(stochastic_rounding)
        self._builds = c.PerBuild()

    # -- grid ------------------------------------------------------------------------

    def _grid(self, kind):
        """(Qn, Qp, narrow_range) of the integer grid for a tensor of `kind`."""
        b = self._num_bits
        if kind == "weights" or self.signed:
            return 2 ** (b - 1) - 1, 2 ** (b - 1) - 1, True
        return 0, 2 ** b - 1, False

    def _resolve_kind(self, tensor_shape):
        if self.kind is not None:
            kind = self.kind
        else:
            shape = tf.TensorShape(tensor_shape)
            batch_axis = shape.rank is not None and shape.rank > 0 and shape[0] is None
            kind = "activations" if batch_axis else "weights"
        if kind == "weights" and not self.signed:
            raise ValueError(
                f"{type(self).__name__}: signed=False is not supported for a weight tensor "
                f"(shape {tf.TensorShape(tensor_shape)}); weights are symmetric. Pass "
                "signed=True, or kind='activations' if this is an activation.")
        return kind

    def build(self, tensor_shape, name, layer):
        kind = self._resolve_kind(tensor_shape)
        shape = ()
        if self.per_channel:
            shape = (c.channel_count(type(self).__name__, tensor_shape, self.axis),)
        variables = self._make_variables(layer, name, shape, kind)
        variables["initialized"] = c.make_variable(layer, f"{name}_initialized", (), 0.0, False)
        self._builds.put(variables[self._KEY], kind=kind)
        return variables

    def _kind_of(self, weights):
        kind = self._builds.get(weights[self._KEY], "kind")
        return kind or self.kind or ("weights" if self.signed else "activations")

    # -- call ------------------------------------------------------------------------

    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.convert_to_tensor(inputs)
        kind = self._kind_of(weights)
        axis = self.axis % x.shape.rank if self.per_channel else None
        qn, qp, narrow = self._grid(kind)
        if training:
            first_call = tf.convert_to_tensor(weights["initialized"]) < 0.5
            c.run_once(weights["initialized"],
                       lambda: self._initialize(tf.stop_gradient(x), weights, kind, axis))
            if kind == "activations":  # weights are the same on every replica already
                agree_across_replicas(first_call, [weights[key] for key in weights
                                                   if key != "initialized"])
        low, high = self._range(x, weights, kind, axis, training)
        if training:
            if self.stochastic_rounding:
                step = tf.stop_gradient((high - low) / float(qn + qp))
                x = c.add_rounding_noise(x, step, axis)
            return fake_quant(x, low, high, num_bits=self._num_bits, narrow_range=narrow,
                              axis=axis, range_gradient="learned")
        if kind == "activations":
            return export_activation_fake_quant(x, low, high, self._num_bits,
                                     narrow, axis)
        quantized = export_fake_quant(x, low, high, self._num_bits, narrow, axis)
        return deployable_weight_grid(quantized, high / float(qp), self._num_bits, axis)

    def _per_scale_count(self, x, kind, axis):
        """N of LSQ's gradient scale: elements per scale (per example for activations)."""
        count = tf.cast(tf.size(x), tf.float32)
        if kind == "activations" and x.shape.rank > 1:
            count = count / tf.cast(tf.maximum(tf.shape(x)[0], 1), tf.float32)
        if axis is not None:
            count = count / tf.cast(tf.shape(x)[axis], tf.float32)
        return count

    def _gradient_scale(self, x, kind, axis):
        _, qp, _ = self._grid(kind)
        return tf.math.rsqrt(self._per_scale_count(x, kind, axis) * float(qp))

    # -- for subclasses ----------------------------------------------------------------

    def _make_variables(self, layer, name, shape, kind):
        raise TypeError(f"{type(self).__name__} does not implement this method")

    def _initialize(self, x, weights, kind, axis):
        raise TypeError(f"{type(self).__name__} does not implement this method")

    def _range(self, x, weights, kind, axis, training):
        raise TypeError(f"{type(self).__name__} does not implement this method")

    def deployment(self):
        """INT8 at 8 bits; weights: INT4 at 4 and 2 bits (symmetric narrow grids),
        SIMULATION at 3, 5–7; activations below 8 bits: INT8_WIDENED. The constructor's
        `kind`, else weights when `signed`, activations when not."""
        kind = self.kind or ("weights" if self.signed else "activations")
        if kind == "weights":
            return c.weight_deployment(self._num_bits)
        return activation_deployment(self._num_bits)

    def get_config(self):
        return {"num_bits": self._num_bits, "signed": self.signed,
                "per_channel": self.per_channel, "axis": self.axis, "kind": self.kind,
                "stochastic_rounding": self.stochastic_rounding}


@register_quantizer
class LSQQuantizer(LearnedRangeQuantizer):
    """Learned step size quantization: `x̂ = s·round(clip(x/s, −Qn, Qp))`.

    The step `s` is trained: `∂x̂/∂s = round(x/s) − x/s` inside the range, `−Qn` below,
    `Qp` above, multiplied by the gradient scale `g = 1/sqrt(N·Qp)` (N: elements per
    step — weights in the tensor or channel, activation features per example);
    `∂x̂/∂x = 1` inside, 0 outside. `s` is initialized on the first training call to
    `2·mean|x|/sqrt(Qp)` (per channel with `per_channel`). Esser et al. 2019, "Learned
    Step Size Quantization".

    Weights are symmetric narrow range, `Qn = Qp = 2^(b−1) − 1`, so TFLite accepts them
    (zero point 0, no −2^(b−1)); the paper uses `Qn = 2^(b−1)`. Unsigned activations
    (`signed=False`): `Qn = 0, Qp = 2^b − 1`; signed activations use the weights' grid.

    Example: 3 bits, signed (Qn = Qp = 3), s = 0.5: `x = [-2, -0.3, 0.6, 1.1]` →
    `[-1.5, -0.5, 0.5, 1.0]`; `∂x̂/∂s` (before g) = `[-3, -0.4, -0.2, -0.2]`.

    Args:
      num_bits: 2 to 8.
      signed: symmetric grid (weights, signed activations); False: unsigned activations.
      per_channel: one step per slice along `axis`.
      axis: the channel axis (the output-channel axis for weights).
      kind: "weights", "activations" or None (decided at build, see
        `LearnedRangeQuantizer`).
      stochastic_rounding: in training add `U(−½, ½)·s` before rounding (unbiased).
    """

    _KEY = "step"

    def _make_variables(self, layer, name, shape, kind):
        qn, qp, _ = self._grid(kind)
        default = 6.0 / qp  # before initialization: a [−6, 6] (or [0, 6]) range
        return {"step": c.make_variable(layer, f"{name}_step", shape, default, True,
                                        constraint=c.AtLeast(_MIN_STEP))}

    def _initialize(self, x, weights, kind, axis):
        _, qp, _ = self._grid(kind)
        mean_abs = tf.reduce_mean(tf.abs(x), axis=c.reduce_axes(x, axis))
        step = tf.maximum(2.0 * mean_abs / math.sqrt(qp), _MIN_STEP)
        weights["step"].assign(tf.reshape(step, tf.shape(weights["step"])))

    def _range(self, x, weights, kind, axis, training):
        qn, qp, _ = self._grid(kind)
        step = tf.convert_to_tensor(weights["step"])
        if training:
            step = c.scale_gradient(step, self._gradient_scale(x, kind, axis))
        return -float(qn) * step, float(qp) * step


@register_quantizer
class LSQPlusQuantizer(LearnedRangeQuantizer):
    """LSQ+: learned step `s` and, for activations, learned offset `β`.

    Activations: `x̂ = s·clip(round((x − β)/s), n, p) + β`, unsigned `n = 0,
    p = 2^b − 1`, signed `n = −2^(b−1), p = 2^(b−1) − 1`; `∂x̂/∂β = 0` inside, 1 where
    clipped; `∂x̂/∂s` as LSQ; both gradients scaled by `g = 1/sqrt(N·p)`. On the first
    training batch `(s, β)` minimize `‖x − x̂‖²` over a grid of candidate ranges (the
    low end `min(x)·{1, .8, …, 0}`, the high end a fraction {0.2 … 1} of the way to
    `max(x)`; up to 4096 samples of the batch). Because the range goes through TF's
    fake quant, `β` acts rounded to the grid (0 stays exact): the zero point TFLite
    stores is an integer.
    Weights: symmetric narrow range (no offset, as in the paper), `Qn = Qp = 2^(b−1) − 1`,
    initialized `s = max(|μ − 3σ|, |μ + 3σ|)/2^(b−1)` (per channel with `per_channel`).
    Bhalgat et al. 2020, "LSQ+: Improving low-bit quantization through learnable offsets
    and better initialization".

    Example: 2 bits unsigned, s = 0.5, β = −0.5 (levels −0.5, 0, 0.5, 1):
    `x = [-1, -0.2, 0.3, 2]` → `[-0.5, 0, 0.5, 1]`; `∂x̂/∂β = [1, 0, 0, 1]`.

    Args: as `LSQQuantizer`; per-channel offsets are not supported (per-channel
    activations are not), so `per_channel=True` is for weights.
    """

    _KEY = "step"
    _CANDIDATE_LOW = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
    _CANDIDATE_HIGH = tuple(0.2 + 0.05 * i for i in range(17))
    _SAMPLES = 4096

    def _grid(self, kind):
        b = self._num_bits
        if kind == "weights":
            return 2 ** (b - 1) - 1, 2 ** (b - 1) - 1, True
        if self.signed:
            return 2 ** (b - 1), 2 ** (b - 1) - 1, False
        return 0, 2 ** b - 1, False

    def build(self, tensor_shape, name, layer):
        if self.per_channel and self._resolve_kind(tensor_shape) == "activations":
            raise ValueError("LSQPlusQuantizer: per_channel=True is not supported for "
                             "activations; allowed: per_channel=False (one offset per tensor).")
        return super().build(tensor_shape, name, layer)

    def _make_variables(self, layer, name, shape, kind):
        qn, qp, _ = self._grid(kind)
        variables = {"step": c.make_variable(layer, f"{name}_step", shape, 6.0 / qp, True,
                                             constraint=c.AtLeast(_MIN_STEP))}
        if kind == "activations":
            variables["offset"] = c.make_variable(layer, f"{name}_offset", shape,
                                                  0.0, True)
        return variables

    def _initialize(self, x, weights, kind, axis):
        qn, qp, _ = self._grid(kind)
        if kind == "weights":
            axes = c.reduce_axes(x, axis)
            mean = tf.reduce_mean(x, axis=axes)
            std = tf.math.reduce_std(x, axis=axes)
            limit = tf.maximum(tf.abs(mean - 3.0 * std), tf.abs(mean + 3.0 * std))
            step = tf.maximum(limit / float(2 ** (self._num_bits - 1)), _MIN_STEP)
            weights["step"].assign(tf.reshape(step, tf.shape(weights["step"])))
            return
        step, offset = self._mse_search(x, qn, qp)
        weights["step"].assign(step)
        weights["offset"].assign(offset)

    def _mse_search(self, x, qn, qp):
        flat = tf.reshape(x, [-1])
        size = tf.size(flat)
        count = tf.minimum(size, self._SAMPLES)
        index = tf.cast(tf.linspace(0.0, tf.cast(size - 1, tf.float32), count), tf.int32)
        sample = tf.gather(flat, index)
        x_min, x_max = tf.reduce_min(flat), tf.reduce_max(flat)
        lows, highs = [], []
        for a in self._CANDIDATE_LOW:
            for r in self._CANDIDATE_HIGH:
                low = tf.minimum(x_min * a, 0.0) if qn == 0 else x_min * a
                lows.append(low)
                highs.append(low + (x_max - low) * r)
        lows, highs = tf.stack(lows), tf.stack(highs)
        highs = tf.maximum(highs, lows + _MIN_STEP * (qn + qp))
        candidates = tf.tile(sample[:, None], [1, len(self._CANDIDATE_LOW)
                                               * len(self._CANDIDATE_HIGH)])
        quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            candidates, lows, highs, num_bits=self._num_bits, narrow_range=False)
        error = tf.reduce_mean(tf.square(quantized - candidates), axis=0)
        best = tf.argmin(error)
        step = (highs[best] - lows[best]) / float(qn + qp)
        return step, lows[best] + float(qn) * step

    def _range(self, x, weights, kind, axis, training):
        qn, qp, _ = self._grid(kind)
        step = tf.convert_to_tensor(weights["step"])
        offset = tf.convert_to_tensor(weights["offset"]) if kind == "activations" else 0.0
        if training:
            scale = self._gradient_scale(x, kind, axis)
            step = c.scale_gradient(step, scale)
            if kind == "activations":
                offset = c.scale_gradient(offset, scale)
        return offset - float(qn) * step, offset + float(qp) * step
