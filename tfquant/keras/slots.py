"""The quantizer-slot protocol: every tfquant layer that holds quantizers lists them with
`quantizer_slots()`, and everything that reads or changes quantizers (callbacks, PTQ,
export, the report, the regularizers) goes through `quantizer_slots(model)`."""

import contextlib
import dataclasses

import keras

from tfquant.quantizers.base import serialize_quantizer


@dataclasses.dataclass(frozen=True)
class QuantizerSlot:
    """One quantizer of a tfquant layer.

    Attributes:
      layer: the tfquant layer holding it (ActivationFakeQuant, QuantizedConvolution, ...).
      attr: the attribute of `layer` that holds the quantizer (`getattr(layer, attr)`);
        PTQ swaps it for a pass-through while it records float inputs.
      role: "weights:<kernel name>" for a weight quantizer; "activation", "output",
        "intermediate" or "pre_activation" for an activation quantizer.
      variables: the quantizer's variables (its `build` result) for this tensor.
    """

    layer: object
    attr: str
    role: str
    variables: dict

    @property
    def quantizer(self):
        return getattr(self.layer, self.attr)

    @property
    def is_weight(self):
        return self.role.startswith("weights")

    @property
    def key(self):
        """A name unique in the model: `<layer>/<attr>` (`/<kernel>` for weights)."""
        if self.is_weight:
            return f"{self.layer.name}/{self.attr}/{self.role.split(':', 1)[1]}"
        return f"{self.layer.name}/{self.attr}"


def quantizer_slots(model, weights=True, activations=True):
    """The `QuantizerSlot`s of every layer of `model` (weight and/or activation ones), in
    layer order."""
    slots = []
    for layer in model.layers:
        method = getattr(layer, "quantizer_slots", None)
        if method is None:
            continue
        slots.extend(slot for slot in method() if (weights if slot.is_weight else activations))
    return slots


class PassThroughQuantizer:
    """Stands in for a quantizer: returns its input unchanged, optionally recording it."""

    def __init__(self, original, record=None):
        self.original = original
        self.record = record

    def __call__(self, inputs, training=None, weights=None, **kwargs):
        if self.record is not None:
            self.record(keras.ops.convert_to_numpy(inputs))
        return inputs

    def __getattr__(self, name):
        return getattr(self.original, name)


@contextlib.contextmanager
def quantizers_bypassed(qmodel, record=None, weights=True):
    """Runs `qmodel` in float: every activation quantizer (and, with `weights`, every
    weight quantizer) passes its input through; `record`: {site key: callback(array)}."""
    record = record or {}
    saved = []
    try:
        for slot in quantizer_slots(qmodel, weights=weights):
            layer, attr = slot.layer, slot.attr
            if any(l is layer and a == attr for l, a, _ in saved):
                continue  # a separable layer's two kernels share one quantizer
            original = getattr(layer, attr)
            saved.append((layer, attr, original))
            object.__setattr__(layer, attr,
                               PassThroughQuantizer(original, record.get(f"{layer.name}/{attr}")))
        yield
    finally:
        for layer, attr, original in reversed(saved):
            object.__setattr__(layer, attr, original)


class OneQuantizerLayer:
    """Mixin for a Keras layer with one quantizer: the class names the attribute that
    holds it (`QUANTIZER`), the attribute that holds its variables (`QUANTIZER_VARIABLES`)
    and its role (`QUANTIZER_ROLE`); the mixin lists its slot and writes the quantizer
    into the layer's config under its attribute's name (the `__init__` argument)."""

    QUANTIZER = "quantizer"
    QUANTIZER_VARIABLES = "quantizer_variables"
    QUANTIZER_ROLE = "activation"

    def build_quantizer(self, tensor_shape, name):
        """Builds the quantizer's variables for a tensor of `tensor_shape` (after the
        wrapped layer, if this layer wraps one and it is not built yet)."""
        wrapped = getattr(self, "layer", None)
        if wrapped is not None and not wrapped.built:
            wrapped.build(tensor_shape)
        variables = getattr(self, self.QUANTIZER).build(tensor_shape, name, self)
        setattr(self, self.QUANTIZER_VARIABLES, variables)

    def quantizer_slots(self):
        return [QuantizerSlot(self, self.QUANTIZER, self.QUANTIZER_ROLE,
                              getattr(self, self.QUANTIZER_VARIABLES))]

    def get_config(self):
        config = super().get_config()
        config[self.QUANTIZER] = serialize_quantizer(getattr(self, self.QUANTIZER))
        return config
