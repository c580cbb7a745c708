"""Graph helpers shared by the post-training transformations: rebuilding a Functional
model with some layers replaced or dropped, reading and scaling kernels channel-wise,
and finding chains of layers joined by channel-wise positive-homogeneous layers."""

import dataclasses

import keras
import numpy as np

from tfquant.keras.graph import ModelGraph, functional_view
from tfquant.keras.kernel_layout import kernel_kind
from tfquant.keras.quantized_convolution import activation_name

_L = keras.layers


def graph_of(model):
    return ModelGraph(functional_view(model))


def clone_layer(layer, **changes):
    config = layer.get_config()
    config.update(changes)
    return layer.__class__.from_config(config)


def rebuild(model, replace=None, skip=(), name=None):
    """A new Functional model with `model`'s graph.

    replace: {id(old layer): (new layer, setter)}; `setter(new_layer)` runs once the new
      model is built (None: copy the old layer's weights).
    skip: ids of single-input layers to drop (their output is their input).
    Every other layer is cloned with its config and weights.
    """
    replace = replace or {}
    graph = graph_of(model)
    tensors, made, jobs = {}, {}, []

    def rebuild_node(node):
        layer = node.operation
        if id(layer) in skip:
            tensors[id(node.outputs[0])] = tensors[id(node.input_tensors[0])]
            return
        if id(layer) not in made:
            if id(layer) in replace:
                new_layer, setter = replace[id(layer)]
            else:
                new_layer = clone_layer(layer)
                setter = None
            made[id(layer)] = new_layer
            jobs.append((new_layer, layer, setter))
        args, kwargs = node.arguments.fill_in(tensors)
        outputs = made[id(layer)](*args, **kwargs)
        flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for old, new in zip(node.outputs, flat):
            tensors[id(old)] = new

    inputs, outputs = graph.replay(rebuild_node, tensors)
    result = graph.as_model(inputs, outputs, name or model.name)
    for new_layer, old_layer, setter in jobs:
        if setter is not None:
            setter(new_layer)
        elif getattr(old_layer, "weights", None):  # keras.ops operations have none
            new_layer.set_weights(old_layer.get_weights())
    return result


# -- kernels ------------------------------------------------------------------------------

def scalable_kind(layer):
    """"dense", "conv" or "depthwise" (multiplier 1) for layers whose channels the
    equalization methods may rescale; None otherwise."""
    kind = kernel_kind(layer)
    if kind == "depthwise" and int(layer.depth_multiplier) != 1:
        return None
    if kind in ("dense", "conv", "depthwise"):
        if getattr(layer, "groups", 1) != 1:
            return None
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None
        return kind
    return None


def get_kernel(layer):
    return np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float64)


def get_bias(layer):
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        return np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float64)
    return None


def set_kernel(layer, value):
    layer.kernel.assign(np.asarray(value, dtype=np.float32))


def set_bias(layer, value):
    layer.bias.assign(np.asarray(value, dtype=np.float32))


def _channel_view(kernel, kind, side):
    """`kernel` reshaped so that the channel axis of `side` ("out"/"in") is last, plus
    a function mapping the view back."""
    if kind == "depthwise":  # [..., C, 1]: one channel axis for both sides
        return kernel[..., 0], lambda v: v[..., None]
    if side == "out":
        return kernel, lambda v: v
    moved = np.moveaxis(kernel, -2, -1)
    return moved, lambda v: np.moveaxis(v, -1, -2)


def channel_ranges(layer, side):
    """max|w| per output (`side="out"`) or input (`side="in"`) channel."""
    view, _ = _channel_view(get_kernel(layer), scalable_kind(layer), side)
    return np.abs(view).reshape(-1, view.shape[-1]).max(axis=0)


def scale_channels(layer, factor, side):
    """Multiplies the output (and bias) or input channels of `layer` by `factor`."""
    kind = scalable_kind(layer)
    view, back = _channel_view(get_kernel(layer), kind, side)
    set_kernel(layer, back(view * factor))
    if side == "out":
        bias = get_bias(layer)
        if bias is not None:
            set_bias(layer, bias * factor)


def kernel_times_input(layer, values):
    """What a constant input `values` (one per input channel) adds to each output
    channel: Σ_{spatial, in} W·values (depthwise: per channel)."""
    return kernel_times(scalable_kind(layer), get_kernel(layer), values)


def kernel_times(kind, kernel, values):
    """`kernel_times_input` for a kernel array of layout `kind`."""
    if kind == "depthwise":
        return kernel[..., 0].reshape(-1, kernel.shape[-2]).sum(axis=0) * values
    if kind == "dense":
        return values @ kernel
    flat = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])
    return np.einsum("kio,i->o", flat, values)


# -- chains -------------------------------------------------------------------------------

@dataclasses.dataclass
class Pair:
    """`first` → `middle` layers (element-wise or per-channel, positively homogeneous)
    → `second`: scaling output channel i of `first` by 1/s and input channel i of
    `second` by s leaves the function unchanged."""

    first: object
    second: object
    middle: list
    activation: str  # "relu", "relu6" or "linear": what the chain applies between the two
    shift_invariant: bool  # a constant per-channel shift passes through `middle` unchanged
    mean_preserving: bool  # E[middle(x)] = middle'(E[x]) per channel (no max-pooling)


_MEAN_PRESERVING = (_L.Dropout, _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D,
                    _L.AveragePooling1D, _L.AveragePooling2D, _L.Identity)
_SHIFT_FREE = _MEAN_PRESERVING + (_L.MaxPooling1D, _L.MaxPooling2D,
                                  _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D)


def _middle_kind(layer):
    """"relu", "relu6", "linear" (shift-free pooling/dropout), "pad", or None."""
    if type(layer) is _L.ReLU:
        if layer.negative_slope == 0 and layer.threshold == 0:
            return "relu" if layer.max_value is None else (
                "relu6" if float(layer.max_value) == 6.0 else None)
        return None
    if type(layer) is _L.Activation:
        name = activation_name(layer)
        return name if name in ("relu", "relu6", "linear") else None
    if isinstance(layer, _SHIFT_FREE):
        return "linear"
    if isinstance(layer, (_L.ZeroPadding1D, _L.ZeroPadding2D)):
        return "pad"
    return None


def find_pairs(model, allow_relu6=False):
    """Every `Pair` of `model` in graph order. ReLU6 does not commute with scaling, so
    chains through ReLU6 are left out (turn ReLU6 into ReLU first) unless `allow_relu6`
    (for bias correction, which only needs the chain's mean)."""
    acts = ("linear", "relu", "relu6") if allow_relu6 else ("linear", "relu")
    graph = graph_of(model)
    pairs = []
    for node in graph.nodes:
        first = node.operation
        if scalable_kind(first) is None or graph.is_shared(first):
            continue
        own = activation_name(first)
        if own not in acts:
            continue
        activation = own
        middle, shift_invariant, mean_preserving = [], True, True
        current = node
        while True:
            consumer = graph.sole_consumer(current)
            if consumer is None or graph.is_shared(consumer.operation):
                break
            layer = consumer.operation
            if scalable_kind(layer) is not None:
                pairs.append(Pair(first, layer, middle, activation, shift_invariant,
                                  mean_preserving))
                break
            kind = _middle_kind(layer)
            if kind is None or (kind == "relu6" and not allow_relu6):
                break
            if kind in ("relu", "relu6"):
                activation = kind if activation != "relu6" else "relu6"
            if kind == "pad":
                shift_invariant = False
            if isinstance(layer, (_L.MaxPooling1D, _L.MaxPooling2D, _L.GlobalMaxPooling1D,
                                  _L.GlobalMaxPooling2D)):
                mean_preserving = False
            if kind in ("relu", "relu6") and middle and any(
                    not isinstance(m, (_L.ReLU, _L.Activation)) for m in middle):
                mean_preserving = False  # ReLU after pooling: the clipped mean no longer applies
            middle.append(layer)
            current = consumer
    return pairs


def pair_channels_match(pair):
    first = get_kernel(pair.first)
    second = get_kernel(pair.second)
    out_channels = first.shape[-2] if scalable_kind(pair.first) == "depthwise" else first.shape[-1]
    return out_channels == second.shape[-2]
