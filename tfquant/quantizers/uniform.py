"""Uniform min/max quantizers: per-channel weights and moving-average activations.

Both follow docs/ARCHITECTURE.md §3.1: in training they call tfquant's C++ op
(`tfquant.ops.fake_quant`); with `training=False` they emit TensorFlow's own
`fake_quant_with_min_max_vars[_per_channel]`, which the TFLite converter turns into
integer tensors. The two give bit-identical forward results.
"""

import tensorflow as tf

from tfquant.ops import fake_quant, moving_average_range
from tfquant.ops.arguments import check_bits
from tfquant.ops.fake_quant_xla import in_xla_context
from tfquant.quantizers.base import Deployment, Quantizer, register_quantizer
from tfquant.quantizers.export_graph import (
    activation_deployment,
    deployable_weight_grid,
    export_activation_fake_quant,
    export_fake_quant,
    weight_deployment,
)

WEIGHT_BITS = tuple(range(2, 9))
ACTIVATION_BITS = (2, 3, 4, 5, 6, 7, 8, 16)

# Smallest weight range: keeps an all-zero channel from giving a zero scale.
_MIN_WEIGHT_RANGE = 1e-8

# MovingAverageQuantizer updates its range with the C++ op `moving_average_range`
# outside XLA and tf.distribute's replicas; False: always with the composed TF ops
# (tests compare the two).
USE_RANGE_OP = True


def cross_replica_range(local_min, local_max):
    """(min, max) over the global batch under tf.distribute, else the arguments.

    In a replica context with several replicas (MirroredStrategy, or
    MultiWorkerMirroredStrategy across processes), every replica sees its share of the
    batch; the minima and maxima of all replicas are gathered so each replica gets the
    range of the whole global batch, and statistics kept in replicated variables agree.
    """
    if _single_replica():
        return local_min, local_max
    context = tf.distribute.get_replica_context()
    stacked = tf.stack([tf.cast(local_min, tf.float32), -tf.cast(local_max, tf.float32)])
    gathered = context.all_gather(tf.reshape(stacked, [1, 2]), axis=0)
    extremes = tf.reduce_min(gathered, axis=0)
    return extremes[0], -extremes[1]


def _single_replica():
    """True unless in a replica context with several replicas, where
    `cross_replica_range` gathers the range of the global batch."""
    context = tf.distribute.get_replica_context()
    return context is None or context.num_replicas_in_sync <= 1


def add_replicated_weight(layer, name, value):
    """A float32 scalar state variable (not trained) that every replica updates with
    the same value, e.g. from `cross_replica_range`. With a Keras 3 layer it is made
    with `aggregation="only_first_replica"` (the first replica's assignment is written
    to all copies); with a tf_keras layer (TFMOT) with the equivalent
    `tf.VariableAggregation.ONLY_FIRST_REPLICA`."""
    kwargs = dict(name=name, shape=(), initializer=tf.constant_initializer(value),
                  trainable=False, dtype="float32")
    if _is_tf_keras_layer(layer):
        kwargs["aggregation"] = tf.VariableAggregation.ONLY_FIRST_REPLICA
    else:
        kwargs["aggregation"] = "only_first_replica"
    return layer.add_weight(**kwargs)


def _is_tf_keras_layer(layer):
    return any(cls.__module__.startswith("tf_keras") for cls in type(layer).__mro__)


@register_quantizer
class MinMaxWeightQuantizer(Quantizer):
    """Symmetric, narrow-range uniform weight quantizer with the range of the weights.

    `s = max|w| / (2^(b-1) - 1)` per output channel (or per tensor),
    `ŵ = s · clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)`; the integer zero point is
    0, as TFLite requires of weights. The range is taken from the current weights at
    every call (no state, no gradient through it); the weights get the straight-through
    gradient inside the range. Jacob et al. 2018, "Quantization and Training of Neural
    Networks for Efficient Integer-Arithmetic-Only Inference".

    Example: at 2 bits, `w = [-0.9, -0.2, 0.1, 0.6]` (per tensor, max|w| = 0.9) becomes
    `[-0.9, 0.0, 0.0, 0.9]`.

    Every width exports exactly: 4 and 8 bits natively (INT4, int8), 2 and 3 bits as INT4
    and 5–7 bits as int8 holding the same integers (`deployable_weight_grid`).

    Args:
      num_bits: 2 to 8.
      per_channel: one range per slice along `axis` (the output-channel axis).
      axis: the output-channel axis of the tensor this quantizer is built for.
    """

    def __init__(self, num_bits=8, per_channel=True, axis=-1):
        check_bits("MinMaxWeightQuantizer", num_bits, WEIGHT_BITS)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(f"MinMaxWeightQuantizer: axis must be an int, got {axis!r}.")
        self._num_bits = num_bits
        self.per_channel = bool(per_channel)
        self.axis = axis

    def __call__(self, inputs, training, weights=None, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        rank = inputs.shape.rank
        if self.per_channel:
            axis = self.axis % rank
            reduce_axes = [a for a in range(rank) if a != axis]
            limit = tf.reduce_max(tf.abs(inputs), axis=reduce_axes)
        else:
            axis = None
            limit = tf.reduce_max(tf.abs(inputs))
        limit = tf.stop_gradient(tf.maximum(limit, _MIN_WEIGHT_RANGE))
        if training:
            return fake_quant(inputs, -limit, limit, num_bits=self._num_bits,
                              narrow_range=True, axis=axis)
        quantized = export_fake_quant(inputs, -limit, limit, self._num_bits, True, axis)
        return deployable_weight_grid(quantized, limit / float(2 ** (self._num_bits - 1) - 1),
                                      self._num_bits, axis)

    def deployment(self):
        return weight_deployment(self._num_bits)

    def get_config(self):
        return {"num_bits": self._num_bits, "per_channel": self.per_channel, "axis": self.axis}


@register_quantizer
class MovingAverageQuantizer(Quantizer):
    """Uniform activation quantizer whose range follows an exponential moving average.

    In training each batch's `[min(x, 0), max(x, 0)]` updates the range,
    `r ← decay·r + (1 − decay)·r_batch` (the first batch sets it directly), and `x` is
    fake-quantized with the updated range: `q = clamp(round(x/s) + z, qmin, qmax)`,
    `x̂ = s·(q − z)`, with `s` and `z` nudged so that 0 is exact (TF's FakeQuant). The
    gradient is straight-through inside the range and zero outside. Jacob et al. 2018.

    Before any training the range is [-6, 6] (as TFMOT's), so an untrained model still
    evaluates sensibly.

    Args:
      num_bits: 8 (int8 export), 16 (int16x8 export), or 2–7 (training only: the export
        runs them at 8 bits, as LiteRT has no narrower activations).
      symmetric: range `[-m, m]`, zero point 0.
      narrow_range: leave out the lowest integer (`[-127, 127]` at 8 bits).
      ema_decay: in [0, 1); 0 uses each batch's range alone.
    """

    def __init__(self, num_bits=8, symmetric=False, narrow_range=False, ema_decay=0.99):
        check_bits("MovingAverageQuantizer", num_bits, ACTIVATION_BITS)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(
                f"MovingAverageQuantizer: ema_decay={ema_decay!r} must be in [0, 1)."
            )
        self._num_bits = num_bits
        self.symmetric = bool(symmetric)
        self.narrow_range = bool(narrow_range)
        self.ema_decay = float(ema_decay)

    def build(self, tensor_shape, name, layer):
        def make(suffix, value):
            # Under tf.distribute every replica computes the same new range (from the
            # global batch, see `cross_replica_range`), so the first replica's write
            # is everyone's.
            return add_replicated_weight(layer, f"{name}_{suffix}", value)

        # "frozen" (1.0: the range stops following the data; FreezeQuantizerRanges).
        return {"min": make("min", -6.0), "max": make("max", 6.0),
                "observed": make("observed", 0.0), "frozen": make("frozen", 0.0)}

    def __call__(self, inputs, training, weights, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        if training:
            range_min, range_max = self._observe(tf.cast(inputs, tf.float32), weights)
            return fake_quant(inputs, range_min, range_max, num_bits=self._num_bits,
                              narrow_range=self.narrow_range)
        return export_activation_fake_quant(
            inputs, tf.convert_to_tensor(weights["min"]), tf.convert_to_tensor(weights["max"]),
            self._num_bits, self.narrow_range,
        )

    def _observe(self, inputs, weights):
        """Updates the range variables from `inputs`; returns the new range."""
        if USE_RANGE_OP and _single_replica() and not in_xla_context():
            # One C++ op with the composed version's bits (~35 ops per quantizer are
            # executor overhead in transformer and RNN steps).
            frozen = weights["frozen"] if "frozen" in weights else 0.0
            new_min, new_max = moving_average_range(
                inputs, weights["min"], weights["max"], weights["observed"], frozen,
                decay=self.ema_decay, symmetric=self.symmetric)
        else:
            new_min, new_max = self._composed_range(inputs, weights)
        weights["min"].assign(new_min)
        weights["max"].assign(new_max)
        weights["observed"].assign(1.0)
        return tf.stop_gradient(new_min), tf.stop_gradient(new_max)

    def _composed_range(self, inputs, weights):
        """The new range in TF ops (`moving_average_range` gives the same bits): under
        XLA, which cannot compile the C++ op, and across replicas."""
        batch_min, batch_max = cross_replica_range(tf.reduce_min(inputs),
                                                   tf.reduce_max(inputs))
        batch_min = tf.minimum(batch_min, 0.0)
        batch_max = tf.maximum(batch_max, 0.0)
        if self.symmetric:
            batch_max = tf.maximum(-batch_min, batch_max)
            batch_min = -batch_max
        old_min = tf.convert_to_tensor(weights["min"])
        old_max = tf.convert_to_tensor(weights["max"])
        first = tf.convert_to_tensor(weights["observed"]) < 0.5
        decay = self.ema_decay
        new_min = tf.where(first, batch_min, decay * old_min + (1.0 - decay) * batch_min)
        new_max = tf.where(first, batch_max, decay * old_max + (1.0 - decay) * batch_max)
        # A non-finite batch (diverged training) must not poison the saved range.
        finite = tf.logical_and(tf.math.is_finite(new_min), tf.math.is_finite(new_max))
        keep = tf.logical_not(finite)
        if "frozen" in weights:
            # Frozen after at least one observation: the range stays where it is.
            frozen = tf.logical_and(tf.convert_to_tensor(weights["frozen"]) > 0.5,
                                    tf.logical_not(first))
            keep = tf.logical_or(keep, frozen)
        new_min = tf.where(keep, old_min, new_min)
        new_max = tf.where(keep, old_max, new_max)
        return new_min, new_max

    def deployment(self):
        return activation_deployment(self._num_bits)

    def get_config(self):
        return {"num_bits": self._num_bits, "symmetric": self.symmetric,
                "narrow_range": self.narrow_range, "ema_decay": self.ema_decay}


@register_quantizer
class CappedRangeQuantizer(MovingAverageQuantizer):
    """A `MovingAverageQuantizer` whose range never exceeds `[-limit, limit]`: the
    calibrated or moving-average range is clipped there where it is used (the range
    variables keep what calibration or training wrote). Used for an LSTM's cell state,
    which the next op reads through a saturating tanh
    (`tfquant.keras.layers.recurrent.CELL_STATE_LIMIT`).

    Args:
      limit: the bound, > 0.
      num_bits, symmetric, narrow_range, ema_decay: as for `MovingAverageQuantizer`.
    """

    def __init__(self, limit, num_bits=8, symmetric=False,
                 narrow_range=False, ema_decay=0.99):
        super().__init__(num_bits, symmetric, narrow_range, ema_decay)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise ValueError(f"CappedRangeQuantizer: limit must be a number > 0; got "
                             f"{limit!r}.")
        self.limit = float(limit)

    def __call__(self, inputs, training, weights, **kwargs):
        if training:
            return super().__call__(inputs, training, weights, **kwargs)
        capped = dict(weights)
        capped["min"] = tf.maximum(tf.convert_to_tensor(weights["min"]), -self.limit)
        capped["max"] = tf.minimum(tf.convert_to_tensor(weights["max"]), self.limit)
        return super().__call__(inputs, training, capped, **kwargs)

    def _observe(self, inputs, weights):
        range_min, range_max = super()._observe(inputs, weights)
        return tf.maximum(range_min, -self.limit), tf.minimum(range_max, self.limit)

    def get_config(self):
        return {"limit": self.limit, **super().get_config()}


@register_quantizer
class FixedRangeQuantizer(Quantizer):
    """Uniform quantizer with a constant range, for outputs whose range a kernel fixes.

    TFLite's int8 LOGISTIC and SOFTMAX write `scale = 1/256, zero point = −128` (range
    `[0, 255/256]`) and TANH `scale = 1/128, zero point 0` (range `[−1, 127/128]`); they
    refuse other output parameters, so these outputs are fake-quantized with exactly
    those ranges. Same rounding and gradient as `MovingAverageQuantizer`, no state.

    Args:
      min_value, max_value: the range, `min_value ≤ 0 ≤ max_value`.
      num_bits: 8 or 16.
    """

    def __init__(self, min_value, max_value, num_bits=8):
        check_bits("FixedRangeQuantizer", num_bits, (8, 16))
        if not float(min_value) <= 0.0 <= float(max_value) or min_value == max_value:
            raise ValueError(
                f"FixedRangeQuantizer: the range [{min_value}, {max_value}] must contain 0 "
                "and not be empty."
            )
        self._num_bits = num_bits
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def __call__(self, inputs, training, weights=None, **kwargs):
        if training:
            return fake_quant(inputs, self.min_value, self.max_value, num_bits=self._num_bits)
        return export_fake_quant(inputs, self.min_value, self.max_value, self._num_bits, False)

    def deployment(self):
        return Deployment.INT8 if self._num_bits == 8 else Deployment.INT16

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value,
                "num_bits": self._num_bits}


# The output ranges TFLite's int8 kernels require (see FixedRangeQuantizer).
INT8_FIXED_OUTPUT_RANGES = {
    "sigmoid": (0.0, 255.0 / 256.0),
    "softmax": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
    "log_softmax": (-255.0 / 16.0, 0.0),  # scale 16/256, zero point 127
}
