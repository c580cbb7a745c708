"""Pooling: max pooling selects values (pass-through), average pooling computes new ones
(TFLite's AVERAGE_POOL_2D and MEAN rescale their int8 output)."""

import keras

from tfquant.keras.layers.registry import PassThrough, QuantizedOutput, register_layer_handler

_L = keras.layers

for _cls in (_L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.GlobalMaxPooling1D,
             _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D):
    register_layer_handler(_cls, PassThrough())

for _cls in (_L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D,
             _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D):
    register_layer_handler(_cls, QuantizedOutput(order_preserving=True))
