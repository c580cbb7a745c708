"""Activation layers. A ReLU/ReLU6 right after a convolution, Add, Subtract or Multiply is
fused into that op by TFLite (one quantizer, after the activation); sigmoid, softmax and
tanh outputs take the fixed ranges of TFLite's int8 kernels."""

import keras

from tfquant.keras.layers.registry import LayerHandler, register_layer_handler
from tfquant.keras.quantized_convolution import activation_name

_L = keras.layers

# Activations whose output is never negative.
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid")


class ActivationHandler(LayerHandler):
    """`keras.layers.Activation` and the activation layers (ReLU, Softmax, ...)."""

    def output_activation(self, layer):
        if isinstance(layer, _L.Softmax):
            return "softmax"
        if isinstance(layer, _L.Activation):
            return activation_name(layer)
        return None

    def non_negative(self, layer, inputs_non_negative):
        if isinstance(layer, _L.Softmax):
            return True
        if isinstance(layer, _L.ReLU):
            return layer.negative_slope == 0 and layer.threshold >= 0
        return self.output_activation(layer) in NON_NEGATIVE_ACTIVATIONS

    def applies_activation(self, layer):
        return True

    def is_fused_relu(self, layer):
        if type(layer) is _L.ReLU:
            return (layer.negative_slope == 0 and layer.threshold == 0
                    and layer.max_value in (None, 6, 6.0))
        if type(layer) is _L.Activation:
            return activation_name(layer) in ("relu", "relu6")
        return False


for _cls in (_L.ReLU, _L.LeakyReLU, _L.ELU, _L.Softmax, _L.Activation, _L.PReLU):
    register_layer_handler(_cls, ActivationHandler())
