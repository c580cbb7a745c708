"""Binary weights and activations: BinaryConnect/BNN sign, XNOR-Net scaling."""

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Deployment, Quantizer, register_quantizer


def _sign_ste(x):
    """sign(x) with sign(0) = +1; gradient `dy·[|x| ≤ 1]` (the hard-tanh STE)."""

    @tf.custom_gradient
    def _op(inputs):
        def grad(dy):
            return dy * tf.cast(tf.abs(inputs) <= 1.0, dy.dtype)

        return tf.where(inputs >= 0.0, tf.ones_like(inputs), -tf.ones_like(inputs)), grad

    return _op(x)


@register_quantizer
class BinaryQuantizer(Quantizer):
    """`y = sign(x)` (sign(0) = +1), or `α·sign(w)` with XNOR-Net's scale.

    Gradient: straight through where `|x| ≤ 1`, 0 elsewhere (Hubara et al. 2016,
    "Binarized Neural Networks"). `scale="per_channel_mean"` (weights only): `α = E|w|`
    per output channel (slice along `axis`), the L2-optimal scale of Rastegari et al.
    2016, "XNOR-Net"; the gradient also flows through α (autodiff:
    `∂ŵ/∂w = α·[|w| ≤ 1] + 1/n`, n the elements per channel, XNOR-Net's form).
    Use `scale="none"` for activations.

    Example: `x = [-0.3, 0, 2]` → `[-1, 1, 1]`; gradient of sum = `[1, 1, 0]`.
    Per-channel mean on w = [[-0.5, 1.5]] with axis 0: α = 1 → `[[-1, 1]]`.

    Args:
      scale: "none" or "per_channel_mean".
      axis: the output-channel axis (for "per_channel_mean").

    Deployment: SIMULATION (TFLite has no 1-bit tensors).
    """

    applies_to = ("weights", "activations")
    SCALES = ("none", "per_channel_mean")

    def __init__(self, scale="none", axis=-1):
        self.scale = c.check_choice("BinaryQuantizer", "scale", scale, self.SCALES)
        self.axis = c.check_axis("BinaryQuantizer", axis)
        self._num_bits = 1

    def __call__(self, inputs, training, weights=None, **kwargs):
        x = tf.convert_to_tensor(inputs)
        signs = _sign_ste(x)
        if self.scale == "none":
            return signs
        axis = self.axis % x.shape.rank
        alpha = tf.reduce_mean(tf.abs(x), axis=c.reduce_axes(x, axis), keepdims=True)
        return alpha * signs

    def deployment(self):
        return Deployment.SIMULATION

    def get_config(self):
        return {"scale": self.scale, "axis": self.axis}
