"""Layers that are a Dense under another name, quantized as that Dense (a FULLY_CONNECTED
with per-channel int8 weights and RESHAPEs around it):

- `EinsumDense` whose equation is a Dense over the input's last axes (the projections of
  attention and transformer MLPs: `abc,cd->abd`, `abc,cde->abde`, `abcd,cde->abe`), with
  the contracted axes flattened before it and the new axes unflattened after it;
- `TimeDistributed(Dense)`, a Dense on the last axis.
"""

import dataclasses
import math

import keras
import numpy as np
from keras import ops
from keras.src.ops import numpy as _np

from tfquant.keras.layers.activations import NON_NEGATIVE_ACTIVATIONS
from tfquant.keras.layers.convolution import KernelHandler, quantized_convolution
from tfquant.keras.layers.registry import register_layer_handler
from tfquant.keras.quantized_convolution import activation_name


@dataclasses.dataclass
class DenseForm:
    """An einsum `free+contracted, contracted+new -> free+new`: a Dense of
    prod(contracted) → prod(new) units on the input with its contracted axes flattened."""

    contracted_shape: tuple
    new_shape: tuple

    def dense_weights(self, kernel, bias):
        """The Dense kernel `[prod(contracted), prod(new)]` and bias `[prod(new)]`
        (EinsumDense's bias covers a suffix of the new axes; broadcast over the rest)."""
        units = math.prod(self.new_shape)
        weights = [np.reshape(kernel, (math.prod(self.contracted_shape), units))]
        if bias is not None:
            weights.append(np.reshape(np.zeros(self.new_shape, np.float32) + bias, (units,)))
        return weights


def dense_form(layer):
    """The `DenseForm` of an EinsumDense, or None when its equation is not a Dense."""
    equation = layer.equation.replace(" ", "")
    inputs, rest = equation.split(",")
    kernel, output = rest.split("->")
    if inputs.startswith("...") != output.startswith("..."):
        return None
    inputs, output = inputs.removeprefix("..."), output.removeprefix("...")
    contracted = "".join(c for c in kernel if c in inputs and c not in output)
    new = "".join(c for c in kernel if c not in inputs)
    free = inputs[:len(inputs) - len(contracted)]
    if not contracted or kernel != contracted + new or inputs != free + contracted \
            or output != free + new:
        return None
    if layer.bias is not None and len(layer.bias.shape) > len(new):
        return None  # a bias over an axis the Dense does not produce
    shape = tuple(int(d) for d in layer.kernel.shape)
    return DenseForm(shape[:len(contracted)], shape[len(contracted):])


class EinsumDenseHandler(KernelHandler):
    """An EinsumDense in Dense form (`dense_form`), without BN folding."""

    def unsupported_reason(self, layer):
        form = dense_form(layer)
        if form is None:
            return (f"equation {layer.equation!r}, which is not a Dense over the input's last "
                    "axes (free+contracted, contracted+new -> free+new)")
        shape = layer._inbound_nodes[0].input_tensors[0].shape
        reshaped = len(form.contracted_shape) > 1 or len(form.new_shape) > 1
        if reshaped and None in shape[1:]:
            return (f"an input of shape {tuple(shape)} with unknown axes, which the Dense form "
                    "must reshape (give keras.Input a fixed shape)")
        return None

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        form = dense_form(layer)
        x = args[0] if args else kwargs["inputs"]

        def make(layer):
            dense = keras.layers.Dense(
                math.prod(form.new_shape), activation=layer.activation,
                use_bias=layer.bias is not None, name=layer.name, dtype=layer.dtype_policy)
            wrapper = quantized_convolution(
                context, node, dense,
                output_quantizer=context.output_quantizer(node, activation_name(layer)))
            context.copy_weights(wrapper.layer, layer,
                                 lambda values: form.dense_weights(
                                     values[0], values[1] if len(values) > 1 else None))
            return wrapper

        free_shape = tuple(x.shape[1:len(x.shape) - len(form.contracted_shape)])
        if len(form.contracted_shape) > 1:
            x = _np.Reshape((-1,) + free_shape + (math.prod(form.contracted_shape),))(x)
        outputs = context.replacement(layer, make)(x)
        if len(form.new_shape) > 1:
            outputs = _np.Reshape((-1,) + free_shape + form.new_shape)(outputs)
        return outputs


class TimeDistributedHandler(KernelHandler):
    """TimeDistributed(Dense): a Dense on the last axis, which is the same function,
    quantized as one. With static inner dimensions it runs on the steps merged into the
    batch — RESHAPE, FULLY_CONNECTED, RESHAPE — rather than as a Dense on the whole
    sequence, for which the converter adds the shape arithmetic of a dynamic batch
    (SHAPE, GATHER, REDUCE_PROD, PACK, CONCATENATION); a ReLU/ReLU6 that follows then
    keeps its own quantizer (TFLite fuses none across a RESHAPE)."""

    def unsupported_reason(self, layer):
        if not isinstance(layer.layer, keras.layers.Dense):
            return (f"TimeDistributed over {type(layer.layer).__name__}; tfquant quantizes "
                    "TimeDistributed(Dense) (apply other layers to the merged batch and "
                    "time axes with Reshape, or keep this layer in float)")
        return None

    def output_activation(self, layer):
        return activation_name(layer.layer)

    def non_negative(self, layer, inputs_non_negative):
        return activation_name(layer.layer) in NON_NEGATIVE_ACTIVATIONS

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        inputs = args[0] if args else kwargs["inputs"]
        inner_shape = tuple(inputs.shape[1:-1])
        merge_steps = all(d is not None for d in inputs.shape[1:])
        own_activation = activation_name(layer.layer)
        fuse_next = (not merge_steps and own_activation == "linear"
                     and context.next_is_fused(node))

        def make(layer):
            config = layer.layer.get_config()
            config["name"] = layer.name
            wrapper = quantized_convolution(
                context, node, keras.layers.Dense.from_config(config),
                output_quantizer=(None if fuse_next
                                  else context.output_quantizer(node, own_activation)))
            context.copy_weights(wrapper.layer, layer.layer)
            return wrapper

        dense = context.replacement(layer, make)
        if not merge_steps:
            return dense(inputs)
        outputs = dense(ops.reshape(inputs, (-1, int(inputs.shape[-1]))))
        return ops.reshape(outputs, (-1,) + inner_shape + (int(outputs.shape[-1]),))


register_layer_handler(keras.layers.EinsumDense, EinsumDenseHandler())
register_layer_handler(keras.layers.TimeDistributed, TimeDistributedHandler())
