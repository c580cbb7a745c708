"""Dense and convolution layers: `QuantizedConvolution` wrappers with fake-quantized
kernels, a directly following BatchNormalization folded in, and a following ReLU/ReLU6
fused (one output quantizer, after it)."""

import keras

from tfquant.keras.layers.activations import (
    DECOMPOSED,
    NON_NEGATIVE_ACTIVATIONS,
    rebuild_decomposed,
)
from tfquant.keras.layers.registry import LayerHandler, register_layer_handler
from tfquant.keras.kernel_layout import kernel_kind
from tfquant.keras.quantized_convolution import (
    FUSABLE_ACTIVATIONS,
    QuantizedConvolution,
    activation_name,
)

_L = keras.layers


def batch_norm_to_fold(graph, node):
    """The BatchNormalization node that directly and only follows the Dense/convolution
    `node` and can be folded into it, or None."""
    layer = node.operation
    if graph.is_shared(layer) or activation_name(layer) != "linear":
        return None
    consumer = graph.sole_consumer(node)
    if consumer is None or not isinstance(consumer.operation, _L.BatchNormalization):
        return None
    batch_norm = consumer.operation
    if graph.is_shared(batch_norm):
        return None
    axis = batch_norm.axis
    axis = axis[0] if isinstance(axis, (list, tuple)) else axis
    if axis not in (-1, len(node.outputs[0].shape) - 1):
        return None
    return consumer


def _clone(layer):
    return layer.__class__.from_config(layer.get_config())


def _is_depthwise_grouped(layer):
    """A Conv1D/Conv2D with one group per input channel (ConvNeXt's depthwise
    convolutions): the same function as a DepthwiseConv1D/2D."""
    groups = getattr(layer, "groups", 1)
    return (groups > 1 and isinstance(layer, (_L.Conv1D, _L.Conv2D))
            and int(layer.kernel.shape[-2]) == 1)


def _input_channels(layer):
    return int(layer.kernel.shape[-2]) * int(getattr(layer, "groups", 1))


def _as_depthwise(layer):
    """The DepthwiseConv1D/2D equal to a grouped `layer` with one group per input channel,
    and a function mapping its weights to the depthwise layer's. The kernel
    `[..., 1, in·m]` becomes `[..., in, m]`: output channel `g·m + j` is multiplier `j`
    of input channel `g` in both."""
    config = layer.get_config()
    channels = _input_channels(layer)
    cls = _L.DepthwiseConv1D if isinstance(layer, _L.Conv1D) else _L.DepthwiseConv2D
    depthwise = cls(kernel_size=config["kernel_size"], strides=config["strides"],
                    padding=config["padding"], dilation_rate=config["dilation_rate"],
                    depth_multiplier=config["filters"] // channels,
                    activation=config["activation"], use_bias=config["use_bias"],
                    name=config["name"], dtype=layer.dtype_policy)

    def weights(values):
        kernel = values[0]
        return [kernel.reshape(kernel.shape[:-2] + (channels, kernel.shape[-1] // channels))
                ] + list(values[1:])

    return depthwise, weights


def quantized_convolution(context, node, float_layer, output_quantizer, batch_norm=None,
                          name=None):
    """A `QuantizedConvolution` around `float_layer` (a new Dense or convolution; the
    caller copies its weights) with the weight and activation quantizers the config gives
    the layer of `node` (a first or last layer's weights at `first_last_bits`)."""
    kind = kernel_kind(float_layer)
    activation = activation_name(float_layer)
    spec = context.config.layer_spec(
        node.operation, first_or_last_weights=context.graph.is_first_or_last(node))
    return QuantizedConvolution(
        float_layer,
        batch_norm=batch_norm,
        weight_quantizer=spec.weight_quantizer_for(-2 if kind == "transpose" else -1),
        output_quantizer=output_quantizer,
        intermediate_quantizer=spec.activation_quantizer_for() if kind == "separable" else None,
        pre_activation_quantizer=(spec.activation_quantizer_for()
                                  if activation not in FUSABLE_ACTIVATIONS else None),
        name=name or float_layer.name,
    )


class KernelHandler(LayerHandler):
    """Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D and the transposed
    convolutions (`channels_last`, no groups)."""

    quantizes_weights = True
    replaces_layer = True

    def unsupported_reason(self, layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return "data_format='channels_first'"
        if getattr(layer, "groups", 1) != 1 and not _is_depthwise_grouped(layer):
            return ("a grouped convolution (groups=1 and groups=input channels, a depthwise "
                    "convolution, are supported)")
        return None

    def output_activation(self, layer):
        return activation_name(layer)

    def non_negative(self, layer, inputs_non_negative):
        return activation_name(layer) in NON_NEGATIVE_ACTIVATIONS

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        bn_node = batch_norm_to_fold(context.graph, node)
        last_node = bn_node or node
        own_activation = activation_name(layer)
        fuse_next = own_activation == "linear" and context.next_is_fused(last_node)
        # A several-op activation (silu in EfficientNet's squeeze-excite convolutions):
        # the layer without it, then the activation op by op, a quantizer after each.
        decomposed = own_activation in DECOMPOSED

        def make(layer):
            if _is_depthwise_grouped(layer):
                float_layer, transform = _as_depthwise(layer)
            else:
                float_layer, transform = _clone(layer), None
            if decomposed:
                float_layer.activation = keras.activations.get("linear")
            wrapper = quantized_convolution(
                context, node, float_layer,
                output_quantizer=(None if fuse_next else context.output_quantizer(
                    last_node, "linear" if decomposed else own_activation)),
                batch_norm=_clone(bn_node.operation) if bn_node is not None else None)
            context.copy_weights(wrapper.layer, layer, transform)
            if bn_node is not None:
                context.copy_weights(wrapper.batch_norm, bn_node.operation)
                context.fold(bn_node, into=node)
            return wrapper

        outputs = context.replacement(layer, make)(*args, **kwargs)
        if decomposed:
            return rebuild_decomposed(context, node, outputs, own_activation)
        return outputs


for _cls in (_L.Dense, _L.Conv1D, _L.Conv2D, _L.Conv3D, _L.DepthwiseConv1D,
             _L.DepthwiseConv2D, _L.SeparableConv1D, _L.SeparableConv2D,
             _L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose):
    register_layer_handler(_cls, KernelHandler())
