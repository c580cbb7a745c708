"""`FloatActivations`: the activation "quantizer" of weight-only quantization."""

from tfquant.quantizers.base import Deployment, Quantizer, register_quantizer


@register_quantizer
class FloatActivations(Quantizer):
    """Leaves the activation in float: `y = x` (no variables, gradient 1).

    `QuantConfig(activation_quantizer=None)` puts it on every activation, so the model
    simulates weight quantization only (weight-only QAT or PTQ); LiteRT's hybrid kernels
    quantize such activations at run time (`export_tflite(..., activations="dynamic")`,
    TFLite's dynamic range quantization, Jacob et al. 2018 for the int8 arithmetic).

    Example: `x = [-1.3, 0.25]` → `[-1.3, 0.25]`.

    Deployment: FLOAT (a float32 tensor; a full-integer export takes its range from the
    representative data).
    """

    applies_to = ("activations",)
    bits_changeable = False

    def __call__(self, inputs, training, weights=None, **kwargs):
        return inputs

    @property
    def num_bits(self):
        return 32  # float32

    def deployment(self):
        return Deployment.FLOAT
