"""Layers that scale and shift channels by constants: `Rescaling`, `Normalization` (the
preprocessing at the start of keras.applications models) and ConvNeXt's `LayerScale`.

Each becomes `x·a` and, with a shift, `+ b`: a TFLite MUL and ADD (there is no int8 DIV),
with a quantizer after each, so every int8 tensor of the flatbuffer has its range from
the Keras model. Scalars stay `keras.ops` constants (exact in int8); per-channel
operands become `ChannelAffine` layers, which quantize them as the flatbuffer stores
them (LayerScale's stays trainable)."""

import keras
import numpy as np
from keras.src.applications.convnext import LayerScale
from keras.src.ops import numpy as _np

from tfquant.keras.layers.channel_affine import ChannelAffine
from tfquant.keras.layers.registry import LayerHandler, register_layer_handler


def _constant(value):
    """A Python float for a scalar, else a float32 array (broadcast against the input
    as the layer broadcasts it)."""
    array = np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)
    return float(array.reshape(())) if array.size == 1 else array


def _is_zero(value):
    return np.all(np.asarray(value) == 0)


class AffineHandler(LayerHandler):
    """`Rescaling` (`x·scale + offset`) and `Normalization` (`(x − mean)/σ`)."""

    replaces_layer = True

    def unsupported_reason(self, layer):
        if isinstance(layer, keras.layers.Normalization) and layer.invert:
            return "Normalization(invert=True)"
        return None

    def scale_and_offset(self, layer):
        if isinstance(layer, keras.layers.Rescaling):
            return _constant(layer.scale), _constant(layer.offset)
        # Keras keeps mean and variance in the broadcast shape of the input.
        mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float64)
        variance = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float64)
        inverse = 1.0 / np.maximum(np.sqrt(variance), keras.backend.epsilon())
        return _constant(inverse), _constant(-mean * inverse)

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        x = args[0] if args else kwargs["inputs"]
        scale, offset = self.scale_and_offset(layer)
        scale_op, offset_op = context.replacement(layer, lambda _: (
            _operand_op(context, layer, "multiply", scale),
            None if _is_zero(offset) else _operand_op(context, layer, "add", offset)))
        outputs = context.quantize_output(node, scale_op(x))
        if offset_op is not None:
            outputs = context.quantize_output(node, offset_op(outputs))
        return outputs


def _operand_op(context, layer, operation, value):
    """A callable applying `operation` with the constant `value`: a `keras.ops` call for a
    scalar, a frozen `ChannelAffine` for an array."""
    if isinstance(value, float):
        op = _np.Multiply() if operation == "multiply" else _np.Add()
        return lambda x: op(x, value)
    return ChannelAffine(operation, value.shape, value, trainable_values=False,
                         name=context.unique_name(f"{layer.name}_{operation}"))


class LayerScaleHandler(LayerHandler):
    """ConvNeXt's `x·γ`: a trainable per-channel `ChannelAffine`."""

    replaces_layer = True

    def applies_activation(self, layer):
        return True

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation

        def make(layer):
            gamma = keras.ops.convert_to_numpy(layer.gamma)
            return ChannelAffine("multiply", gamma.shape, gamma,
                                 name=context.unique_name(f"{layer.name}_gamma"))

        x = args[0] if args else kwargs["x"]
        return context.quantize_output(node, context.replacement(layer, make)(x))


register_layer_handler(keras.layers.Rescaling, AffineHandler())
register_layer_handler(keras.layers.Normalization, AffineHandler())
register_layer_handler(LayerScale, LayerScaleHandler())
