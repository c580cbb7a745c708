"""PACT: activations clipped at a learned α, then quantized uniformly (Choi et al. 2018)."""

import tensorflow as tf

from tfquant.quantizers import _common as c
from tfquant.quantizers.base import Quantizer, register_quantizer
from tfquant.quantizers.export_graph import activation_deployment


@register_quantizer
class PACTQuantizer(Quantizer):
    """Parameterized clipping activation: `y = quantize_k(clip(x, 0, α))`.

    `s = α / (2^k − 1)`, `y = s·round(clip(x, 0, α)/s)` (TF's fake quant on `[0, α]`,
    rounding half up). The clip level α is learned: `∂y/∂α = 1` where `x ≥ α`, else 0
    (the op's range gradient: the upstream sum over the clipped elements), and
    `∂y/∂x = 1` on `[0, α]` (straight through). In training the quantizer adds the
    L2 penalty `λ·Σα²` with `layer.add_loss` (PACT regularizes α with the weight decay of
    the network; default λ = 1e-4, a usual ImageNet weight decay — set `regularization`
    to your optimizer's weight decay, or 0 to turn it off). α is kept ≥ 1e-3 by a
    constraint the optimizer applies after each step.
    Choi et al. 2018, "PACT: Parameterized Clipping Activation for Quantized Neural
    Networks". Init α = 10 (the paper; Distiller's example uses 8). With
    `init_percentile=p`, α is instead set on the first training batch to the p-th
    percentile of that batch's activations (per channel with `per_channel`): a short
    fine-tuning cannot move α from 10 to the few-units range of post-BN activations,
    and a 2-bit grid on [0, 10] rounds almost every activation to 0.

    Example: 2 bits, α = 3 (s = 1): `x = [-1, 0.4, 1.6, 5]` → `[0, 0, 2, 3]`; with
    upstream gradient 1 everywhere `∂L/∂α = 1` (only 5 ≥ α).

    Args:
      num_bits: 2 to 8.
      alpha_init: initial α (> 0).
      per_channel: one α per channel of the last axis (else one scalar).
      regularization: λ of the penalty `λ·Σα²` (≥ 0).
      init_percentile: None (α starts at `alpha_init`) or p in (0, 100]: α starts at the
        p-th percentile of the first training batch (`alpha_init` until then).

    Deployment: INT8 at 8 bits; below, INT8_WIDENED (LiteRT runs the activation at 8 bits
    on the same range; under `tfquant.quantizers.base.exporting()` the inference graph
    emits that 8-bit fake quant).
      stochastic_rounding: in training add `U(−½, ½)·s` before rounding (unbiased).
    """

    applies_to = ("activations",)
    # Clips at 0: `QuantConfig` puts its `signed_activation_quantizer` on outputs that
    # may be negative (a residual branch before its Add, the logits) instead.
    unsigned_only = True

    def __init__(self, num_bits=8, alpha_init=10.0, per_channel=False, regularization=1e-4,
                 stochastic_rounding=False, init_percentile=None):
        self._num_bits = c.check_bits("PACTQuantizer", num_bits, range(2, 9))
        self.alpha_init = c.check_positive("PACTQuantizer", "alpha_init", alpha_init)
        self.per_channel = bool(per_channel)
        self.regularization = c.check_positive("PACTQuantizer", "regularization",
                                               regularization, allow_zero=True)
        self.stochastic_rounding = bool(stochastic_rounding)
        self.init_percentile = (None if init_percentile is None
                                else c.check_percentile("PACTQuantizer", init_percentile))
        self._builds = c.PerBuild()

    def build(self, tensor_shape, name, layer):
        shape = (c.channel_count("PACTQuantizer", tensor_shape, -1),) if self.per_channel else ()
        alpha = c.make_variable(layer, f"{name}_alpha", shape, self.alpha_init, True,
                                constraint=c.AtLeast(1e-3))
        self._builds.put(alpha, layer=layer)
        variables = {"alpha": alpha}
        if self.init_percentile is not None:
            variables["initialized"] = c.make_variable(layer, f"{name}_initialized", (), 0.0,
                                                       False)
        return variables

    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.convert_to_tensor(inputs)
        axis = -1 if self.per_channel else None
        if training and self.init_percentile is not None:
            c.run_once(weights["initialized"], lambda: weights["alpha"].assign(tf.reshape(
                tf.maximum(c.percentile(tf.stop_gradient(x), self.init_percentile, axis), 1e-3),
                tf.shape(weights["alpha"]))))
        alpha = tf.convert_to_tensor(weights["alpha"])
        if training:
            if self.stochastic_rounding:
                x = c.add_rounding_noise(x, alpha / (2 ** self._num_bits - 1), axis)
            if self.regularization > 0.0:
                layer = self._builds.get(weights["alpha"], "layer")
                if layer is not None:
                    layer.add_loss(self.regularization * tf.reduce_sum(tf.square(alpha)))
        return c.uniform_quantize(x, tf.zeros_like(alpha), alpha, self._num_bits, False, axis,
                                  training, activation=True)

    def deployment(self):
        return activation_deployment(self._num_bits)

    def get_config(self):
        return {"num_bits": self._num_bits, "alpha_init": self.alpha_init,
                "per_channel": self.per_channel, "regularization": self.regularization,
                "stochastic_rounding": self.stochastic_rounding,
                "init_percentile": self.init_percentile}
