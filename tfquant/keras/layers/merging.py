"""Merging layers (Add, Multiply, Concatenate, ...): each output is a new integer tensor.
TFLite's ADD, SUB and MUL take a fused ReLU/ReLU6."""

import keras

from tfquant.keras.layers.registry import QuantizedOutput, register_layer_handler

_L = keras.layers

for _cls in (_L.Add, _L.Multiply):
    register_layer_handler(_cls, QuantizedOutput(order_preserving=True, takes_fused_relu=True))
register_layer_handler(_L.Subtract, QuantizedOutput(takes_fused_relu=True))
for _cls in (_L.Average, _L.Maximum, _L.Minimum, _L.Concatenate):
    register_layer_handler(_cls, QuantizedOutput(order_preserving=True))
