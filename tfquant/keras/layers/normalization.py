"""Normalization layers.

A BatchNormalization right after a Dense or convolution is folded into it
(`tfquant.keras.layers.convolution`); elsewhere it is a per-channel affine map, MUL and
ADD in TFLite, with a quantizer after each (`QuantizedBatchNormalization`).

LayerNormalization and RMSNormalization are rebuilt from `keras.ops` with a quantizer
after every op, so the flatbuffer has only integer ops and every int8 (or int16, with
16-bit activations) tensor has its range from the Keras model:

    mean = MEAN(x);  c = x − mean;  var = MEAN(c·c);  r = RSQRT(var + ε)
    y = (c·r)·γ + β                    (RMSNormalization: c = x, no β)

Keras's own LayerNormalization computes `x·r + (−mean·r)`, whose NEG stays float in the
converter (and fails it under int16x8); this order has no NEG. γ and β stay trainable
(`ChannelAffine`).
"""

import keras
from keras.src.ops import math as _math
from keras.src.ops import numpy as _np

from tfquant.keras.layers.batch_normalization import QuantizedBatchNormalization
from tfquant.keras.layers.channel_affine import ChannelAffine
from tfquant.keras.layers.registry import LayerHandler, register_layer_handler

class BatchNormalizationHandler(LayerHandler):
    """A BatchNormalization that no layer before it absorbs: `QuantizedBatchNormalization`
    (MUL, quantizer, ADD), its output quantized."""

    replaces_layer = True

    def unsupported_reason(self, layer):
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        rank = len(layer._inbound_nodes[0].input_tensors[0].shape)
        if axis % rank != rank - 1:
            return f"normalization over axis {layer.axis!r} (the last axis is supported)"
        return None

    def applies_activation(self, layer):
        return True

    def rebuild(self, context, node, args, kwargs):
        quantizer = context.config.layer_spec(node.operation).activation_quantizer_for()
        wrapper = context.wrapped(node.operation,
                                  lambda clone: QuantizedBatchNormalization(clone, quantizer))
        return context.quantize_output(node, wrapper(*args, **kwargs))


register_layer_handler(keras.layers.BatchNormalization, BatchNormalizationHandler())


def _axes(layer):
    axis = layer.axis
    return list(axis) if isinstance(axis, (list, tuple)) else [axis]


class LayerNormalizationHandler(LayerHandler):
    """LayerNormalization and RMSNormalization over the last axis."""

    replaces_layer = True

    def unsupported_reason(self, layer):
        rank = len(layer._inbound_nodes[0].input_tensors[0].shape)
        if [a % rank for a in _axes(layer)] != [rank - 1]:
            return (f"normalization over axis {layer.axis!r}; tfquant quantizes it over the "
                    "last axis only")
        return None

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        x = args[0] if args else kwargs["inputs"]
        rms = isinstance(layer, keras.layers.RMSNormalization)

        def quantized(tensor):
            return context.quantize_output(node, tensor)

        if rms:
            centered = x
        else:
            mean = quantized(_np.Mean(axis=-1, keepdims=True)(x))
            centered = quantized(_np.Subtract()(x, mean))
        variance = quantized(_np.Mean(axis=-1, keepdims=True)(
            quantized(_np.Multiply()(centered, centered))))
        inverse = quantized(_math.Rsqrt()(quantized(_np.Add()(variance, layer.epsilon))))
        outputs = _np.Multiply()(centered, inverse)
        # γ and β as ChannelAffine layers, made once for a layer used at several nodes.
        scale, shift = context.replacement(layer, lambda _: self._affine_layers(context, layer))
        for affine in (scale, shift):
            if affine is not None:
                outputs = affine(quantized(outputs))
        return quantized(outputs)

    @staticmethod
    def _affine_layers(context, layer):
        def affine(operation, values, suffix):
            values = keras.ops.convert_to_numpy(values)
            return ChannelAffine(operation, values.shape, values,
                                 name=context.unique_name(f"{layer.name}_{suffix}"))

        if isinstance(layer, keras.layers.RMSNormalization):
            return affine("multiply", layer.scale, "gamma"), None
        return (affine("multiply", layer.gamma, "gamma") if layer.scale else None,
                affine("add", layer.beta, "beta") if layer.center else None)


register_layer_handler(keras.layers.LayerNormalization, LayerNormalizationHandler())
register_layer_handler(keras.layers.RMSNormalization, LayerNormalizationHandler())
