"""Pooling. Max pooling selects values and local average pooling keeps its input's
quantization (TFLite's int8 AVERAGE_POOL_2D requires the output scale and zero point of
its input: the converter rejects anything else), so both pass through; global average
pooling is a MEAN, which rescales its output, so its output gets a quantizer."""

import keras

from tfquant.keras.layers.registry import PassThrough, QuantizedOutput, register_layer_handler

_L = keras.layers

for _cls in (_L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.GlobalMaxPooling1D,
             _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D, _L.AveragePooling1D,
             _L.AveragePooling2D, _L.AveragePooling3D):
    register_layer_handler(_cls, PassThrough())

for _cls in (_L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D):
    register_layer_handler(_cls, QuantizedOutput(order_preserving=True))
