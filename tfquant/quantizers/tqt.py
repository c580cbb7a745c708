"""TQT: trained power-of-2 quantization thresholds (Jain et al. 2020)."""

import math

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import register_quantizer
from tfquant.quantizers.lsq import LearnedRangeQuantizer

_MIN_THRESHOLD = 1e-8


@register_quantizer
class TQTQuantizer(LearnedRangeQuantizer):
    """Trained quantization thresholds with power-of-2 scales.

    `s = 2^ceil(log2 t) / 2^(b−1)` (signed; `/2^b` unsigned), `x̂ = s·round(clip(x/s,
    −Qn, Qp))`. The trained variable is `log2 t`; `ceil` passes the gradient straight
    through, so `∂x̂/∂log2t = s·ln2·(round(x/s) − x/s)` inside, `s·ln2·(−Qn or Qp)` where
    clipped (through the op's learned range gradient). Init on the first training call:
    `log2 t = log2 max|x|` for weights, `log2` of the `init_percentile` percentile of
    |x| for activations. Grids as LSQ: signed/weights `Qn = Qp = 2^(b−1) − 1` (narrow
    range, TFLite's weights; the paper uses `Qn = 2^(b−1)`), unsigned `Qn = 0,
    Qp = 2^b − 1`. Jain et al. 2020, "Trained Quantization Thresholds for Accurate and
    Efficient Fixed-Point Inference of Deep Neural Networks".

    Example: 4 bits signed, `log2 t = 0.3` → `s = 2/8 = 0.25`:
    `x = [0.3, -0.9, 2.5]` → `[0.25, -1.0, 1.75]` (Qp = 7).

    Args:
      num_bits: 2 to 8.
      signed, per_channel, axis, kind, stochastic_rounding: as `LSQQuantizer`.
      init_percentile: percentile of |x| (in (0, 100]) that sets the activation
        threshold on the first batch; 100 is the max. Weights always use the max.
    """

    _KEY = "log2_threshold"

    def __init__(self, num_bits=8, signed=True, per_channel=False, axis=-1, kind=None,
                 stochastic_rounding=False, init_percentile=99.99):
        super().__init__(num_bits, signed, per_channel, axis, kind, stochastic_rounding)
        self.init_percentile = c.check_percentile("TQTQuantizer", init_percentile)

    def _divisor(self, kind):
        b = self._num_bits
        return float(2 ** (b - 1) if kind == "weights" or self.signed else 2 ** b)

    def _make_variables(self, layer, name, shape, kind):
        default = math.log2(6.0)  # before initialization: threshold 8
        return {"log2_threshold": c.make_variable(layer, f"{name}_log2_threshold", shape,
                                                  default, True)}

    def _initialize(self, x, weights, kind, axis):
        magnitude = tf.abs(x)
        axes = c.reduce_axes(x, axis)
        if kind == "weights" or self.init_percentile >= 100.0:
            threshold = tf.reduce_max(magnitude, axis=axes)
        else:
            threshold = c.percentile(magnitude, self.init_percentile, axis)
        log2_t = tf.math.log(tf.maximum(threshold, _MIN_THRESHOLD)) / math.log(2.0)
        weights["log2_threshold"].assign(tf.reshape(log2_t, tf.shape(weights[self._KEY])))

    def _step(self, weights, kind, training):
        log2_t = tf.convert_to_tensor(weights["log2_threshold"])
        if training:
            exponent = c.straight_through(log2_t, tf.math.ceil)
        else:
            exponent = tf.math.ceil(log2_t)
        return tf.pow(2.0, exponent) / self._divisor(kind)

    def _range(self, x, weights, kind, axis, training):
        qn, qp, _ = self._grid(kind)
        step = self._step(weights, kind, training)
        return -float(qn) * step, float(qp) * step

    def get_config(self):
        config = super().get_config()
        config["init_percentile"] = self.init_percentile
        return config
