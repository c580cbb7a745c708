"""Ternary weights: TWN (Li et al. 2016), TTQ (Zhu et al. 2017) and TGA (He & Fan 2019)."""

import math

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Deployment, Quantizer, register_quantizer
from tfquant.quantizers.export_graph import deployable_weight_grid

_MIN_SCALE = 1e-8


@register_quantizer
class TernaryQuantizer(Quantizer):
    """Ternary weight networks: `ŵ = α·sign(w)·[|w| > Δ]`.

    `Δ = 0.7·E|w|` (`threshold_factor`), `α = mean(|w| where |w| > Δ)` (the
    approximate L2-optimal pair of the paper), per tensor or per output channel; the
    gradient for w is straight through (identity), none through Δ and α.
    Li, Zhang & Liu 2016, "Ternary Weight Networks".

    The grid `{−α, 0, α}` is a 2-bit narrow symmetric grid, so with `training=False`
    the ternary weights also pass through TF's 2-bit narrow fake quant on `[−α, α]`
    (which leaves them unchanged, bit for bit) for the converter to find: they
    deploy as INT4 (`{−7, 0, 7}·α/7`).

    Example: `w = [-1.0, -0.2, 0.3, 0.9]`: E|w| = 0.6, Δ = 0.42, α = (1.0 + 0.9)/2 = 0.95
    → `ŵ = [-0.95, 0, 0, 0.95]`.

    Args:
      threshold_factor: the 0.7 of Δ (> 0).
      per_channel: Δ and α per slice along `axis` (the output-channel axis).
      axis: the output-channel axis.
    """

    applies_to = ("weights",)

    def __init__(self, threshold_factor=0.7, per_channel=False, axis=-1):
        self.threshold_factor = c.check_positive("TernaryQuantizer", "threshold_factor",
                                                 threshold_factor)
        self.per_channel = bool(per_channel)
        self.axis = c.check_axis("TernaryQuantizer", axis)
        self._num_bits = 2

    def threshold_and_scale(self, w, axis=None):
        """(Δ, α) of `w`, per slice along `axis` (per tensor when None)."""
        w = tf.convert_to_tensor(w, tf.float32)
        axes = c.reduce_axes(w, axis)
        magnitude = tf.abs(w)
        delta = self.threshold_factor * tf.reduce_mean(magnitude, axis=axes)
        above = tf.cast(magnitude > c.per_channel(delta, w, axis), tf.float32)
        count = tf.reduce_sum(above, axis=axes)
        alpha = tf.reduce_sum(magnitude * above, axis=axes) / tf.maximum(count, 1.0)
        return delta, tf.maximum(alpha, _MIN_SCALE)

    def __call__(self, inputs, training, weights=None, **kwargs):
        x = tf.convert_to_tensor(inputs)
        axis = self.axis % x.shape.rank if self.per_channel else None
        delta, alpha = self.threshold_and_scale(tf.stop_gradient(x), axis)

        # {−α, 0, α} is the 2-bit narrow grid with step α, whose rounding threshold α/2
        # the scaling moves to Δ: a plain multiply and TF's FakeQuant, which the TFLite
        # converter folds and stores as INT4 {−1, 0, 1} (a where() on a large kernel is
        # not folded, and the FakeQuant after it then fails to convert).
        gain = c.per_channel(alpha / (2.0 * tf.maximum(delta, _MIN_SCALE)), x, axis)

        def ternarize(w):
            return c.uniform_quantize(w * gain, -alpha, alpha, 2, True, axis, training)

        if training:
            return c.straight_through(x, ternarize)
        return deployable_weight_grid(ternarize(x), alpha, 2, axis)

    def deployment(self):
        return Deployment.INT4

    def get_config(self):
        return {"threshold_factor": self.threshold_factor, "per_channel": self.per_channel,
                "axis": self.axis}


@register_quantizer
class TTQQuantizer(Quantizer):
    """Trained ternary quantization: `ŵ = m·W_p` where `w > Δ`, `−m·W_n` where `w < −Δ`,
    0 otherwise, with `Δ = t·m`, `m = max|w|` (t = 0.05).

    `W_p`, `W_n` are trained (init 1.0; scalars, or per output channel with
    `per_channel`). They are in units of `m` — the paper ternarizes weights normalized
    to [−1, 1]; tfquant keeps the raw weights and multiplies by `m` (held constant) so
    that the init 1.0 keeps the layer's scale. Gradients (autodiff of that forward):
    `∂L/∂W_p = m·Σ_{I_p} ∂L/∂ŵ`, `∂L/∂W_n = −m·Σ_{I_n} ∂L/∂ŵ` (the paper writes the sum
    without the sign, treating `−W_n` as the level); latent weights get the paper's
    scaled straight-through gradient: `W_p·∂L/∂ŵ` on I_p, `∂L/∂ŵ` on I_z, `W_n·∂L/∂ŵ`
    on I_n. Zhu, Han, Mao & Dally 2017, "Trained Ternary Quantization".

    Example: `w = [-0.8, 0.01, 0.5, 1.0]`, W_p = 1.2, W_n = 0.9: m = 1, Δ = 0.05 →
    `ŵ = [-0.9, 0, 1.2, 1.2]`.

    Args:
      threshold_factor: t of `Δ = t·max|w|` (in (0, 1)).
      per_channel: `m`, `Δ`, `W_p`, `W_n` per slice along `axis`.
      axis: the output-channel axis.

    Deployment: SIMULATION (levels `−W_n`, 0, `W_p` are not symmetric).
    """

    applies_to = ("weights",)

    def __init__(self, threshold_factor=0.05, per_channel=False, axis=-1):
        self.threshold_factor = c.check_positive("TTQQuantizer", "threshold_factor",
                                                 threshold_factor)
        if self.threshold_factor >= 1.0:
            raise ValueError(f"TTQQuantizer: threshold_factor={threshold_factor!r} is not "
                             "supported; allowed: a number in (0, 1).")
        self.per_channel = bool(per_channel)
        self.axis = c.check_axis("TTQQuantizer", axis)
        self._num_bits = 2

    def build(self, tensor_shape, name, layer):
        shape = ()
        if self.per_channel:
            shape = (c.channel_count("TTQQuantizer", tensor_shape, self.axis),)
        return {"positive_scale": c.make_variable(layer, f"{name}_positive_scale", shape,
                                                  1.0, True),
                "negative_scale": c.make_variable(layer, f"{name}_negative_scale", shape,
                                                  1.0, True)}

    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.convert_to_tensor(inputs)
        axis = self.axis % x.shape.rank if self.per_channel else None
        w = tf.stop_gradient(x)
        m = tf.maximum(tf.reduce_max(tf.abs(w), axis=c.reduce_axes(w, axis)), _MIN_SCALE)
        m = c.per_channel(m, w, axis)
        delta = self.threshold_factor * m
        positive = tf.cast(w > delta, tf.float32)
        negative = tf.cast(w < -delta, tf.float32)
        w_p = c.per_channel(weights["positive_scale"], w, axis)
        w_n = c.per_channel(weights["negative_scale"], w, axis)
        value = m * (w_p * positive - w_n * negative)
        if not training:
            return value
        latent_scale = tf.stop_gradient(w_p * positive + (1.0 - positive - negative)
                                        + w_n * negative)
        straight = latent_scale * x
        return value + (straight - tf.stop_gradient(straight))

    def deployment(self):
        return Deployment.SIMULATION

    def get_config(self):
        return {"threshold_factor": self.threshold_factor, "per_channel": self.per_channel,
                "axis": self.axis}


@register_quantizer
class TGAQuantizer(TernaryQuantizer):
    """Ternary weights from a truncated-Gaussian fit: `ŵ = α·sign(w)·[|w| > Δ]` with
    `Δ = κ·σ` and `α = σ·(φ(κ) − φ(b)) / (Φ(b) − Φ(κ))`, `b = max|w|/σ`.

    The weights (per tensor or per output channel) are modelled as `N(0, σ²)`,
    `σ² = mean(w²)`; α is then the mean of `|w|` over the tails `Δ < |w| ≤ max|w|` of
    that Gaussian — the truncated-Gaussian mean (φ, Φ: the standard normal's density and
    distribution). Δ and α are closed forms of the weight statistics, so the quantizer is
    optimized with the weights: in training the gradient for w is straight through
    (identity) plus the path through α(σ(w), max|w|) (Δ only moves the indicator, whose
    derivative is 0). Default κ = 0.6, near the L2-optimal threshold of a Gaussian
    (κ = α/2σ at κ ≈ 0.612; TWN's 0.7·E|w| is 0.56σ).
    He & Fan 2019, "Simultaneously Optimizing Weight and Quantizer of Ternary Neural
    Network using Truncated Gaussian Approximation" (CVPR). The paper fits N(μ, σ²);
    tfquant fits the zero-mean Gaussian because the ternary grid is symmetric about 0.

    Deploys as TWN does: INT4 `{−7, 0, 7}·α/7` (see `TernaryQuantizer`).

    Example: w ~ N(0, 1), a large sample (max|w| ≈ 4.5): Δ ≈ 0.6, α ≈ 1.215.

    Args:
      threshold_factor: κ of `Δ = κ·σ`, in (0, 1) (max|w| ≥ σ, so the tails are never
        empty).
      per_channel: Δ and α per slice along `axis` (the output-channel axis).
      axis: the output-channel axis.
    """

    def __init__(self, threshold_factor=0.6, per_channel=False, axis=-1):
        super().__init__(threshold_factor, per_channel, axis)
        if self.threshold_factor >= 1.0:
            raise ValueError(f"TGAQuantizer: threshold_factor={threshold_factor!r} is not "
                             "supported; allowed: a number in (0, 1).")

    def threshold_and_scale(self, w, axis=None):
        """(Δ, α) of `w`, per slice along `axis` (per tensor when None); differentiable
        in `w` through σ and max|w|."""
        w = tf.convert_to_tensor(w, tf.float32)
        axes = c.reduce_axes(w, axis)
        sigma = tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(w), axis=axes)), _MIN_SCALE)
        # max|w| ≥ σ always; the floor only guards an all-zero tensor (σ at its floor).
        upper = tf.maximum(tf.reduce_max(tf.abs(w), axis=axes) / sigma, 1.0)
        kappa = self.threshold_factor
        tail = _normal_cdf(upper) - _normal_cdf(kappa)
        alpha = sigma * (_normal_pdf(kappa) - _normal_pdf(upper)) / tail
        return kappa * sigma, tf.maximum(alpha, _MIN_SCALE)

    def __call__(self, inputs, training, weights=None, **kwargs):
        ternary = super().__call__(inputs, training, weights)
        if not training:
            return ternary
        x = tf.convert_to_tensor(inputs)
        axis = self.axis % x.shape.rank if self.per_channel else None
        _, alpha = self.threshold_and_scale(x, axis)
        alpha = c.per_channel(alpha, x, axis)
        # The forward stays the hard ternary values bit for bit (the carrier is 0);
        # the carrier's gradient is α's: Σ ∂L/∂ŵ·t through α(w).
        codes = tf.stop_gradient(tf.round(ternary / alpha))
        carrier = alpha * codes
        return ternary + (carrier - tf.stop_gradient(carrier))


def _normal_pdf(z):
    return tf.exp(-0.5 * tf.square(z)) / math.sqrt(2.0 * math.pi)


def _normal_cdf(z):
    return 0.5 * (1.0 + tf.math.erf(z / math.sqrt(2.0)))
