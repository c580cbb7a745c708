"""DoReFa-Net weight and activation quantizers (Zhou et al. 2016)."""

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import (
    Deployment,
    Quantizer,
    register_quantizer,
)
from tfquant.quantizers.uniform import activation_deployment

_TINY = 1e-12


@register_quantizer
class DoReFaWeightQuantizer(Quantizer):
    """DoReFa weights: `ŵ = 2·quantize_k(tanh(w)/(2·max|tanh w|) + ½) − 1`.

    `quantize_k(u) = round((2^k − 1)·u)/(2^k − 1)` on `u ∈ [0, 1]` is TF's fake quant
    on `[0, 1]` at k bits (rounding half up), straight through; the gradient flows
    through tanh and the max as in the paper's reference. The levels are
    `2j/(2^k − 1) − 1`, j = 0…2^k − 1: an even number of levels without 0, in [−1, 1]
    (scale-free: follow with BN or let the next layer learn the scale).
    Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks
    with Low Bitwidth Gradients".

    Example: k = 2, `w = [-2, 0.1, 0.5, 3]`: tanh = [-.964, .0997, .462, .995],
    u = [.0157, .550, .732, 1] → quantize_2 = [0, 2/3, 2/3, 1] → `[-1, 1/3, 1/3, 1]`.

    Args:
      num_bits: 2 to 8.

    Deployment: SIMULATION (a grid without 0 has no zero point).
    """

    applies_to = ("weights",)

    def __init__(self, num_bits=2):
        self._num_bits = c.check_bits("DoReFaWeightQuantizer", num_bits, range(2, 9))

    def __call__(self, inputs, training, weights=None, **kwargs):
        x = tf.convert_to_tensor(inputs)
        t = tf.tanh(x)
        u = t / (2.0 * tf.maximum(tf.reduce_max(tf.abs(t)), _TINY)) + 0.5
        q = c.uniform_quantize(u, 0.0, 1.0, self._num_bits, False, None, training)
        return 2.0 * q - 1.0

    def deployment(self, kind=None):
        return Deployment.SIMULATION

    def get_config(self):
        return {"num_bits": self._num_bits}


@register_quantizer
class DoReFaActivationQuantizer(Quantizer):
    """DoReFa activations: `y = quantize_k(clip(x, 0, 1))`.

    `quantize_k(u) = round((2^k − 1)·u)/(2^k − 1)`: TF's fake quant on `[0, 1]`;
    gradient 1 on `[0, 1]`, 0 outside (the clip). Zhou et al. 2016.

    Example: k = 2: `x = [-0.5, 0.2, 0.5, 1.7]` → `[0, 1/3, 2/3, 1]` (0.5·3 = 1.5 rounds up).

    Args:
      num_bits: 2 to 8.
      stochastic_rounding: in training add `U(−½, ½)/(2^k − 1)` before rounding.
    """

    applies_to = ("activations",)

    def __init__(self, num_bits=8, stochastic_rounding=False):
        self._num_bits = c.check_bits("DoReFaActivationQuantizer", num_bits, range(2, 9))
        self.stochastic_rounding = bool(stochastic_rounding)

    def __call__(self, inputs, training, weights=None, **kwargs):
        x = tf.convert_to_tensor(inputs)
        if training:
            if self.stochastic_rounding:
                x = c.add_rounding_noise(x, 1.0 / (2 ** self._num_bits - 1))
            return c.uniform_quantize(x, 0.0, 1.0, self._num_bits, False, None, True)
        return c.uniform_quantize(x, 0.0, 1.0, self._num_bits, False, None, False,
                                  activation=True)

    def deployment(self, kind=None):
        return activation_deployment(self._num_bits)

    def get_config(self):
        return {"num_bits": self._num_bits, "stochastic_rounding": self.stochastic_rounding}
