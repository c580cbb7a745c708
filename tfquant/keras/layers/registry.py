"""The layer registry: how `quantize_model` treats each class of layer or `keras.ops`
operation found in a model's graph.

Every family module of `tfquant.keras.layers` registers a `LayerHandler` for its
classes; `quantize_model` walks the graph and asks `handler_for(layer)` what to do with
each node. Users register handlers for their own layers with `register_layer_handler`
(see `PassThrough` and `QuantizedOutput` for the two common cases).
"""

import keras


class LayerHandler:
    """How `quantize_model` quantizes one class of layers (or `keras.ops` operations).

    The defaults describe a layer that computes new values and whose output gets an
    activation quantizer; subclasses override what differs. Two answers that hold for
    every layer of a handler are class attributes: `quantizes_weights` (the answer of
    `has_kernel`) and `replaces_layer` (the opposite of `keeps_layer`).
    """

    quantizes_weights = False
    replaces_layer = False

    def unsupported_reason(self, layer):
        """Why this `layer` cannot be quantized (a short phrase), or None."""
        return None

    def passes_through(self, layer):
        """True when the layer only moves or selects values (Reshape, max pooling): its
        integer output has its input's scale and zero point, and needs no quantizer."""
        return False

    def output_activation(self, layer):
        """The name of the activation the layer's output ends with ("sigmoid",
        "softmax", ...: some have fixed integer ranges in TFLite), or None."""
        return None

    def non_negative(self, layer, inputs_non_negative):
        """True when the output is never negative (`inputs_non_negative`: all of the
        layer's float inputs are never negative)."""
        return False

    def applies_activation(self, layer):
        """True for layers that only apply an activation or a per-channel affine map:
        a Dense or convolution before them that writes a model output is still a last
        layer (its weights take `first_last_bits`)."""
        return False

    def takes_fused_relu(self, layer):
        """True when TFLite fuses a ReLU/ReLU6 that follows this layer into its op, so
        its output is quantized once, after the activation."""
        return False

    def is_fused_relu(self, layer):
        """True when this layer is a ReLU/ReLU6 that TFLite fuses into the op before it."""
        return False

    def has_kernel(self, layer):
        """True for layers whose weights are quantized (Dense, convolutions)."""
        return self.quantizes_weights

    def quantizes_several_outputs(self, layer):
        """True when `rebuild` quantizes each output of a layer that has several (an LSTM
        with `return_state=True`); other layers with several outputs are refused unless
        they pass values through."""
        return False

    def keeps_layer(self, layer):
        """True when the quantized model holds a clone of the layer itself, which the
        export computes in integer between quantizers; False when `rebuild` replaces it
        with a tfquant layer (a clone left in a quantized model is then a float layer
        that the config kept)."""
        return not self.replaces_layer

    def rebuild(self, context, node, args, kwargs):
        """Calls the layer's replacement in the quantized model on the new `args`;
        returns its outputs. `context` is the rebuild in progress
        (`tfquant.keras.transform.RebuildContext`)."""
        outputs = context.replacement(node.operation)(*args, **kwargs)
        if self.takes_fused_relu(node.operation) and context.next_is_fused(node):
            return outputs
        return context.quantize_output(node, outputs, self.output_activation(node.operation))


class PassThrough(LayerHandler):
    """A layer that only moves, selects or drops values: no quantizer."""

    def passes_through(self, layer):
        return True

    def non_negative(self, layer, inputs_non_negative):
        return inputs_non_negative

    def rebuild(self, context, node, args, kwargs):
        return context.replacement(node.operation)(*args, **kwargs)


class QuantizedOutput(LayerHandler):
    """A layer that computes new values; its output gets an activation quantizer.

    Args:
      activation: the name of the activation its output ends with (fixed ranges), or a
        function of the layer that returns it.
      order_preserving: the output is non-negative when all its inputs are.
      applies_activation: see `LayerHandler.applies_activation`.
      takes_fused_relu: see `LayerHandler.takes_fused_relu`.
      non_negative: the output is never negative, whatever the inputs (abs, square).
    """

    def __init__(self, activation=None, order_preserving=False, applies_activation=False,
                 takes_fused_relu=False, non_negative=False):
        self._activation = activation
        self._non_negative = non_negative
        self._order_preserving = order_preserving
        self._applies_activation = applies_activation
        self._takes_fused_relu = takes_fused_relu

    def output_activation(self, layer):
        if callable(self._activation):
            return self._activation(layer)
        return self._activation

    def non_negative(self, layer, inputs_non_negative):
        return self._non_negative or (self._order_preserving and inputs_non_negative)

    def applies_activation(self, layer):
        return self._applies_activation

    def takes_fused_relu(self, layer):
        return self._takes_fused_relu


_HANDLERS = {}  # layer or operation class → LayerHandler


def register_layer_handler(layer_class, handler):
    """Tells `quantize_model` (and `tfquant.ptq.quantize`) how to quantize `layer_class`
    and its subclasses (unless a subclass has its own handler).

    Args:
      layer_class: a `keras.layers.Layer` or `keras.Operation` subclass.
      handler: a `LayerHandler`, e.g. `PassThrough()` for a layer that only moves values
        or `QuantizedOutput()` for one whose output TFLite computes as a new integer
        tensor.

    Example: `tfquant.register_layer_handler(MyScale, tfquant.QuantizedOutput())`.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.Operation)):
        raise ValueError(f"register_layer_handler takes a keras Layer or Operation class; "
                         f"got {layer_class!r}.")
    if not isinstance(handler, LayerHandler):
        raise ValueError(f"register_layer_handler takes a tfquant LayerHandler; got "
                         f"{type(handler).__name__}.")
    _HANDLERS[layer_class] = handler


def handler_for(layer):
    """The handler registered for `layer`'s class or its nearest base class, or None."""
    for cls in type(layer).__mro__:
        handler = _HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None
