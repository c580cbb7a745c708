"""LQ-Nets: learned quantization bases (Zhang et al. 2018)."""

import itertools

import numpy as np
import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Deployment, Quantizer, register_quantizer

# Initial outermost level, in units of sqrt(E[w²]), per K: near the MSE-optimal
# uniform grids for Gaussian weights (K = 1 uses E|w| itself, the binary optimum).
_WEIGHT_OUTER_LEVEL = {2: 1.5, 3: 2.0, 4: 2.5}


@register_quantizer
class LQNetsQuantizer(Quantizer):
    """Learned quantizer: levels `B·v` for the `2^K` codes `B ∈ {−1, +1}^K` (signed,
    weights; a basis `v ∈ R^K` per output channel) or `B ∈ {0, 1}^K` (unsigned,
    activations; one basis per tensor), K = `num_bits`.

    Forward: each element is encoded to the nearest of the `2^K` levels and replaced
    by it; the gradient is straight through (identity for
    signed tensors, gated to `[lowest, highest]` level for unsigned ones, like a clip).
    In training, after encoding, one step of quantization-error minimization (QEM)
    updates the basis: `v* = (BᵀB + εI)⁻¹(Bᵀx + εv)` over the batch's codes (ε = 1e-4,
    a ridge toward the current basis), then `v ← 0.9·v + 0.1·v*` (EMA). The output of
    a step uses the basis before its update. Zhang, Yang, Ye & Hua 2018, "LQ-Nets:
    Learned Quantization for Highly Accurate and Compact Deep Neural Networks".

    Init (first training call): `v = a·[1, 2, …, 2^(K−1)]`, a uniform grid; signed: the
    outer level `a·(2^K − 1)` = E|w| (K = 1), 1.5/2.0/2.5·sqrt(E[w²]) (K = 2/3/4);
    unsigned: `a·(2^K − 1) = mean(x) + 3·std(x)`.

    Example: K = 2 signed, v = [0.1, 0.3]: levels {−0.4, −0.2, 0.2, 0.4};
    `w = [-0.5, -0.05, 0.25]` → `[-0.4, -0.2, 0.2]`.

    Args:
      num_bits: K, 1 to 4.
      signed: codes {−1, +1} (weights) or {0, 1} (activations).
      per_channel: one basis per slice along `axis`.
      axis: the channel axis.
      ema_decay: the EMA of the QEM update (0.9), in [0, 1).
      epsilon: the ridge ε (> 0).

    Deployment: SIMULATION (non-uniform levels).
    """

    bits_changeable = False  # the variables' shapes follow the bit width

    applies_to = ("weights", "activations")

    def __init__(self, num_bits=2, signed=True, per_channel=True, axis=-1, ema_decay=0.9,
                 epsilon=1e-4):
        self._num_bits = c.check_bits("LQNetsQuantizer", num_bits, range(1, 5))
        self.signed = bool(signed)
        self.per_channel = bool(per_channel)
        self.axis = c.check_axis("LQNetsQuantizer", axis)
        decay = float(ema_decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LQNetsQuantizer: ema_decay={ema_decay!r} is not supported; "
                             "allowed: a number in [0, 1).")
        self.ema_decay = decay
        self.epsilon = c.check_positive("LQNetsQuantizer", "epsilon", epsilon)
        low = -1.0 if self.signed else 0.0
        self._codes = np.array(list(itertools.product((low, 1.0), repeat=self._num_bits)),
                               dtype=np.float32)[:, ::-1].copy()  # [2^K, K]
        self._powers = 2.0 ** np.arange(self._num_bits, dtype=np.float32)

    def build(self, tensor_shape, name, layer):
        channels = 1
        if self.per_channel:
            channels = c.channel_count("LQNetsQuantizer", tensor_shape, self.axis)
        outer = 1.0 if self.signed else 6.0  # before initialization
        default = np.tile(self._powers * outer / (2 ** self._num_bits - 1), (channels, 1))
        return {"basis": c.make_variable(layer, f"{name}_basis", (channels, self._num_bits),
                                         tf.constant_initializer(default), False),
                "initialized": c.make_variable(layer, f"{name}_initialized", (), 0.0, False),
                # 1.0: the QEM update stops (tfquant.callbacks.FreezeQuantizerRanges).
                "frozen": c.make_variable(layer, f"{name}_frozen", (), 0.0, False)}

    def _rows(self, x):
        """x as [N, C] rows (channel last), and a function mapping [N, C] back."""
        rank = x.shape.rank
        if not self.per_channel:
            shape = tf.shape(x)
            return tf.reshape(x, [-1, 1]), lambda rows: tf.reshape(rows, shape)
        axis = self.axis % rank
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = tf.transpose(x, perm)
        moved_shape = tf.shape(moved)
        rows = tf.reshape(moved, [-1, x.shape[axis]])
        return rows, lambda r: tf.transpose(tf.reshape(r, moved_shape), perm)

    def levels(self, basis):
        """The `2^K` levels of each basis row: [C, 2^K]."""
        return tf.matmul(tf.convert_to_tensor(basis), self._codes, transpose_b=True)

    def _encode(self, rows, basis):
        """(quantized rows [N, C], code indices [N, C])."""
        levels = self.levels(basis)  # [C, L]
        distance = tf.abs(rows[:, :, None] - levels[None, :, :])
        index = tf.argmin(distance, axis=-1, output_type=tf.int32)
        quantized = tf.reduce_sum(tf.one_hot(index, levels.shape[-1]) * levels[None], axis=-1)
        return quantized, index

    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.convert_to_tensor(inputs)
        rows, restore = self._rows(tf.stop_gradient(x))
        basis = weights["basis"]
        if training:
            c.run_once(weights["initialized"], lambda: basis.assign(self._initial_basis(rows)))
        current = tf.convert_to_tensor(basis)
        quantized, index = self._encode(rows, current)
        if training:
            updated = self._qem(rows, index, current)
            if "frozen" in weights:
                updated = tf.where(tf.convert_to_tensor(weights["frozen"]) > 0.5, current,
                                   updated)
            basis.assign(updated)
        levels = self.levels(current)
        q = restore(quantized)
        if self.signed:
            return c.straight_through(x, lambda _: q)
        low = c.per_channel(tf.reduce_min(levels, axis=-1), x,
                            self.axis if self.per_channel else None)
        high = c.per_channel(tf.reduce_max(levels, axis=-1), x,
                             self.axis if self.per_channel else None)
        if not self.per_channel:
            low, high = tf.reshape(low, []), tf.reshape(high, [])

        @tf.custom_gradient
        def gated(inputs):
            inside = tf.cast((inputs >= low) & (inputs <= high), inputs.dtype)
            return q, lambda dy: dy * inside

        return gated(x)

    def _initial_basis(self, rows):
        k = self._num_bits
        if self.signed:
            if k == 1:
                outer = tf.reduce_mean(tf.abs(rows), axis=0)
            else:
                outer = _WEIGHT_OUTER_LEVEL[k] * tf.sqrt(tf.reduce_mean(tf.square(rows), axis=0))
        else:
            outer = tf.reduce_mean(rows, axis=0) + 3.0 * tf.math.reduce_std(rows, axis=0)
        outer = tf.maximum(outer, 1e-6)
        return outer[:, None] * (self._powers / (2 ** k - 1))[None, :]

    def _qem(self, rows, index, basis):
        """One EMA'd ridge least-squares update of each channel's basis."""
        codes = tf.gather(tf.constant(self._codes), index)  # [N, C, K]
        gram = tf.einsum("nck,ncj->ckj", codes, codes)
        target = tf.einsum("nck,nc->ck", codes, rows)
        eye = tf.eye(self._num_bits, batch_shape=[tf.shape(basis)[0]])
        solved = tf.linalg.solve(gram + self.epsilon * eye,
                                 (target + self.epsilon * basis)[:, :, None])[:, :, 0]
        updated = self.ema_decay * basis + (1.0 - self.ema_decay) * solved
        return tf.where(tf.reduce_all(tf.math.is_finite(updated)), updated, basis)

    def deployment(self):
        return Deployment.SIMULATION

    def get_config(self):
        return {"num_bits": self._num_bits, "signed": self.signed,
                "per_channel": self.per_channel, "axis": self.axis,
                "ema_decay": self.ema_decay, "epsilon": self.epsilon}
