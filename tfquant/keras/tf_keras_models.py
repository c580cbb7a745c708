"""tf_keras (Keras 2) and TFMOT models brought to Keras 3 (docs/ARCHITECTURE.md §3.3).

tfquant's layers and `quantize_model` run on Keras 3. `as_keras3(model)` rebuilds a tf_keras
Sequential/Functional model (`TF_USE_LEGACY_KERAS=1`, `import tf_keras`) as a Keras 3
Functional model — the same layers by class and config, the same names, the same graph
(nested models stay nested, shared layers shared), the same weights — so `quantize_model`,
`ptq.quantize` and `export_tflite` take one code path for both flavors. TFMOT annotations
(`quantize_annotate_layer`, `quantize_annotate_model`) are unwrapped on the way and
returned, and `annotated_config` turns them into a `QuantConfig` with TFMOT's meaning.

tfquant quantizers also serve tf_keras directly inside a TFMOT `QuantizeConfig` (see
`tfquant.quantizers.base.register_with_tfmot`).
"""

import copy
import inspect
import re

import keras
import tensorflow as tf

from tfquant.keras.config import LayerRule
from tfquant.keras.graph import passes_through
from tfquant.quantizers.base import Quantizer




# TFMOT's wrappers: an annotation (before `quantize_apply`) and what `quantize_apply` makes.
_TFMOT_ANNOTATION = "QuantizeAnnotate"
_TFMOT_APPLIED = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")


def is_tf_keras(obj):
    """True for a tf_keras (Keras 2) layer or model."""
    return any(cls.__module__.startswith("tf_keras.") for cls in type(obj).__mro__)


def is_tfmot_quantized(model):
    """True for a tf_keras model that TFMOT's `quantize_apply` made (it has TFMOT's
    quantize wrappers)."""
    return is_tf_keras(model) and any(type(layer).__name__ in _TFMOT_APPLIED
                                      for layer in model.submodules)


def as_keras3(model, caller="quantize_model"):
    """`(keras3_model, annotations)`: `model` itself and None when it is not a tf_keras
    model; else its Keras 3 rebuild and the TFMOT annotations found in it — {layer name:
    the annotation's `QuantizeConfig` (None: TFMOT's default)}, None when nothing is
    annotated. `caller` names the function in error messages."""
    if not is_tf_keras(model):
        return model, None
    if is_tfmot_quantized(model):
        raise ValueError(
            f"{caller}: model {model.name!r} was made by TFMOT's quantize_apply (it has "
            "TFMOT quantize wrappers). Pass the model before quantize_apply — float, or "
            "annotated with quantize_annotate_layer/quantize_annotate_model — to "
            "tfquant.quantize_model instead; it honours the annotations.")
    annotations = {}
    rebuilt = _Keras3Rebuild(caller, annotations).model(model)
    return rebuilt, (annotations or None)


class _Keras3Rebuild:
    """Rebuilds tf_keras Functional/Sequential models as Keras 3 Functional models, node
    by node, layer by layer; a tf_keras layer used twice becomes one Keras 3 layer."""

    def __init__(self, caller, annotations):
        self.caller = caller
        self.annotations = annotations
        self.layers = {}  # id(tf_keras layer) → Keras 3 layer or model

    def model(self, model):
        if not getattr(model, "_is_graph_network", False):
            what = ("an unbuilt Sequential model (start it with tf_keras.Input(...) or call "
                    "build(input_shape))" if type(model).__name__ == "Sequential" else
                    f"a subclassed model ({type(model).__name__}), which has no layer graph")
            raise ValueError(
                f"{self.caller}: tf_keras model {model.name!r} is {what}; tfquant takes "
                "tf_keras Sequential and Functional models (tf_keras.Input → layers → "
                "tf_keras.Model(inputs, outputs)).")
        tensors = {}  # (id(tf_keras layer), node index, tensor index) → Keras 3 tensor
        for tensor in model.inputs:
            layer = tensor._keras_history.layer
            tensors[_history_key(tensor)] = keras.Input(
                batch_shape=tuple(tensor.shape), dtype=tensor.dtype.name, name=layer.name)
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input:
                    continue
                args, kwargs = _map_keras_tensors((node.call_args, node.call_kwargs), tensors)
                outputs = self.layer(node.layer)(*args, **kwargs)
                for old, new in zip(tf.nest.flatten(node.outputs), keras.tree.flatten(outputs)):
                    tensors[_history_key(old)] = new
        inputs = _map_keras_tensors(model._nested_inputs, tensors)
        outputs = _map_keras_tensors(model._nested_outputs, tensors)
        return keras.Model(inputs, outputs, name=model.name)

    def layer(self, layer):
        """The Keras 3 layer for tf_keras `layer`, made once, with its weights."""
        if id(layer) in self.layers:
            return self.layers[id(layer)]
        if type(layer).__name__ == _TFMOT_ANNOTATION:
            self.annotations[layer.layer.name] = (layer.layer, layer.quantize_config)
            new = self.layer(layer.layer)
        elif getattr(layer, "_is_graph_network", False) or isinstance(layer, _tf_keras_model()):
            new = self.model(layer)
        else:
            new = _Keras3Layer(layer, self.caller)
        self.layers[id(layer)] = new
        return new


def _tf_keras_model():
    import tf_keras

    return tf_keras.Model


def _history_key(tensor):
    layer, node_index, tensor_index = tensor._keras_history
    return id(layer), node_index, tensor_index


def _map_keras_tensors(structure, tensors):
    """`structure` with every tf_keras KerasTensor replaced by its Keras 3 tensor."""
    def convert(item):
        return tensors[_history_key(item)] if hasattr(item, "_keras_history") else item

    return tf.nest.map_structure(convert, structure)


class _Keras3Layer:
    """A Keras 3 copy of one built-in tf_keras layer: made from its config on the first
    call (so it is built), and given the tf_keras layer's weights then."""

    def __init__(self, layer, caller):
        cls = getattr(keras.layers, type(layer).__name__, None)
        builtin = type(layer).__module__.startswith("tf_keras.src.layers")
        where = f"{caller}: tf_keras layer {layer.name!r} ({type(layer).__name__})"
        if not builtin or not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise ValueError(
                f"{where} has no Keras 3 counterpart tfquant can rebuild (it rebuilds the "
                "built-in tf_keras layers that Keras 3 also has; a Lambda, a custom layer or "
                "a TensorFlow op in the graph is not one). Replace it with built-in layers, "
                "or write the model in Keras 3.")
        if type(layer).__name__ == "Lambda":
            raise ValueError(f"{where}: a Lambda's Python function does not carry over to "
                             "Keras 3; replace it with built-in layers.")
        config = _keras3_config(layer.get_config(), cls, where)
        try:
            self.new = cls.from_config(config)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: Keras 3's {cls.__name__} does not take its "
                             f"configuration ({error}).") from None
        self.old, self.where, self.copied = layer, where, False

    def __call__(self, *args, **kwargs):
        outputs = self.new(*args, **kwargs)
        if not self.copied:
            old_weights = self.old.get_weights()
            shapes = ([w.shape for w in old_weights], [tuple(w.shape) for w in self.new.weights])
            if shapes[0] != [tuple(s) for s in shapes[1]]:
                raise ValueError(f"{self.where}: its weights {shapes[0]} do not fit the Keras "
                                 f"3 layer's {shapes[1]}.")
            self.new.set_weights(old_weights)
            self.copied = True
        return outputs


# Keyword arguments every Keras 3 layer takes (besides its class's own).
_BASE_LAYER_ARGUMENTS = ("name", "trainable", "dtype", "autocast", "input_shape",
                         "input_dim", "batch_size")


# Arguments Keras 3 renamed: {class name: {tf_keras name: Keras 3 name}}.
_RENAMED_ARGUMENTS = {"LeakyReLU": {"alpha": "negative_slope"}}


def _keras3_config(config, cls, where):
    """A tf_keras layer config in Keras 3's terms: dtype policies by name, one-element
    axis lists as ints, and tf_keras-only arguments left out while they hold a value that
    changes nothing (`groups=1`, `renorm=False`, an initializer of copied weights, ...);
    one that would is refused."""
    config = dict(config)
    dtype = config.get("dtype")
    if isinstance(dtype, dict):  # tf_keras: {"class_name": "Policy", "config": {"name": ...}}
        config["dtype"] = dtype.get("config", {}).get("name", "float32")
    axis = config.get("axis")
    if isinstance(axis, list) and len(axis) == 1:
        config["axis"] = int(axis[0])
    for old, new in _RENAMED_ARGUMENTS.get(cls.__name__, {}).items():
        if old in config:
            config[new] = config.pop(old)
    accepted = set(inspect.signature(cls.__init__).parameters) | set(_BASE_LAYER_ARGUMENTS)
    for key in [key for key in config if key not in accepted]:
        value = config.pop(key)
        # Initializers do not matter: the weights are copied.
        if value not in (None, False, 1, {}) and not key.endswith("_initializer"):
            raise ValueError(f"{where}: {key}={value!r} has no Keras 3 equivalent; allowed: "
                             "the layer without it.")
    return config


def annotated_config(config, annotations, model):
    """`config` with TFMOT's annotation semantics added for Keras 3 `model`: the layers
    not annotated stay float (pass-through layers such as Flatten carry their input's
    quantization either way); an annotated layer whose `QuantizeConfig` holds tfquant
    quantizers gets them (with their bits), TFMOT's own LastValue/MovingAverage/AllValues
    quantizers become tfquant's MinMax weight/moving-average quantizers with the same
    bits, anything else (and `quantize_config=None`) tfquant's defaults."""
    if not annotations:
        return config
    config = copy.copy(config)
    config.float_layers = list(config.float_layers) + [
        re.escape(layer.name) for layer in _flat_layers(model)
        if layer.name not in annotations and not passes_through(layer)]
    rules = []
    for name, (tf_layer, quantize_config) in annotations.items():
        settings = _annotation_settings(tf_layer, quantize_config)
        if settings:
            rules.append(LayerRule(re.escape(name), **settings))
    config.rules = list(config.rules) + rules
    return config


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def _annotation_settings(tf_layer, quantize_config):
    """LayerRule arguments for the quantizers of a TFMOT `QuantizeConfig`."""
    if quantize_config is None:
        return {}
    settings = {}
    weights = quantize_config.get_weights_and_quantizers(tf_layer)
    if weights:
        quantizer = weights[0][1]
        if isinstance(quantizer, Quantizer):
            settings.update(weight_quantizer=quantizer, weight_bits=quantizer.num_bits)
        elif type(quantizer).__name__ in ("LastValueQuantizer", "AllValuesQuantizer"):
            settings.update(weight_bits=quantizer.num_bits, per_channel=quantizer.per_axis)
    activations = ([q for _, q in quantize_config.get_activations_and_quantizers(tf_layer)]
                   + list(quantize_config.get_output_quantizers(tf_layer)))
    if activations:
        quantizer = activations[0]
        if isinstance(quantizer, Quantizer):
            settings.update(activation_quantizer=quantizer,
                            activation_bits=quantizer.num_bits)
        elif type(quantizer).__name__ in ("MovingAverageQuantizer", "AllValuesQuantizer"):
            settings.update(activation_bits=quantizer.num_bits,
                            symmetric_activations=quantizer.symmetric)
    return settings


def keras3_model_and_config(model, config, caller="quantize_model"):
    """The entry of tfquant's model functions: `model` as Keras 3 (see `as_keras3`) and
    `config` with its TFMOT annotations honoured (see `annotated_config`)."""
    model, annotations = as_keras3(model, caller)
    return model, annotated_config(config, annotations, model)
