"""Distance-aware quantization: DAQ (Kim, Lee & Ham 2021)."""

import math

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Deployment, Quantizer, register_quantizer
from tfquant.quantizers.export_graph import (
    activation_deployment,
    deployable_weight_grid,
    export_activation_fake_quant,
)
from tfquant.quantizers.lsq import agree_across_replicas

_MIN_SCALE = 1e-8
_MIN_UPPER = 1e-3  # the activations' upper bound (as PACT's α)
_MIN_WIDTH = 1e-6  # u − l of the weights' interval


def _level_shift(temperature):
    """`1/(e^γ − 1)`: how far the two levels are moved apart (0 once e^γ overflows)."""
    return 0.0 if temperature > 80.0 else 1.0 / math.expm1(temperature)


def distance_aware_soft_round(z, temperature=2.0, sigma=1.0):
    """DAQ's distance-aware soft rounding (DASR) of `z` (in units of the level spacing).

    With `f = z − ⌊z⌋` (⌊z⌋ a constant) and the two levels 0, 1 around it: distances
    give `m_j = exp(−|f − j|)`; the kernel `k_j = exp(−(j − j*)²/σ²)` around the nearest
    level j* gives the scores `s_j = m_j·k_j`; the temperature controller sets
    `T = γ/|s_0 − s_1|` (a constant to the gradient); `p = softmax(T·s)`; the result is
    `⌊z⌋ + Σ_j p_j·q_j` with the levels moved apart, `q_0 = −1/(e^γ − 1)`,
    `q_1 = 1 + 1/(e^γ − 1)`. Since `T·|s_0 − s_1| = γ`, `p` is always
    `(e^γ, 1)/(1 + e^γ)` for (nearest, other), and with the moved levels the value is
    the nearest level itself (up to float rounding), ties at ½ going down; the gradient
    is `γ/(2 sinh γ)·(s_0 + s_1)/|s_0 − s_1|` (largest between two levels).

    Returns that soft value, gradient included; `DAQQuantizer` uses its gradient only.
    """
    z = tf.convert_to_tensor(z)
    base = tf.stop_gradient(tf.floor(z))
    f = z - base  # in [0, 1): |f| = f, |f − 1| = 1 − f
    near_upper = tf.stop_gradient(tf.cast(f > 0.5, z.dtype))
    far = math.exp(-1.0 / float(sigma) ** 2)  # the kernel at the level that is not nearest
    score_low = tf.exp(-f) * (1.0 - near_upper * (1.0 - far))
    score_high = tf.exp(f - 1.0) * (far + near_upper * (1.0 - far))
    gap = tf.stop_gradient(tf.abs(score_low - score_high))
    t = float(temperature) / gap
    # softmax over the two scores: p_high = sigmoid(T·(s_1 − s_0))
    p_high = tf.sigmoid(t * (score_high - score_low))
    shift = _level_shift(float(temperature))
    return base - shift + (1.0 + 2.0 * shift) * p_high


@register_quantizer
class DAQQuantizer(Quantizer):
    """Distance-aware quantization: hard levels forward, DASR's gradient backward.

    Weights (`signed=True`): `w̃ = (w − μ)/σ_w`, `z = clip((w̃ − l)/δ, 0, R)`,
    `δ = (u − l)/R`, `R = 2^b − 1`, `ŵ = β·σ_w·(2·round(z) − R)/R`: 2^b levels, odd
    multiples of β·σ_w/R, no 0 (the reference's grid). μ, σ_w: the tensor's mean and
    standard deviation (the reference), constants to the gradient; with `per_channel`
    σ_w is per output channel and μ = 0 (σ_w the RMS): a filter's own mean is its
    response to a constant input, and the symmetric levels could not give it back
    (subtracting it: 17 % on the check below).
    `l`, `u` (init −3, 3) and β are trained; β is set on the first training call to
    `mean|w|/(σ_w·mean|q|)` (q the levels before β·σ_w — the reference's ratio of the
    float to the quantized layer output, here of the tensor or channel).
    Deviation: the reference's output scale is absolute; here it is in units of σ_w,
    so the levels follow the kernel's scale — a folded BN multiplies each channel by
    γ/σ every step, which an absolute β drops. Check: Fashion-MNIST demo CNN, W4A4, one
    epoch of QAT on 5000 images from a 78 % float model: 76 % test accuracy, 60 % with
    an absolute β.
    Activations (`signed=False`): `z = clip(x·R/u, 0, R)`, `x̂ = u·round(z)/R` (lower
    bound 0; TF's fake quant on [0, u]); u is trained and set on the first training
    batch to `3·std(x)`. The reference multiplies the layer output by one β; here the
    weights' β·σ_w and the activations' u carry it (the same functions).

    In training the forward is those hard values and the gradient is that of the
    soft rounding `distance_aware_soft_round(z, temperature, sigma)` — the reference's
    forward, whose soft value is the hard level (see that function). `∂/∂z` flows to x,
    l, u inside the clip; β gets `∂ŵ/∂β = σ_w·q`; above the clip `∂x̂/∂u = 1`.
    Defaults (the reference's): temperature γ = 2, kernel width σ = 1 for weights and
    2 for activations, no schedule. Kim, Lee & Ham 2021, "Distance-aware Quantization"
    (ICCV); github.com/cvlab-yonsei/DAQ.

    Example: 2 bits, l = −3, u = 3 (δ = 2, R = 3), β·σ_w = 1, normalized weights
    `w̃ = [-2.5, -0.4, 0.9, 4]` → z = [0.25, 1.3, 1.95, 3] → `ŵ = [-1, -1/3, 1/3, 1]`.

    Args:
      num_bits: weights 1 to 8, activations 2 to 8.
      signed: True: the weight form; False: the activation form (unsigned).
      per_channel: weights: σ_w, l, u, β per slice along `axis` (the reference: per
        tensor); activations: per tensor only.
      axis: the output-channel axis of the weights.
      temperature: γ of DASR (> 0).
      sigma: σ of DASR's kernel (> 0); None: 1 for weights, 2 for activations.

    Deployment: weights up to 7 bits are exact — the odd multiples of β·σ_w/R are a
    (b + 1)-bit symmetric narrow grid on ±β·σ_w (as an LSQ quantizer of b + 1 bits
    deploys): INT4 up to 3 bits, INT8 from 4 to 7; 8-bit weights need 9-bit integers,
    SIMULATION (the export's nearest-grid fallback only). Activations as PACT's: INT8 at
    8 bits, INT8_WIDENED below.
    """

    applies_to = ("weights", "activations")
    # Activations clip at 0: `QuantConfig` puts its `signed_activation_quantizer` on
    # outputs that may be negative instead.
    unsigned_only = True

    def __init__(self, num_bits=4, signed=True, per_channel=False, axis=-1,
                 temperature=2.0, sigma=None):
        owner = "DAQQuantizer"
        self.signed = bool(signed)
        self._num_bits = c.check_bits(owner, num_bits, range(1 if self.signed else 2, 9))
        self.per_channel = bool(per_channel)
        if self.per_channel and not self.signed:
            raise ValueError(f"{owner}: per_channel=True is not supported for activations "
                             "(signed=False); allowed: per_channel=False.")
        self.axis = c.check_axis(owner, axis)
        self.temperature = c.check_positive(owner, "temperature", temperature)
        self.sigma = None if sigma is None else c.check_positive(owner, "sigma", sigma)

    @property
    def kernel_width(self):
        """σ in use: `sigma`, else the reference's 1 (weights) or 2 (activations)."""
        if self.sigma is not None:
            return self.sigma
        return 1.0 if self.signed else 2.0

    @property
    def top(self):
        """R = 2^b − 1, the highest level index."""
        return float(2 ** self._num_bits - 1)

    def build(self, tensor_shape, name, layer):
        flag = c.make_variable(layer, f"{name}_initialized", (), 0.0, False)
        if not self.signed:
            return {"upper": c.make_variable(layer, f"{name}_upper", (), 6.0, True,
                                             constraint=c.AtLeast(_MIN_UPPER)),
                    "initialized": flag}
        shape = ()
        if self.per_channel:
            shape = (c.channel_count("DAQQuantizer", tensor_shape, self.axis),)
        return {"lower": c.make_variable(layer, f"{name}_lower", shape, -3.0, True),
                "upper": c.make_variable(layer, f"{name}_upper", shape, 3.0, True),
                "scale": c.make_variable(layer, f"{name}_scale", shape, 1.0, True,
                                         constraint=c.AtLeast(_MIN_SCALE)),
                "initialized": flag}

    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.convert_to_tensor(inputs)
        if self.signed:
            return self._weights(x, training, weights)
        return self._activations(x, training, weights)

    # -- weights -------------------------------------------------------------------------

    def _levels(self, x, weights, axis):
        """(z before rounding, the levels q = (2·round(z) − R)/R, σ_w), shaped as x."""
        axes = c.reduce_axes(x, axis)
        frozen = tf.stop_gradient(x)
        # Per channel μ = 0: a filter's own mean is its response to a constant input,
        # which the symmetric levels could not give back.
        mean = tf.reduce_mean(frozen, axis=axes, keepdims=True) if axis is None else 0.0
        spread = tf.reduce_mean(tf.square(frozen - mean), axis=axes, keepdims=True)
        std = tf.maximum(tf.sqrt(spread), _MIN_SCALE)
        lower = c.per_channel(weights["lower"], x, axis)
        upper = c.per_channel(weights["upper"], x, axis)
        step = tf.maximum(upper - lower, _MIN_WIDTH) / self.top
        z = tf.clip_by_value(((x - mean) / std - lower) / step, 0.0, self.top)
        q = (2.0 * tf.round(z) - self.top) / self.top
        return z, q, std

    def _initialize_scale(self, x, weights, axis):
        _, q, std = self._levels(x, weights, axis)
        axes = c.reduce_axes(x, axis)
        ratio = (tf.reduce_mean(tf.abs(x), axis=axes)
                 / tf.reduce_mean(tf.abs(q) * std, axis=axes))
        weights["scale"].assign(tf.reshape(tf.maximum(ratio, _MIN_SCALE),
                                           tf.shape(weights["scale"])))

    def _weights(self, x, training, weights):
        axis = self.axis % x.shape.rank if self.per_channel else None
        if training:
            c.run_once(weights["initialized"],
                       lambda: self._initialize_scale(tf.stop_gradient(x), weights, axis))
        z, q, std = self._levels(x, weights, axis)
        scale = c.per_channel(tf.convert_to_tensor(weights["scale"]), x, axis) * std
        value = tf.stop_gradient(scale * q)  # every gradient comes from the surrogate
        exact = self._num_bits < 8
        if exact:
            # The odd multiples of β·σ_w/R on the (b + 1)-bit narrow grid of ±β·σ_w: TF's
            # fake quant leaves them where they are and shows the converter the grid.
            limit = tf.stop_gradient(tf.reshape(scale, tf.shape(weights["scale"])))
            on_grid = c.uniform_quantize(value, -limit, limit, self._num_bits + 1, True, axis,
                                         training)
        if not training:
            if not exact:
                return value
            return deployable_weight_grid(on_grid, limit / self.top, self._num_bits + 1,
                                          axis)
        soft = distance_aware_soft_round(z, self.temperature, self.kernel_width)
        surrogate = scale * (2.0 * soft - self.top) / self.top
        hard = value + tf.stop_gradient(on_grid - value) if exact else value
        return hard + (surrogate - tf.stop_gradient(surrogate))

    # -- activations ---------------------------------------------------------------------

    def _activations(self, x, training, weights):
        if training:
            first_call = tf.convert_to_tensor(weights["initialized"]) < 0.5
            c.run_once(weights["initialized"], lambda: weights["upper"].assign(
                tf.maximum(3.0 * tf.math.reduce_std(tf.stop_gradient(x)), _MIN_UPPER)))
            agree_across_replicas(first_call, [weights["upper"]])
        upper = tf.convert_to_tensor(weights["upper"])
        if not training:
            return export_activation_fake_quant(x, 0.0, upper, self._num_bits, False)
        hard = tf.stop_gradient(c.uniform_quantize(x, tf.zeros_like(upper), upper,
                                                   self._num_bits, False, None, True))
        z = tf.clip_by_value(x * self.top / upper, 0.0, self.top)
        soft = distance_aware_soft_round(z, self.temperature, self.kernel_width)
        surrogate = upper * soft / self.top
        return hard + (surrogate - tf.stop_gradient(surrogate))

    def deployment(self):
        if not self.signed:
            return activation_deployment(self._num_bits)
        if self._num_bits == 8:
            return Deployment.SIMULATION  # 256 odd levels: 9-bit integers
        return c.weight_deployment(self._num_bits + 1)

    def get_config(self):
        return {"num_bits": self._num_bits, "signed": self.signed,
                "per_channel": self.per_channel, "axis": self.axis,
                "temperature": self.temperature, "sigma": self.sigma}
