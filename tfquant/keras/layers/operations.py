"""`keras.ops` calls in a Keras 3 functional graph (`x + 3.0`, `ops.sigmoid(x) * x`,
`ops.reshape`, ...): each is a node of the graph whose operation is a `keras.Operation`.
Those that only move values pass through; the others get an output quantizer, like the
layer that does the same. Constant operands (`x + 3.0`) are quantized by the TFLite
converter on their own range."""

from keras.src.ops import nn as _nn
from keras.src.ops import numpy as _np

from tfquant.keras.layers.activations import (
    DECOMPOSED,
    NON_NEGATIVE_ACTIVATIONS,
    rebuild_decomposed,
)
from tfquant.keras.layers.registry import (
    LayerHandler,
    PassThrough,
    QuantizedOutput,
    register_layer_handler,
)

for _cls in (_np.Reshape, _np.Transpose, _np.ExpandDims, _np.Squeeze, _np.Moveaxis,
             _np.Swapaxes, _np.GetItem, _np.BroadcastTo, _np.Tile, _np.Repeat):
    register_layer_handler(_cls, PassThrough())

for _cls in (_np.Add, _np.Multiply):
    register_layer_handler(_cls, QuantizedOutput(order_preserving=True, takes_fused_relu=True))
register_layer_handler(_np.Subtract, QuantizedOutput(takes_fused_relu=True))
for _cls in (_np.Maximum, _np.Minimum, _np.Mean, _np.Sum, _np.Concatenate):
    register_layer_handler(_cls, QuantizedOutput(order_preserving=True))
for _cls in (_np.Abs, _np.Absolute, _np.Square):
    register_layer_handler(_cls, QuantizedOutput(non_negative=True))
register_layer_handler(_np.Matmul, QuantizedOutput())


class DivideByConstantHandler(LayerHandler):
    """`x / c` with a constant `c` is `x · (1/c)` (TFLite has no int8 DIV)."""

    def rebuild(self, context, node, args, kwargs):
        divisor = args[1] if len(args) > 1 else None
        if not isinstance(divisor, (int, float)):
            raise ValueError(
                f"Operation {node.operation.name!r} (keras.ops.divide) divides by a tensor; "
                "TFLite has no int8 division. Keep it in float with "
                f"QuantConfig(float_layers=[{node.operation.name!r}]).")
        outputs = _np.Multiply()(args[0], 1.0 / float(divisor))
        return context.quantize_output(node, outputs)


for _cls in (_np.Divide, _np.TrueDivide):
    register_layer_handler(_cls, DivideByConstantHandler())


class OperationActivationHandler(LayerHandler):
    """`keras.ops` activations: `activation` names the TFLite kernel's fixed range."""

    def __init__(self, activation, fused_relu=False):
        self.activation = activation
        self.fused_relu = fused_relu

    def output_activation(self, layer):
        return self.activation

    def non_negative(self, layer, inputs_non_negative):
        return self.activation in NON_NEGATIVE_ACTIVATIONS

    def applies_activation(self, layer):
        return True

    def is_fused_relu(self, layer):
        return self.fused_relu

    def rebuild(self, context, node, args, kwargs):
        if self.activation in DECOMPOSED:
            return rebuild_decomposed(context, node, args[0] if args else kwargs["x"],
                                      self.activation)
        return super().rebuild(context, node, args, kwargs)


register_layer_handler(_nn.Relu, OperationActivationHandler("relu", fused_relu=True))
register_layer_handler(_nn.Relu6, OperationActivationHandler("relu6", fused_relu=True))
for _cls, _name in ((_nn.Sigmoid, "sigmoid"), (_nn.Softmax, "softmax"), (_np.Tanh, "tanh"),
                    (_nn.Silu, "silu"), (_nn.Gelu, "gelu"), (_nn.HardSigmoid, "hard_sigmoid"),
                    (_nn.HardSilu, "hard_silu"), (_nn.LeakyRelu, "leaky_relu"),
                    (_nn.Softplus, "softplus"), (_nn.LogSoftmax, "log_softmax")):
    register_layer_handler(_cls, OperationActivationHandler(_name))
