"""SAWB: statistics-aware weight binning (Choi et al. 2019)."""

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Quantizer, register_quantizer
from tfquant.quantizers.export_graph import deployable_weight_grid

_MIN_CLIP = 1e-8


@register_quantizer
class SAWBQuantizer(Quantizer):
    """Symmetric uniform weights clipped at `α = c1·sqrt(E[w²]) − c2·E|w|`.

    The coefficients (fit by the paper to the MSE-optimal clip of several weight
    distributions) per bit width: 2 bit (3.212, 2.178), 3 bit (7.509, 6.892),
    4 bit (12.68, 12.80), 5 bit (17.74, 18.64). When `α ≤ 0` the clip falls back to
    `max|w|`. The weights are then fake-quantized on `[−α, α]`, symmetric narrow range
    (`2^b − 1` levels including 0, zero point 0, which TFLite and INT4 export hold
    exactly), `ŵ = s·round(clip(w, −α, α)/s)`, `s = α/(2^(b−1) − 1)`; straight-through
    gradient for w inside `[−α, α]`, none through α (recomputed from the weights each
    call, no variables). Choi et al. 2019, "Accurate and Efficient 2-bit Quantized
    Neural Networks" (SysML).

    Judgement call: the paper's 2-bit grid has four levels `{±α/3, ±α}` (no zero); a
    TFLite weight grid needs zero, so tfquant uses the narrow grid `{−α, 0, α}` with the
    paper's α. For N(0, 1) weights α ≈ 3.212 − 2.178·0.798 ≈ 1.47 at 2 bits.

    Example: 2 bits, per tensor, `w = [-1.2, -0.3, 0.5, 2.0]`: E[w²] = 1.4455,
    E|w| = 1.0, α = 3.212·1.2023 − 2.178 = 1.684; `ŵ = [-1.684, 0, 0, 1.684]`.

    Above 5 bits the paper gives no coefficients; the clip is then `max|w|` (the
    MSE-optimal clip approaches the full range as the bits grow), so SAWB layers can sit
    next to 8-bit first and last layers.

    Args:
      num_bits: 2 to 8 (coefficients for 2–5; `max|w|` above).
      per_channel: one clip per slice along `axis` (the output-channel axis).
      axis: the output-channel axis.
      stochastic_rounding: in training add `U(−½, ½)·s` before rounding (unbiased).
    """

    applies_to = ("weights",)
    COEFFICIENTS = {2: (3.212, 2.178), 3: (7.509, 6.892), 4: (12.68, 12.80),
                    5: (17.74, 18.64)}

    def __init__(self, num_bits=4, per_channel=False, axis=-1, stochastic_rounding=False):
        self._num_bits = c.check_bits("SAWBQuantizer", num_bits, range(2, 9))
        self.per_channel = bool(per_channel)
        self.axis = c.check_axis("SAWBQuantizer", axis)
        self.stochastic_rounding = bool(stochastic_rounding)

    def clip(self, w, axis=None):
        """α of `w` (per slice along `axis`, or per tensor when `axis` is None)."""
        w = tf.convert_to_tensor(w, tf.float32)
        axes = c.reduce_axes(w, axis)
        if self._num_bits not in self.COEFFICIENTS:
            return tf.maximum(tf.reduce_max(tf.abs(w), axis=axes), _MIN_CLIP)
        c1, c2 = self.COEFFICIENTS[self._num_bits]
        rms = tf.sqrt(tf.reduce_mean(tf.square(w), axis=axes))
        mean_abs = tf.reduce_mean(tf.abs(w), axis=axes)
        alpha = c1 * rms - c2 * mean_abs
        alpha = tf.where(alpha > 0.0, alpha, tf.reduce_max(tf.abs(w), axis=axes))
        return tf.maximum(alpha, _MIN_CLIP)

    def __call__(self, inputs, training, weights=None, **kwargs):
        x = tf.convert_to_tensor(inputs)
        axis = self.axis % x.shape.rank if self.per_channel else None
        alpha = tf.stop_gradient(self.clip(x, axis))
        if training and self.stochastic_rounding:
            x = c.add_rounding_noise(x, alpha / float(2 ** (self._num_bits - 1) - 1), axis)
        quantized = c.uniform_quantize(x, -alpha, alpha, self._num_bits, True, axis, training)
        if training:
            return quantized
        return deployable_weight_grid(quantized, alpha / float(2 ** (self._num_bits - 1) - 1),
                                      self._num_bits, axis)

    def deployment(self):
        return c.weight_deployment(self._num_bits)

    def get_config(self):
        return {"num_bits": self._num_bits, "per_channel": self.per_channel, "axis": self.axis,
                "stochastic_rounding": self.stochastic_rounding}
