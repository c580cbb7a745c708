"""`quantize_model`: a Keras model in, a QAT-ready copy out.

The copy is rebuilt node by node from the model's graph:
- Dense and convolution layers become `QuantizedConvolution` wrappers (fake-quantized
  kernels), with a directly following BatchNormalization folded in;
- the output of every layer that makes new values in the exported integer model (a
  convolution, Add, Concatenate, average pooling, an activation, ...) gets an activation
  quantizer, placed after a ReLU/ReLU6 that TFLite fuses into the convolution;
- layers that only move or select values (Reshape, Flatten, Dropout, max pooling, ...)
  pass through: their output keeps their input's quantization;
- every float model input gets an activation quantizer.

Nested models: a Functional or Sequential model used as a layer of the model (a backbone,
a block) is inlined first — its layers are called in its place, as if they had been
written in the outer model (`_inline_nested_models`), and then quantized like any other
layer, so a BatchNormalization at the start of a nested block still folds, first/last-layer
rules see through the nesting, and the exported flatbuffer has one flat graph. Inlined
layers keep their names; a name already taken in the outer model becomes
`<nested model name>_<layer name>`. A nested model that the config keeps in float
(`float_layers=["backbone"]`) is not inlined and stays one float layer. An explicit
`training=` argument on the nested model's call is not carried over (BatchNormalization
layers are folded; `tfquant.freeze_batch_norm` switches them to moving statistics).
Subclassed models — at the top or nested — have no graph to rebuild: they are refused
with the class name and the workaround.
"""

import inspect

import keras
from keras import KerasTensor
from keras.src.models.functional import Functional

from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.keras.tf_keras_models import keras3_model_and_config
from tfquant.keras.config import QuantConfig
from tfquant.keras.graph import ModelGraph, functional_view
from tfquant.keras.layers import handler_for


def _is_graph_model(layer):
    """A Functional or Sequential model (one whose graph can be inlined)."""
    return isinstance(layer, (Functional, keras.Sequential))


def _unsupported_reason(layer, handler):
    """Why `layer` cannot be quantized, or None when it can."""
    if isinstance(layer, keras.Model):
        if isinstance(layer, keras.Sequential) and getattr(layer, "_functional", None) is None:
            return ("an unbuilt nested Sequential model (start it with keras.Input(...) or "
                    "call build(input_shape))")
        return (f"a subclassed model ({type(layer).__name__}), which has no layer graph to "
                "quantize: rebuild it as a Functional model (keras.Input → layers → "
                "keras.Model(inputs, outputs)), or keep it in float")
    if handler is None:
        return "no quantized implementation"
    return handler.unsupported_reason(layer)


def _clone(layer):
    return layer.__class__.from_config(layer.get_config())


def _inlinable(layer, config):
    return (_is_graph_model(layer) and not config.is_float(layer)
            and _functional_view_or_none(layer) is not None)


# Modules whose layers are never traced: Keras's own layers are quantized by handlers or
# listed as unsupported (their calls use backend internals), and so are tfquant's.
_UNTRACED_MODULES = ("keras.src.layers.", "keras.layers.", "keras.src.models.", "tf_keras.",
                     "tfquant.")


def _traceable(layer, config):
    """A layer that no handler knows, not a model and not one of Keras's own layer
    classes (a user's layer, or a keras.applications helper such as Inception-ResNet's
    CustomScaleLayer): quantized through its `call`, as if its body had been written in
    the model."""
    return (isinstance(layer, keras.Layer) and not isinstance(layer, keras.Model)
            and handler_for(layer) is None and not config.is_float(layer)
            and not type(layer).__module__.startswith(_UNTRACED_MODULES))


def _traced_call(layer, args, kwargs, origins):
    """`layer.call` on symbolic tensors: its sublayers and `keras.ops` calls become nodes
    of the graph being built. `origins` records which layer each new operation came from.
    A weight the call reads outside a sublayer (`x * self.gamma`) would be a constant
    of the quantized model, neither trained nor saved: refused."""
    accepted = inspect.signature(layer.call).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    kwargs = {k: v for k, v in kwargs.items() if takes_any or k in accepted}
    inputs = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, KerasTensor)]
    try:
        outputs = layer.call(*args, **kwargs)
    except Exception as error:  # any failure of user code on symbolic tensors
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no tfquant handler and its "
            f"call could not be traced on symbolic tensors ({type(error).__name__}: "
            f"{error}). Register one with tfquant.register_layer_handler, or keep it in "
            f"float with QuantConfig(float_layers=[{layer.name!r}]).") from None
    stops = {id(t) for t in inputs}
    pending = [t for t in keras.tree.flatten(outputs) if isinstance(t, KerasTensor)]
    seen = set()
    while pending:
        tensor = pending.pop()
        if id(tensor) in stops or id(tensor) in seen or not hasattr(tensor, "_keras_history"):
            continue
        seen.add(id(tensor))
        operation, node_index, _ = tensor._keras_history
        node = operation._inbound_nodes[node_index]
        origins.setdefault(id(operation), layer)
        for value in keras.tree.flatten((node.arguments.args, node.arguments.kwargs)):
            if isinstance(value, keras.Variable):
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) reads its weight "
                    f"{value.path!r} directly in {type(operation).__name__} (not through a "
                    "sublayer), which a traced quantized model cannot carry. Register a "
                    "handler with tfquant.register_layer_handler, or keep the layer in "
                    f"float with QuantConfig(float_layers=[{layer.name!r}]).")
        pending.extend(node.input_tensors)
    return outputs


def _functional_view_or_none(model):
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model


def _inline_nested_models(model, config, origins):
    """`model` itself when no Functional/Sequential model and no traceable user layer is
    one of its layers; else a flat Functional copy in which every nested model is
    replaced by its own layers (recursively), with the weights copied, and every user
    layer by the sublayers and operations of its call (`_traced_call`; `origins` gets
    {id(operation): the user layer}). Layers of the copy are clones, so `model` is
    untouched; a nested model used twice contributes its layers once, shared."""
    if not any(_inlinable(layer, config) or _traceable(layer, config)
               for layer in model.layers):
        return model
    names = {layer.name for layer in model.layers if not _inlinable(layer, config)}
    clones = {}  # id(original layer) → clone
    pairs = []  # (clone, original) to copy weights

    def clone_of(layer, prefix):
        if id(layer) not in clones:
            layer_config = layer.get_config()
            name = layer.name
            if prefix is not None and name in names:
                base, name, index = f"{prefix}_{layer.name}", f"{prefix}_{layer.name}", 1
                while name in names:
                    name, index = f"{base}_{index}", index + 1
            names.add(name)
            layer_config["name"] = name
            clones[id(layer)] = layer.__class__.from_config(layer_config)
            pairs.append((clones[id(layer)], layer))
        return clones[id(layer)]

    def operation_for(prefix):
        def operation(layer):
            if _inlinable(layer, config):
                inner = _functional_view_or_none(layer)
                return lambda *args, **kwargs: inner._run_through_graph(
                    args[0] if args else kwargs["inputs"],
                    operation_fn=operation_for(layer.name))
            if _traceable(layer, config):
                return lambda *args, **kwargs: _traced_call(layer, args, kwargs, origins)
            return clone_of(layer, prefix)
        return operation

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name)
              for t in model.inputs]
    structured = keras.tree.pack_sequence_as(model._inputs_struct, inputs)
    outputs = model._run_through_graph(structured, operation_fn=operation_for(None))
    flat = keras.Model(structured, outputs, name=model.name)
    for clone, original in pairs:
        if getattr(original, "weights", None):  # keras.ops operations have none
            clone.set_weights(original.get_weights())
    return flat


def quantize_model(model, config=None):
    """Returns a QAT-ready copy of a Keras Sequential or Functional `model`.

    The copy is a Functional model with the same inputs, outputs and layer names (folded
    BatchNormalization layers disappear into the convolution before them); `model` is not
    modified. It trains with `fit` (fake quantization in the forward pass, straight-through
    gradients), evaluates with the numbers the exported integer model computes, and saves
    and loads as `.keras` once `tfquant` is imported.

    A tf_keras (Keras 2) Sequential or Functional model is rebuilt as Keras 3 first
    (`tfquant.keras.tf_keras_models.as_keras3`: same layers, names, graph and weights), so the
    result is a Keras 3 model in either case: compile and fit it with Keras 3 (`keras`
    optimizers, losses and callbacks, `tfquant.callbacks`). TFMOT annotations are
    honoured as TFMOT does: when some layers are annotated
    (`tfmot.quantization.keras.quantize_annotate_layer`), only those are quantized,
    with the tfquant quantizers of their `QuantizeConfig` (others: tfquant's defaults);
    `quantize_annotate_model` annotates all.

    Args:
      model: a built Keras 3 or tf_keras Sequential or Functional model.
      config: a `tfquant.QuantConfig`; default int8 weights per channel and int8
        activations.

    Raises:
      ValueError: the model has layers tfquant cannot quantize (all of them are listed,
        with how to keep them in float), or is not a Sequential/Functional model.
    """
    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a tfquant.QuantConfig, got {type(config).__name__}.")
    # A tf_keras model (TFMOT annotations included) continues as its Keras 3 rebuild.
    model, config = keras3_model_and_config(model, config)
    if not isinstance(model, keras.Model):
        raise ValueError(f"quantize_model takes a keras.Model, got {type(model).__name__}.")
    origins = {}  # id(operation) → the user layer whose call it was traced from
    graph = ModelGraph(_inline_nested_models(functional_view(model), config, origins))
    _check_supported(graph, config, origins)
    return RebuildContext(graph, config).run(model.name)


def _check_supported(graph, config, origins):
    problems, names = [], []
    for node in graph.nodes:
        layer = node.operation
        if config.is_float(layer):
            continue
        handler = handler_for(layer)
        reason = _unsupported_reason(layer, handler)
        if reason is None and len(node.outputs) != 1 and not (
                handler.passes_through(layer) or handler.quantizes_several_outputs(layer)):
            reason = "more than one output"
        if reason is not None:
            what = (type(layer).__name__ if isinstance(layer, keras.Layer)
                    else f"the operation keras.ops.{type(layer).__name__}")
            owner = origins.get(id(layer))
            if owner is not None:
                # A traced user layer: name it, and the first operation of its call that
                # has no quantized form (float_layers takes the user layer's name).
                if owner.name in names:
                    continue
                entry = (f"  {owner.name!r} ({type(owner).__name__}): its call uses "
                         f"{layer.name!r} ({what}): {reason}")
                layer = owner
            else:
                entry = f"  {layer.name!r} ({what}): {reason}"
            if entry not in problems:
                problems.append(entry)
                names.append(layer.name)
    if problems:
        raise ValueError(
            "tfquant cannot quantize these layers:\n" + "\n".join(problems) + "\n"
            "Keep them in float with quantize_model(model, config=tfquant.QuantConfig("
            f"float_layers={names!r})) — entries may be layer names, regular expressions "
            "or layer classes; the rest of the model is still quantized. A layer class of "
            "your own can be taught with tfquant.register_layer_handler."
        )


class RebuildContext:
    """The quantized model being built: calls new layers on new tensors in the order of
    the original graph, asking each layer's handler (`tfquant.keras.layers`) for its
    replacement. Handlers use its public members."""

    def __init__(self, graph, config):
        self.graph = graph
        self.config = config
        self.tensors = {}  # id(original KerasTensor) → new tensor
        self.layers = {}  # id(original layer) → the layer that replaces it
        self.weight_sources = []  # (new layer, original layer, transform): weights to copy
        self.folded = {}  # id(BN node) → the node of the convolution it folds into
        self.names = {layer.name for layer in graph.model.layers}

    def unique_name(self, base):
        """`base`, or `base_N` when a layer of the model already has that name."""
        name, index = base, 1
        while name in self.names:
            name, index = f"{base}_{index}", index + 1
        self.names.add(name)
        return name

    def run(self, name):
        inputs, outputs = self.graph.replay(self._rebuild, self.tensors, self._quantize_input)
        self._rename_clashing_operations(outputs)
        quantized = self.graph.as_model(inputs, outputs, name)
        for new_layer, old_layer, transform in self.weight_sources:
            values = old_layer.get_weights()
            new_layer.set_weights(transform(values) if transform is not None else values)
        return quantized

    def _rename_clashing_operations(self, outputs):
        """Gives a fresh name to every `keras.ops` operation a handler made whose
        automatic name another operation of the new graph already has. Keras names new
        operations from a per-process counter, which a model loaded from a file did not
        advance: its layer "reshape" and a new `keras.ops.reshape` are both "reshape",
        and a Functional model refuses two operations with one name."""
        operations, seen, pending = [], set(), list(outputs)
        while pending:
            tensor = pending.pop()
            operation, node_index, _ = tensor._keras_history
            if id(operation) in seen:
                continue
            seen.add(id(operation))
            operations.append(operation)
            pending.extend(operation._inbound_nodes[node_index].input_tensors)
        by_name = {}
        for operation in operations:
            by_name.setdefault(operation.name, []).append(operation)
        self.names.update(by_name)
        replacements = {id(layer) for layer in self.layers.values()}
        for group in by_name.values():
            if len(group) < 2:
                continue
            # Layers and the operations that replace the original graph's keep their names.
            keepers = [op for op in group
                       if isinstance(op, keras.Layer) or id(op) in replacements]
            keeper = keepers[0] if keepers else group[0]
            for operation in group:
                if operation is not keeper and not isinstance(operation, keras.Layer):
                    operation.name = self.unique_name(operation.name)

    def _quantize_input(self, tensor, new_input):
        if "float" not in str(tensor.dtype):
            return new_input
        consumers = self.graph.consumers.get(id(tensor), [])
        if consumers and all(self.config.is_float(n.operation) for n in consumers):
            return new_input
        spec = self.config.layer_spec(None)
        layer = ActivationFakeQuant(spec.activation_quantizer_for(),
                                    name=self.unique_name(f"{new_input.name}_quant"))
        return layer(new_input)

    def _rebuild(self, node):
        layer = node.operation
        if id(node) in self.folded:
            # A folded BN: its output is the convolution's.
            conv_node = self.folded[id(node)]
            self.tensors[id(node.outputs[0])] = self.tensors[id(conv_node.outputs[0])]
            return
        args, kwargs = node.arguments.fill_in(self.tensors)
        if self.config.is_float(layer):
            outputs = self.replacement(layer)(*args, **kwargs)
            if self._feeds_quantized_layer(node):
                outputs = self.quantize_output(node, outputs)
        else:
            outputs = handler_for(layer).rebuild(self, node, args, kwargs)
        flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for old, new in zip(node.outputs, flat):
            self.tensors[id(old)] = new

    # -- for the handlers -----------------------------------------------------------------

    def replacement(self, layer, make=None):
        """The layer that replaces `layer` in the quantized model, made once (a layer
        used at several nodes stays shared): `make(layer)`, or by default a clone from
        its config with its weights copied."""
        if id(layer) not in self.layers:
            if make is None:
                new_layer = _clone(layer)
                if getattr(layer, "weights", None):
                    self.copy_weights(new_layer, layer)
            else:
                new_layer = make(layer)
            self.layers[id(layer)] = new_layer
        return self.layers[id(layer)]

    def wrapped(self, layer, wrap):
        """The replacement of `layer` that `wrap(clone)` makes around a clone of it (a
        tfquant wrapper; the clone gets `layer`'s weights), made once."""
        def make(layer):
            clone = _clone(layer)
            self.copy_weights(clone, layer)
            return wrap(clone)

        return self.replacement(layer, make)

    def copy_weights(self, target, source, transform=None):
        """Copies `source`'s weights into `target` once the quantized model is built,
        through `transform(list of arrays) → list of arrays` if given."""
        self.weight_sources.append((target, source, transform))

    def fold(self, batch_norm_node, into):
        """Records that `batch_norm_node` is folded into the node `into`: its output is
        that node's output."""
        self.folded[id(batch_norm_node)] = into

    def next_is_fused(self, node):
        """True when `node` is directly and only followed by a ReLU/ReLU6 that TFLite
        fuses into it: the output is then quantized once, after the activation."""
        consumer = self.graph.sole_consumer(node)
        if consumer is None:
            return False
        handler = handler_for(consumer.operation)
        return (handler is not None and handler.is_fused_relu(consumer.operation)
                and not self.config.is_float(consumer.operation)
                and not self.graph.is_shared(consumer.operation))

    def output_quantizer(self, node, activation=None):
        """The quantizer of `node`'s output, which ends with `activation` (a name)."""
        spec = self.config.layer_spec(
            node.operation, first_or_last_activations=self.graph.output_at_first_last_bits(node))
        shortcut = self.config.shortcut_bits if self.graph.feeds_add(node) else None
        return spec.activation_quantizer_for(activation, shortcut,
                                             non_negative=self.graph.is_non_negative(node))

    def quantize_output(self, node, outputs, activation=None):
        """`outputs` (of `node`) through a new `ActivationFakeQuant`."""
        layer = node.operation
        quantizer = ActivationFakeQuant(self.output_quantizer(node, activation),
                                        name=self.unique_name(f"{layer.name}_quant"),
                                        dtype=getattr(layer, "dtype_policy", None))
        return quantizer(outputs)

    def _feeds_quantized_layer(self, node):
        """A float layer's output is quantized where a quantized layer reads it."""
        if len(node.outputs) != 1:
            return False
        consumers = self.graph.consumers.get(id(node.outputs[0]), [])
        return any(not self.config.is_float(c.operation) for c in consumers)
