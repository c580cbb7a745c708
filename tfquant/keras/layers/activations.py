"""Activation layers. A ReLU/ReLU6 right after a convolution, Add, Subtract or Multiply is
fused into that op by TFLite (one quantizer, after the activation); sigmoid, softmax,
tanh and log-softmax outputs take the fixed ranges of TFLite's int8 kernels.

Activations that TFLite computes with one op (GELU, HARD_SWISH, LOGISTIC, TANH,
LEAKY_RELU, PRELU, SOFTMAX) get one output quantizer. Those it computes with several
are rebuilt from `keras.ops` with a quantizer after each op (`DECOMPOSED`), so every
int8 tensor of the flatbuffer has its range from the Keras model:

    silu/swish:    x · σ(x)                      LOGISTIC, MUL
    hard_sigmoid:  relu6(x + 3) · 1/6            ADD (fused RELU6), MUL
    softplus:      log(exp(x) + 1)               EXP, ADD, LOG
    elu:           relu(x) + (exp(min(x, 0)) − 1)   MINIMUM, EXP, ADD, ADD
                   (TFLite leaves its own ELU float)
"""

import keras
from keras.src.ops import nn as _nn
from keras.src.ops import numpy as _np

from tfquant.keras.layers.registry import LayerHandler, register_layer_handler
from tfquant.keras.quantized_convolution import activation_name

_L = keras.layers


def _silu(x, quantized):
    return _np.Multiply()(x, quantized(_nn.Sigmoid()(x), "sigmoid"))


def _hard_sigmoid(x, quantized):
    return _np.Multiply()(quantized(_nn.Relu6()(_np.Add()(x, 3.0))), 1.0 / 6.0)


def _softplus(x, quantized):
    return _np.Log()(quantized(_np.Add()(quantized(_np.Exp()(x)), 1.0)))


def _elu(x, quantized):
    negative = quantized(_np.Add()(quantized(_np.Exp()(quantized(_np.Minimum()(x, 0.0)))),
                                   -1.0))
    return _np.Add()(quantized(_nn.Relu()(x)), negative)


# Activation name → a function(x, quantized) building it from keras.ops, where
# `quantized(tensor, activation=None)` quantizes an intermediate tensor.
DECOMPOSED = {"silu": _silu, "swish": _silu, "hard_sigmoid": _hard_sigmoid,
              "softplus": _softplus, "elu": _elu}


def rebuild_decomposed(context, node, x, activation):
    """`activation` of `x` from `DECOMPOSED`, quantized after every op (the output too)."""
    def quantized(tensor, name=None):
        return context.quantize_output(node, tensor, name)

    return quantized(DECOMPOSED[activation](x, quantized))

# Activations whose output is never negative.
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid")


# Activations TFLite computes with one int8 op (besides the fusable relu/relu6).
SINGLE_OP = ("linear", "relu", "relu6", "sigmoid", "softmax", "tanh", "gelu", "hard_silu",
             "hard_swish", "leaky_relu", "log_softmax", "exponential")


class ActivationHandler(LayerHandler):
    """`keras.layers.Activation` and the activation layers (ReLU, Softmax, ...)."""

    def unsupported_reason(self, layer):
        if isinstance(layer, _L.ELU) and layer.alpha != 1.0:
            return (f"ELU(alpha={layer.alpha}): TFLite's int8 ELU stays float, and tfquant "
                    "rebuilds alpha=1 only")
        name = self.output_activation(layer)
        if name is None or name in SINGLE_OP or name in DECOMPOSED:
            return None
        return (f"activation {name!r}, which TFLite computes with several ops that tfquant "
                "does not quantize one by one; supported: "
                + ", ".join(SINGLE_OP + tuple(DECOMPOSED)))

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

    def keeps_layer(self, layer):
        return self.output_activation(layer) not in DECOMPOSED and not (
            isinstance(layer, _L.ELU) and layer.alpha == 1.0)

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        name = "elu" if isinstance(layer, _L.ELU) and layer.alpha == 1.0 else \
            self.output_activation(layer)
        if name in DECOMPOSED:
            return rebuild_decomposed(context, node, args[0] if args else kwargs["inputs"],
                                      name)
        return super().rebuild(context, node, args, kwargs)

    def is_fused_relu(self, layer):
        if type(layer) is _L.ReLU:
            return (layer.negative_slope == 0 and layer.threshold == 0
                    and layer.max_value in (None, 6, 6.0))
        if type(layer) is _L.Activation:
            return activation_name(layer) in ("relu", "relu6")
        return False


for _cls in (_L.ReLU, _L.LeakyReLU, _L.ELU, _L.Softmax, _L.Activation, _L.PReLU):
    register_layer_handler(_cls, ActivationHandler())
