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

import keras
from keras.src.models.functional import Functional

from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.keras.compat import keras3_model_and_config
from tfquant.keras.config import QuantConfig
from tfquant.keras.quantized_convolution import (
    FUSABLE_ACTIVATIONS,
    QuantizedConvolution,
    activation_name,
    kernel_kind,
)

_L = keras.layers

# Layers whose integer output has their input's scale and zero point.
PASS_THROUGH_LAYERS = (
    _L.InputLayer, _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D,
    _L.GaussianNoise, _L.GaussianDropout, _L.AlphaDropout, _L.Flatten, _L.Reshape, _L.Permute,
    _L.Identity, _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.GlobalMaxPooling1D,
    _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D, _L.ZeroPadding1D, _L.ZeroPadding2D,
    _L.ZeroPadding3D, _L.Cropping1D, _L.Cropping2D, _L.Cropping3D,
)

# Layers that compute new values: their output gets an activation quantizer.
OUTPUT_QUANTIZED_LAYERS = (
    _L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum, _L.Concatenate,
    _L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D,
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
    _L.ReLU, _L.LeakyReLU, _L.ELU, _L.Softmax, _L.Activation, _L.BatchNormalization,
    _L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D,
)


# Layers that apply an activation or a per-channel affine map: a Dense before them that
# writes the model output is still "the last layer".
_ACTIVATION_LIKE_LAYERS = (_L.ReLU, _L.LeakyReLU, _L.ELU, _L.Softmax, _L.Activation,
                           _L.BatchNormalization)

# Activations whose output is never negative.
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid")

# Layers whose output is non-negative when all their inputs are.
_ORDER_PRESERVING_LAYERS = (
    _L.Add, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum, _L.Concatenate,
    _L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D,
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
    _L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D,
)

# Layers whose TFLite op takes a fused ReLU/ReLU6 (besides the convolutions).
FUSED_ACTIVATION_LAYERS = (_L.Add, _L.Subtract, _L.Multiply)


def _is_pass_through(layer):
    if isinstance(layer, (_L.UpSampling2D,)) and layer.interpolation != "nearest":
        return False
    if isinstance(layer, (_L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D)):
        return True
    return isinstance(layer, PASS_THROUGH_LAYERS)


def _is_fusable_activation(layer):
    """A ReLU/ReLU6 that TFLite fuses into the convolution before it."""
    if type(layer) is _L.ReLU:
        return (layer.negative_slope == 0 and layer.threshold == 0
                and layer.max_value in (None, 6, 6.0))
    if type(layer) is _L.Activation:
        return activation_name(layer) in ("relu", "relu6")
    return False


def _last_activation(layer):
    """The activation a layer ends with ("softmax", "sigmoid", ...), or None."""
    if isinstance(layer, _L.Softmax):
        return "softmax"
    if isinstance(layer, _L.Activation) or kernel_kind(layer) is not None:
        return activation_name(layer)
    return None


def _is_graph_model(layer):
    """A Functional or Sequential model (one whose graph can be inlined)."""
    return isinstance(layer, (Functional, keras.Sequential))


def _unsupported_reason(layer):
    """Why `layer` cannot be quantized, or None when it can."""
    if isinstance(layer, keras.Model):
        if isinstance(layer, keras.Sequential) and getattr(layer, "_functional", None) is None:
            return ("an unbuilt nested Sequential model (start it with keras.Input(...) or "
                    "call build(input_shape))")
        return (f"a subclassed model ({type(layer).__name__}), which has no layer graph to "
                "quantize: rebuild it as a Functional model (keras.Input → layers → "
                "keras.Model(inputs, outputs)), or keep it in float")
    kind = kernel_kind(layer)
    if kind is not None:
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return "data_format='channels_first'"
        if getattr(layer, "groups", 1) != 1:
            return "a grouped convolution"
        return None
    if _is_pass_through(layer) or isinstance(layer, OUTPUT_QUANTIZED_LAYERS):
        return None
    return "no quantized implementation"


class _Graph:
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
            producer, node_index, _ = tensor._keras_history
            if isinstance(producer, _L.InputLayer):
                return True
            if _is_pass_through(producer) and self.reads_model_input(
                    producer._inbound_nodes[node_index]):
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
                if (_is_pass_through(layer) or isinstance(layer, _ACTIVATION_LIKE_LAYERS)) \
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
                if kernel_kind(layer) is not None and self.writes_model_output(consumer):
                    return True
                if _is_pass_through(layer) and self.feeds_last_layer(consumer):
                    return True
        return False

    def output_at_first_last_bits(self, node):
        return self.writes_model_output(node) or self.feeds_last_layer(node)

    def is_non_negative(self, node):
        """True when `node`'s output is never negative (after a ReLU, a sigmoid, ...),
        so that an unsigned activation quantizer (PACT, DoReFa) fits it."""
        layer = node.operation
        if isinstance(layer, _L.Softmax) or (
                type(layer) is _L.ReLU and layer.negative_slope == 0 and layer.threshold >= 0):
            return True
        if isinstance(layer, _L.Activation) or kernel_kind(layer) is not None:
            return activation_name(layer) in NON_NEGATIVE_ACTIVATIONS
        if _is_pass_through(layer) or isinstance(layer, _ORDER_PRESERVING_LAYERS):
            producers = []
            for tensor in node.input_tensors:
                producer, node_index, _ = tensor._keras_history
                if isinstance(producer, _L.InputLayer):
                    return False
                producers.append(producer._inbound_nodes[node_index])
            return bool(producers) and all(self.is_non_negative(p) for p in producers)
        return False

    def feeds_add(self, node):
        """True when `node`'s output is an input of an Add (a residual shortcut)."""
        return any(isinstance(consumer.operation, _L.Add)
                   for tensor in node.outputs
                   for consumer in self.consumers.get(id(tensor), []))


def _functional_view(model):
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


def _clone(layer):
    return layer.__class__.from_config(layer.get_config())


def _inlinable(layer, config):
    return (_is_graph_model(layer) and not config.is_float(layer)
            and _functional_view_or_none(layer) is not None)


def _functional_view_or_none(model):
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model


def _inline_nested_models(model, config):
    """`model` itself when no Functional/Sequential model is one of its layers; else a
    flat Functional copy in which every nested model is replaced by its own layers
    (recursively), with the weights copied. Layers of the copy are clones, so `model`
    is untouched; a nested model used twice contributes its layers once, shared."""
    if not any(_inlinable(layer, config) for layer in model.layers):
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
            return clone_of(layer, prefix)
        return operation

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name)
              for t in model.inputs]
    structured = keras.tree.pack_sequence_as(model._inputs_struct, inputs)
    outputs = model._run_through_graph(structured, operation_fn=operation_for(None))
    flat = keras.Model(structured, outputs, name=model.name)
    for clone, original in pairs:
        clone.set_weights(original.get_weights())
    return flat


def _batch_norm_to_fold(graph, node, layer):
    """The BatchNormalization node that directly and only follows `node`, if foldable."""
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


def quantize_model(model, config=None):
    """Returns a QAT-ready copy of a Keras Sequential or Functional `model`.

    The copy is a Functional model with the same inputs, outputs and layer names (folded
    BatchNormalization layers disappear into the convolution before them); `model` is not
    modified. It trains with `fit` (fake quantization in the forward pass, straight-through
    gradients), evaluates with the numbers the exported integer model computes, and saves
    and loads as `.keras` once `tfquant` is imported.

    A tf_keras (Keras 2) Sequential or Functional model is rebuilt as Keras 3 first
    (`tfquant.keras.compat.as_keras3`: same layers, names, graph and weights), so the
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
    graph = _Graph(_inline_nested_models(_functional_view(model), config))
    _check_supported(graph, config)
    return _Rebuilder(graph, config).run(model.name)


def _check_supported(graph, config):
    problems = []
    for node in graph.nodes:
        layer = node.operation
        if config.is_float(layer):
            continue
        reason = _unsupported_reason(layer)
        if reason is None and len(node.outputs) != 1 and not _is_pass_through(layer):
            reason = "more than one output"
        if reason is not None:
            entry = f"  {layer.name!r} ({type(layer).__name__}): {reason}"
            if entry not in problems:
                problems.append(entry)
    if problems:
        names = [line.split("'")[1] for line in problems]
        raise ValueError(
            "tfquant cannot quantize these layers:\n" + "\n".join(problems) + "\n"
            "Keep them in float with quantize_model(model, config=tfquant.QuantConfig("
            f"float_layers={names!r})) — entries may be layer names, regular expressions "
            "or layer classes; the rest of the model is still quantized."
        )


class _Rebuilder:
    """Calls new layers on new tensors in the order of the original graph."""

    def __init__(self, graph, config):
        self.graph = graph
        self.config = config
        self.tensors = {}  # id(original KerasTensor) → new tensor
        self.layers = {}  # id(original layer) → the layer that replaces it
        self.weight_sources = []  # (new layer, original layer) pairs to copy weights
        self.folded = {}  # id(BN node) → the node of the convolution it folds into
        self.names = {layer.name for layer in graph.model.layers}

    def unique_name(self, base):
        name, index = base, 1
        while name in self.names:
            name, index = f"{base}_{index}", index + 1
        self.names.add(name)
        return name

    def run(self, name):
        model = self.graph.model
        inputs = []
        for tensor in model.inputs:
            new_input = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                    name=tensor.name)
            inputs.append(new_input)
            self.tensors[id(tensor)] = self._quantize_input(tensor, new_input)
        for node in self.graph.nodes:
            self._rebuild(node)
        outputs = [self.tensors[id(t)] for t in model.outputs]
        outputs = outputs[0] if len(outputs) == 1 and not isinstance(model.output, list) else outputs
        quantized = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name)
        for new_layer, old_layer in self.weight_sources:
            new_layer.set_weights(old_layer.get_weights())
        return quantized

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
            outputs = self._layer_for(layer, _clone)(*args, **kwargs)
            if self._feeds_quantized_layer(node):
                outputs = self._quantize_output(node, outputs)
        elif kernel_kind(layer) is not None:
            outputs = self._rebuild_convolution(node, args, kwargs)
        elif _is_pass_through(layer):
            outputs = self._layer_for(layer, _clone)(*args, **kwargs)
        else:
            outputs = self._layer_for(layer, _clone)(*args, **kwargs)
            if not (isinstance(layer, FUSED_ACTIVATION_LAYERS) and self._next_is_fused(node)):
                outputs = self._quantize_output(node, outputs)
        flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for old, new in zip(node.outputs, flat):
            self.tensors[id(old)] = new

    def _next_is_fused(self, node):
        """True when `node` is directly and only followed by a ReLU/ReLU6 that TFLite
        fuses into it: the output is then quantized once, after the activation."""
        consumer = self.graph.sole_consumer(node)
        return (consumer is not None and _is_fusable_activation(consumer.operation)
                and not self.config.is_float(consumer.operation)
                and not self.graph.is_shared(consumer.operation))

    def _layer_for(self, layer, make):
        """The replacement of `layer`, made once (shared layers stay shared)."""
        if id(layer) not in self.layers:
            new_layer = make(layer)
            self.layers[id(layer)] = new_layer
            if layer.weights:
                self.weight_sources.append((new_layer, layer))
        return self.layers[id(layer)]

    def _output_quantizer(self, node, activation):
        """The quantizer of `node`'s output, which ends with `activation`."""
        spec = self.config.layer_spec(
            node.operation, first_or_last_activations=self.graph.output_at_first_last_bits(node))
        shortcut = self.config.shortcut_bits if self.graph.feeds_add(node) else None
        return spec.activation_quantizer_for(activation, shortcut,
                                             non_negative=self.graph.is_non_negative(node))

    def _quantize_output(self, node, outputs):
        layer = node.operation
        quantizer = ActivationFakeQuant(self._output_quantizer(node, _last_activation(layer)),
                                        name=self.unique_name(f"{layer.name}_quant"),
                                        dtype=layer.dtype_policy)
        return quantizer(outputs)

    def _feeds_quantized_layer(self, node):
        """A float layer's output is quantized where a quantized layer reads it."""
        if len(node.outputs) != 1:
            return False
        consumers = self.graph.consumers.get(id(node.outputs[0]), [])
        return any(not self.config.is_float(c.operation) for c in consumers)

    def _rebuild_convolution(self, node, args, kwargs):
        layer = node.operation
        bn_node = _batch_norm_to_fold(self.graph, node, layer)
        last_node = bn_node or node
        fuse_next = activation_name(layer) == "linear" and self._next_is_fused(last_node)
        if id(layer) in self.layers:
            wrapper = self.layers[id(layer)]
        else:
            kind = kernel_kind(layer)
            axis = -2 if kind == "transpose" else -1
            own_activation = activation_name(layer)
            spec = self.config.layer_spec(
                layer, first_or_last_weights=self.graph.is_first_or_last(node))
            wrapper = QuantizedConvolution(
                _clone(layer),
                batch_norm=_clone(bn_node.operation) if bn_node is not None else None,
                weight_quantizer=spec.weight_quantizer_for(axis),
                output_quantizer=(None if fuse_next else
                                  self._output_quantizer(last_node, own_activation)),
                intermediate_quantizer=(spec.activation_quantizer_for()
                                        if kind == "separable" else None),
                pre_activation_quantizer=(spec.activation_quantizer_for()
                                          if own_activation not in FUSABLE_ACTIVATIONS else None),
                name=layer.name,
            )
            self.layers[id(layer)] = wrapper
            self.weight_sources.append((wrapper.layer, layer))
            if bn_node is not None:
                self.weight_sources.append((wrapper.batch_norm, bn_node.operation))
                self.folded[id(bn_node)] = node
        return wrapper(*args, **kwargs)
