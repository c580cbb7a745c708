"""`ModelGraph`: the nodes of a Functional model in execution order, with their consumers,
and the questions `quantize_model` and the PTQ transformations ask about them (first or
last layer, non-negative output, ...), answered through the layer registry."""

import keras
from keras.src.models.functional import Functional

from tfquant.keras.layers import handler_for


def functional_view(model):
    """The Functional model behind a Sequential or Functional `model`; a clear error for
    an unbuilt Sequential or a subclassed model."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"Sequential model {model.name!r} is not built: start it with keras.Input(...) "
                "or call model.build(input_shape) before quantize_model."
            )
        return functional
    if isinstance(model, Functional):
        return model
    raise ValueError(
        f"quantize_model takes a Keras Sequential or Functional model; {model.name!r} is a "
        f"subclassed model ({type(model).__name__}). Rebuild it as a Functional model "
        "(keras.Input → layers → keras.Model(inputs, outputs)) to quantize it."
    )


def passes_through(layer):
    """True when `layer`'s integer output keeps its input's quantization."""
    handler = handler_for(layer)
    return handler is not None and handler.passes_through(layer)


def has_kernel(layer):
    handler = handler_for(layer)
    return handler is not None and handler.has_kernel(layer)


def _producer_node(tensor):
    producer, node_index, _ = tensor._keras_history
    return producer, producer._inbound_nodes[node_index]


class ModelGraph:
    """The nodes of a Functional model in execution order, with their consumers."""

    def __init__(self, model):
        self.model = model
        self.nodes = []
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.operation is not None and not node.is_input:
                    self.nodes.append(node)
        self.consumers = {}  # id(KerasTensor) → consuming nodes
        for node in self.nodes:
            for tensor in node.input_tensors:
                self.consumers.setdefault(id(tensor), []).append(node)
        self.output_ids = {id(t) for t in model.outputs}
        self.node_count = {}
        for node in self.nodes:
            self.node_count[id(node.operation)] = self.node_count.get(id(node.operation), 0) + 1
        self._non_negative = None  # id(node) → bool, made on first use

    def replay(self, rebuild_node, tensors, new_input=None):
        """Replays the graph on new tensors: `keras.Input`s like the model's (each passed
        through `new_input(original, input)` when given), then `rebuild_node(node)` for
        every node in order, which reads its inputs from and writes its outputs to
        `tensors` ({id(original tensor): new tensor}). Returns (new inputs, new outputs);
        `as_model` makes them a model. The one replay of quantize_model and PTQ."""
        inputs = []
        for tensor in self.model.inputs:
            made = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor.name)
            inputs.append(made)
            tensors[id(tensor)] = made if new_input is None else new_input(tensor, made)
        for node in self.nodes:
            rebuild_node(node)
        return inputs, [tensors[id(t)] for t in self.model.outputs]

    def as_model(self, inputs, outputs, name):
        """A Functional model over `inputs` and `outputs` with this model's structure: a
        single input or output unwrapped, unless the model's output is a list."""
        if len(outputs) == 1 and not isinstance(self.model.output, list):
            outputs = outputs[0]
        return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name)

    def sole_consumer(self, node):
        """The only node that reads `node`'s single output, or None."""
        if len(node.outputs) != 1 or id(node.outputs[0]) in self.output_ids:
            return None
        consumers = self.consumers.get(id(node.outputs[0]), [])
        return consumers[0] if len(consumers) == 1 else None

    def is_shared(self, layer):
        return self.node_count.get(id(layer), 0) > 1

    def reads_model_input(self, node):
        """True when a model input reaches `node` through pass-through layers only."""
        for tensor in node.input_tensors:
            producer, producer_node = _producer_node(tensor)
            if isinstance(producer, keras.layers.InputLayer):
                return True
            if passes_through(producer) and self.reads_model_input(producer_node):
                return True
        return False

    def writes_model_output(self, node):
        """True when `node`'s output reaches a model output through layers that only
        pass values on or apply an activation (BN, ReLU, Softmax, Reshape, ...)."""
        for tensor in node.outputs:
            if id(tensor) in self.output_ids:
                return True
            for consumer in self.consumers.get(id(tensor), []):
                layer = consumer.operation
                handler = handler_for(layer)
                if handler is not None and (handler.passes_through(layer)
                                            or handler.applies_activation(layer)) \
                        and self.writes_model_output(consumer):
                    return True
        return False

    def is_first_or_last(self, node):
        return self.reads_model_input(node) or self.writes_model_output(node)

    def feeds_last_layer(self, node):
        """True when `node`'s output is read (through pass-through layers) by a Dense or
        convolution that writes a model output."""
        for tensor in node.outputs:
            for consumer in self.consumers.get(id(tensor), []):
                layer = consumer.operation
                if has_kernel(layer) and self.writes_model_output(consumer):
                    return True
                if passes_through(layer) and self.feeds_last_layer(consumer):
                    return True
        return False

    def output_at_first_last_bits(self, node):
        return self.writes_model_output(node) or self.feeds_last_layer(node)

    def is_non_negative(self, node):
        """True when `node`'s output is never negative (after a ReLU, a sigmoid, ...),
        so that an unsigned activation quantizer (PACT, DoReFa) fits it."""
        if self._non_negative is None:
            # One pass in execution order: every producer is decided before its consumers.
            self._non_negative = {}
            for each in self.nodes:
                self._non_negative[id(each)] = self._decide_non_negative(each)
        return self._non_negative.get(id(node), False)

    def _decide_non_negative(self, node):
        layer = node.operation
        handler = handler_for(layer)
        if handler is None:
            return False
        inputs_non_negative = bool(node.input_tensors)
        for tensor in node.input_tensors:
            producer, producer_node = _producer_node(tensor)
            if isinstance(producer, keras.layers.InputLayer) or \
                    not self._non_negative.get(id(producer_node), False):
                inputs_non_negative = False
        return handler.non_negative(layer, inputs_non_negative)

    def feeds_add(self, node):
        """True when `node`'s output is an input of an Add (a residual shortcut)."""
        return any(isinstance(consumer.operation, keras.layers.Add)
                   for tensor in node.outputs
                   for consumer in self.consumers.get(id(tensor), []))
