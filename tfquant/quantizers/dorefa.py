"""DoReFa-Net weight and activation quantizers (Zhou et al. 2016)."""

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import (
    Deployment,
    Quantizer,
    register_quantizer,
)
from tfquant.quantizers.export_graph import activation_deployment

_TINY = 1e-12


@register_quantizer
class DoReFaWeightQuantizer(Quantizer):
    """DoReFa weights, per-channel scale kept: `ŵ = c·(2·quantize_k(tanh(v)/(2·max|tanh v|)
    + ½) − 1)`, `v = w/c`, `c = max|w|` per output channel (per tensor without
    `per_channel`).

    `quantize_k(u) = round((2^k − 1)·u)/(2^k − 1)` on `u ∈ [0, 1]` is TF's fake quant
    on `[0, 1]` at k bits (rounding half up), straight through; the gradient flows
    through tanh and max|tanh v| as in the paper's reference, `c` is a constant to it
    (as the range of `MinMaxWeightQuantizer`). The levels are
    `c·(2j/(2^k − 1) − 1)`, j = 0…2^k − 1: an even number of levels without 0.
    Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks
    with Low Bitwidth Gradients".

    Deviation from the paper: the paper's levels lie in [−1, 1] whatever the weights'
    scale (c = 1, one max over the tensor). Folding BN multiplies each output channel of
    the kernel by γ/σ, a scale the next BN can no longer restore, so the paper's form
    loses it (−10 % on the Fashion-MNIST benchmark); dividing by the channel's max|w|
    first and multiplying it back keeps it, and still gives DoReFa's levels per channel.

    Example: k = 2, per tensor, `w = [-2, 0.1, 0.5, 3]`: c = 3, tanh(w/c) =
    [-.583, .0333, .165, .762], u = [.117, .522, .608, 1] → quantize_2 = [0, 2/3, 2/3, 1]
    → `[-3, 1, 1, 3]`.

    Args:
      num_bits: 2 to 8.
      per_channel: one scale `c` per slice along `axis` (else one for the tensor).
      axis: the output-channel axis.

    Deployment: SIMULATION (a grid without 0 has no zero point); the export finds the
    levels on an exact integer grid (odd multiples of `c/(2^k − 1)`).
    """

    applies_to = ("weights",)

    def __init__(self, num_bits=2, per_channel=True, axis=-1):
        self._num_bits = c.check_bits("DoReFaWeightQuantizer", num_bits, range(2, 9))
        self.per_channel = bool(per_channel)
        self.axis = c.check_axis("DoReFaWeightQuantizer", axis)

    def __call__(self, inputs, training, weights=None, **kwargs):
        x = tf.convert_to_tensor(inputs)
        axis = self.axis % x.shape.rank if self.per_channel else None
        axes = c.reduce_axes(x, axis)
        scale = tf.stop_gradient(
            tf.maximum(tf.reduce_max(tf.abs(x), axis=axes, keepdims=True), _TINY))
        t = tf.tanh(x / scale)
        u = t / (2.0 * tf.maximum(tf.reduce_max(tf.abs(t), axis=axes, keepdims=True), _TINY))
        q = c.uniform_quantize(u + 0.5, 0.0, 1.0, self._num_bits, False, None, training)
        return scale * (2.0 * q - 1.0)

    def deployment(self):
        return Deployment.SIMULATION

    def get_config(self):
        return {"num_bits": self._num_bits, "per_channel": self.per_channel, "axis": self.axis}


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
    # Clips at 0: `QuantConfig` puts its `signed_activation_quantizer` on outputs that
    # may be negative (a residual branch before its Add, the logits) instead.
    unsigned_only = True

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

    def deployment(self):
        return activation_deployment(self._num_bits)

    def get_config(self):
        return {"num_bits": self._num_bits, "stochastic_rounding": self.stochastic_rounding}
