"""Quantization Networks: quantization as a sum of sigmoids (Yang et al. 2019)."""

import numpy as np
import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Deployment, Quantizer, register_quantizer


@register_quantizer
class SoftQuantizer(Quantizer):
    """`y = α·(Σ_i s_i·σ(T·(β·x − b_i)) − o)` in training; hard steps at inference,
    `y = α·(Σ_i s_i·[β·x ≥ b_i] − o)`.

    The steps `s_i`, biases `b_i` and offset `o` describe a uniform integer grid of
    `num_bits` (fixed, saved as non-trainable variables): signed (weights) the narrow
    grid `−Qp…Qp`, `Qp = 2^(b−1) − 1` (1 bit: {−1, 1}); unsigned (activations)
    `0…2^b − 1`; `b_i` are the midpoints between neighbouring levels, `s_i` the level
    gaps, `o` the distance from the lowest level to 0. The input scale β and output scale
    α are trained (autodiff through the sigmoids; x gets the soft gradient too),
    initialized on the first training call to `β = P/max|x|`, `α = 1/β` (P the top grid
    level; 1-bit: `α = E|x|`, `β = 1/E|x|`).

    The temperature T is the non-trainable variable returned by `build` under the key
    `"temperature"` (the layer variable named `<name>_temperature`); a callback raises it
    during training (Yang et al. 2019: `T = 20·(epoch + 1)`, capped at 2000). Default start 20,
    that schedule's first value. Use `SoftQuantizer.set_temperature(weights, T)` or
    assign the variable. As T → ∞ the training forward tends to the inference one.
    Yang et al. 2019, "Quantization Networks" (CVPR).

    Example: 2 bits signed (levels {−1, 0, 1}, b = ±0.5, o = 1), α = 2, β = 1:
    x = 0.8 at T = 20 → 2·(σ(26) + σ(6) − 1) ≈ 1.995; inference → 2·(1 + 1 − 1) = 2.

    Args:
      num_bits: 1 to 4.
      signed: the signed grid (weights) or the unsigned one (activations).
      initial_temperature: T before any callback (> 0).

    Deployment: SIMULATION (α and β are independent, so input thresholds and output
    levels are not one uniform fake-quant grid).
    """

    bits_changeable = False  # the variables' shapes follow the bit width

    applies_to = ("weights", "activations")
    TEMPERATURE = "temperature"

    def __init__(self, num_bits=2, signed=True, initial_temperature=20.0):
        self._num_bits = c.check_bits("SoftQuantizer", num_bits, range(1, 5))
        self.signed = bool(signed)
        self.initial_temperature = c.check_positive("SoftQuantizer", "initial_temperature",
                                                    initial_temperature)
        levels = self.grid_levels()
        self._top = float(levels[-1])
        self._offset = float(-levels[0])

    def grid_levels(self):
        """The integer grid the sigmoids approximate (before α)."""
        b = self._num_bits
        if self.signed:
            if b == 1:
                return np.array([-1.0, 1.0], np.float32)
            top = 2 ** (b - 1) - 1
            return np.arange(-top, top + 1, dtype=np.float32)
        return np.arange(0, 2 ** b, dtype=np.float32)

    def build(self, tensor_shape, name, layer):
        levels = self.grid_levels()
        gaps = levels[1:] - levels[:-1]
        mids = (levels[1:] + levels[:-1]) / 2.0

        def var(suffix, value, trainable, shape=()):
            return c.make_variable(layer, f"{name}_{suffix}", shape,
                                   tf.constant_initializer(value), trainable)

        return {"alpha": var("alpha", 1.0, True), "beta": var("beta", 1.0, True),
                "steps": var("steps", gaps, False, gaps.shape),
                "biases": var("biases", mids, False, mids.shape),
                self.TEMPERATURE: var(self.TEMPERATURE, self.initial_temperature, False),
                "initialized": var("initialized", 0.0, False)}

    @classmethod
    def set_temperature(cls, weights, value):
        """Assigns T in the variables `build` returned."""
        weights[cls.TEMPERATURE].assign(float(value))

    def _initialize(self, x, weights):
        magnitude = tf.abs(x)
        if self._num_bits == 1 and self.signed:
            alpha = tf.maximum(tf.reduce_mean(magnitude), 1e-8)
            beta = 1.0 / alpha
        else:
            beta = self._top / tf.maximum(tf.reduce_max(magnitude), 1e-8)
            alpha = 1.0 / beta
        weights["alpha"].assign(alpha)
        weights["beta"].assign(beta)

    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.convert_to_tensor(inputs)
        if training:
            c.run_once(weights["initialized"],
                       lambda: self._initialize(tf.stop_gradient(x), weights))
        alpha = tf.convert_to_tensor(weights["alpha"])
        beta = tf.convert_to_tensor(weights["beta"])
        steps = tf.convert_to_tensor(weights["steps"])
        biases = tf.convert_to_tensor(weights["biases"])
        z = beta * x
        shifted = z[..., None] - biases
        if training:
            temperature = tf.convert_to_tensor(weights[self.TEMPERATURE])
            units = tf.sigmoid(temperature * shifted)
        else:
            units = tf.cast(shifted >= 0.0, x.dtype)
        return alpha * (tf.reduce_sum(steps * units, axis=-1) - self._offset)

    def deployment(self):
        return Deployment.SIMULATION

    def get_config(self):
        return {"num_bits": self._num_bits, "signed": self.signed,
                "initial_temperature": self.initial_temperature}
