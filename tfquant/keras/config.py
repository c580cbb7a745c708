"""`QuantConfig` and `LayerRule`: which layers `quantize_model` quantizes, and how.

A config holds defaults for every layer and a list of rules. For each layer the defaults
apply first, then the first/last-layer override, then every rule that matches the layer
(by name — a regular expression — or by class), later rules over earlier ones. The result
is a `LayerSpec`, which builds the layer's quantizers.
"""

import dataclasses
import inspect
import re

import keras

from tfquant.ops.arguments import check_bits
from tfquant.quantizers.base import Quantizer, deserialize_quantizer, get_quantizer_class
from tfquant.quantizers.calibration import check_weight_calibrator, make_calibrator
from tfquant.quantizers.identity import FloatActivations
from tfquant.quantizers.uniform import (
    ACTIVATION_BITS,
    INT8_FIXED_OUTPUT_RANGES,
    WEIGHT_BITS,
    FixedRangeQuantizer,
)


def _check_bits(value, allowed, what, where):
    if value is not None:
        check_bits(where, value, allowed, arg=what)


def check_layer_match(entry, where):
    """ValueError naming `where` unless `entry` is a layer name, a valid regular
    expression or a keras.layers.Layer subclass (what `layer_matches` takes)."""
    if isinstance(entry, str):
        try:
            re.compile(entry)
        except re.error as error:
            raise ValueError(
                f"{where}: {entry!r} is not a valid regular expression ({error})."
            ) from None
    elif not (isinstance(entry, type) and issubclass(entry, keras.layers.Layer)):
        raise ValueError(
            f"{where}: {entry!r} must be a layer name, a regular expression or a "
            "keras.layers.Layer subclass."
        )


def _check_calibrator(spec, role, where):
    """Activation calibrators: a registered name or a `tfquant.ptq.Calibrator` instance;
    weight calibrators: a registered name."""
    if spec is None:
        return
    try:
        if role == "activation":
            make_calibrator(spec)
        else:
            check_weight_calibrator(spec)
    except ValueError as error:
        raise ValueError(f"{where}: {role}_calibrator={spec!r}: {error}") from None


def _calibrator_to_config(spec):
    return spec if spec is None or isinstance(spec, str) else type(spec).__name__


def layer_matches(entry, layer, names=None):
    """True when `entry` — a layer name, a regular expression matched against the whole
    name, or a layer class — matches `layer` (by any of `names`, default its own name).
    The one matcher of configs, PTQ's per-layer dicts and the callbacks' `exclude`."""
    names = (layer.name,) if names is None else names
    if isinstance(entry, str):
        return any(name == entry or re.fullmatch(entry, name) is not None for name in names)
    if isinstance(entry, type):
        return layer is not None and isinstance(layer, entry)
    raise ValueError(f"per-layer keys must be layer names, regular expressions or layer "
                     f"classes; got {entry!r}.")


@dataclasses.dataclass
class LayerRule:
    """Settings for the layers that `match` (a name, a regular expression matched against
    the whole name, or a layer class). Fields left None keep what applies otherwise.

    Args:
      match: which layers.
      weight_quantizer, activation_quantizer: a registered quantizer name
        (`tfquant.quantizers.registered_quantizers()`), a Quantizer class or instance.
      weight_bits: 2–8. activation_bits: 2–8 (below 8: training only, export uses 8) or 16.
      per_channel: per-output-channel weights (True) or per tensor.
      symmetric_activations: activation ranges symmetric around 0.
      float: keep the matching layers in float.
      activation_calibrator: how `tfquant.ptq.quantize` sets the range of the layer's
        output: a name of `tfquant.ptq.ACTIVATION_CALIBRATORS` or a
        `tfquant.ptq.Calibrator` instance (a template, copied per tensor).
      weight_calibrator: how `tfquant.ptq.quantize` clips the layer's weights: a name of
        `tfquant.ptq.WEIGHT_CALIBRATORS`.

    Example: `LayerRule(r"block3_.*", weight_quantizer="LSQQuantizer", weight_bits=4)`.
    """

    match: object
    weight_quantizer: object = None
    activation_quantizer: object = None
    weight_bits: int = None
    activation_bits: int = None
    per_channel: bool = None
    symmetric_activations: bool = None
    float: bool = False
    activation_calibrator: object = None
    weight_calibrator: str = None

    def __post_init__(self):
        where = f"LayerRule({self.match!r})"
        check_layer_match(self.match, where)
        _check_bits(self.weight_bits, WEIGHT_BITS, "weight_bits", where)
        _check_bits(self.activation_bits, ACTIVATION_BITS, "activation_bits", where)
        for spec in (self.weight_quantizer, self.activation_quantizer):
            if spec is not None:
                _quantizer_class_or_error(spec, where)
        _check_calibrator(self.activation_calibrator, "activation", where)
        _check_calibrator(self.weight_calibrator, "weight", where)

    def get_config(self):
        config = dataclasses.asdict(self)
        config["match"] = self.match if isinstance(self.match, str) else self.match.__name__
        for key in ("weight_quantizer", "activation_quantizer"):
            config[key] = _spec_to_config(getattr(self, key))
        config["activation_calibrator"] = _calibrator_to_config(self.activation_calibrator)
        return config


def _quantizer_class_or_error(spec, where):
    try:
        if isinstance(spec, type):
            if not issubclass(spec, Quantizer):
                raise ValueError(f"{spec.__name__} is not a tfquant Quantizer.")
            return spec
        if isinstance(spec, Quantizer):
            return type(spec)
        if isinstance(spec, dict):
            return type(deserialize_quantizer(spec))
        if isinstance(spec, str):
            return get_quantizer_class(spec)
        raise ValueError(f"{spec!r} is not a quantizer name, class or instance.")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _spec_to_config(spec):
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, type):
        return spec.__name__
    if isinstance(spec, Quantizer):
        return {"class_name": type(spec).__name__, "config": spec.get_config()}
    return spec


# Quantizer arguments that follow from the layer (its bits after rules and first/last,
# its kernel layout), whatever a configured quantizer instance says.
_LAYER_DECIDES = ("num_bits", "axis", "kind", "signed")


@dataclasses.dataclass
class LayerSpec:
    """What applies to one layer; builds its quantizers."""

    layer_name: str
    weight_quantizer: object
    activation_quantizer: object
    weight_bits: int
    activation_bits: int
    per_channel: bool
    symmetric_activations: bool
    ema_decay: float
    signed_activation_quantizer: object = "MovingAverageQuantizer"
    first_or_last_weights: bool = False
    activation_calibrator: object = "minmax"
    weight_calibrator: str = "minmax"

    def weight_quantizer_for(self, axis):
        """The quantizer of a kernel whose output channels lie on `axis`.

        A first or last layer whose quantizer has no bit width (ternary, binary) gets
        the uniform MinMaxWeightQuantizer at `first_last_bits` instead."""
        spec = self.weight_quantizer
        if self.first_or_last_weights and "num_bits" not in inspect.signature(
                _quantizer_class_or_error(spec, self.layer_name).__init__).parameters:
            spec = "MinMaxWeightQuantizer"
        return self._build(spec, "weights", {
            "num_bits": self.weight_bits, "per_channel": self.per_channel, "axis": axis,
            "signed": True, "kind": "weights"})

    def activation_quantizer_for(self, activation=None, bits=None, non_negative=False):
        """The quantizer of an output whose last operation is `activation` (a name such
        as "sigmoid"; None: not an activation); `bits` overrides the activation bits;
        `non_negative`: the output is known never to be negative.

        A quantizer for non-negative inputs only (`unsigned_only`, e.g. PACT) is replaced
        by `signed_activation_quantizer` where the output may be negative."""
        bits = bits or self.activation_bits
        if _quantizer_class_or_error(self.activation_quantizer, self.layer_name) is \
                FloatActivations:
            return FloatActivations()  # weight-only: no fixed output ranges either
        if bits == 8 and activation in INT8_FIXED_OUTPUT_RANGES:
            return FixedRangeQuantizer(*INT8_FIXED_OUTPUT_RANGES[activation], num_bits=8)
        spec = self.activation_quantizer
        if not non_negative and getattr(_quantizer_class_or_error(spec, self.layer_name),
                                        "unsigned_only", False):
            spec = self.signed_activation_quantizer
        return self._build(spec, "activations", {
            "num_bits": bits, "symmetric": self.symmetric_activations,
            "ema_decay": self.ema_decay, "signed": not non_negative,
            "per_channel": False, "kind": "activations"})

    def _build(self, spec, role, settings):
        where = f"layer {self.layer_name!r}"
        cls = _quantizer_class_or_error(spec, where)
        applies_to = getattr(cls, "applies_to", ("weights", "activations"))
        if role not in applies_to:
            raise ValueError(
                f"{where}: {cls.__name__} quantizes {' and '.join(applies_to)}, not {role}; "
                f"choose another {role[:-1]} quantizer for it."
            )
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in settings.items() if k in accepted}
        # A configured quantizer (instance or serialized dict) keeps its own arguments,
        # but the layer decides the bits and where the channels are.
        if isinstance(spec, Quantizer):
            own = spec.get_config()
        elif isinstance(spec, dict):
            own = dict(spec.get("config", {}))
        else:
            own = {}
        for key, value in own.items():
            if key not in _LAYER_DECIDES:
                kwargs[key] = value
        try:
            return cls(**kwargs)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None


class QuantConfig:
    """Defaults for every layer, per-layer rules, and the layers to leave in float.

    Args:
      weight_quantizer: quantizer of Dense/conv kernels (name, class or instance);
        default "MinMaxWeightQuantizer" (symmetric, narrow range).
      activation_quantizer: quantizer of activations; default "MovingAverageQuantizer";
        None: weight-only quantization, every activation stays float
        ("FloatActivations"; for QAT or PTQ of weights alone, exported with
        `export_tflite(..., activations="dynamic")`).
      signed_activation_quantizer: used instead of an `activation_quantizer` made for
        non-negative inputs only (PACT, DoReFa) on outputs that can be negative (e.g. a
        convolution+BN feeding an Add); default "MovingAverageQuantizer".
      weight_bits: 2 to 8.
      activation_bits: 2 to 8, or 16. Below 8 bits activations are training-only:
        LiteRT runs 8 or 16, so `export_tflite` uses 8 and says so.
      per_channel_weights: one weight range per output channel (else per tensor).
      symmetric_activations: activation ranges `[-m, m]` (else asymmetric).
      activation_ema_decay: decay of the moving-average activation ranges.
      first_last_bits: bits of the weights and input activations of the first layers
        (those reading a model input) and the last layers (those writing a model output),
        and of the model outputs, as PACT and LSQ keep them at 8 (with a weight quantizer
        that has no bit width, e.g. ternary, those layers use MinMaxWeightQuantizer);
        None: no exception.
      shortcut_bits: activation bits of tensors that feed an Add (residual shortcuts);
        e.g. 8 keeps shortcuts at the highest integer precision in a low-bit model
        (Choi et al. 2018); None: as other activations.
      float_layers: layers that stay in float: names, regular expressions matched
        against the whole name, or layer classes (matching subclasses too).
      rules: `LayerRule`s, applied in order after the defaults and first/last bits.
      activation_calibrator: how `tfquant.ptq.quantize` sets activation ranges: a name
        of `tfquant.ptq.ACTIVATION_CALIBRATORS` ("minmax", "ema", "percentile", "mse",
        "entropy") or a `tfquant.ptq.Calibrator` instance; default "minmax".
      weight_calibrator: how `tfquant.ptq.quantize` clips weights with the default
        weight quantizer: "minmax", "mse" or "sawb"; default "minmax".

    Example:
      `QuantConfig(weight_quantizer="LSQQuantizer", weight_bits=4, activation_bits=4,
                   rules=[LayerRule("head", float=True)])`
    """

    def __init__(
        self,
        weight_quantizer="MinMaxWeightQuantizer",
        activation_quantizer="MovingAverageQuantizer",
        signed_activation_quantizer="MovingAverageQuantizer",
        weight_bits=8,
        activation_bits=8,
        per_channel_weights=True,
        symmetric_activations=False,
        activation_ema_decay=0.99,
        first_last_bits=8,
        shortcut_bits=None,
        float_layers=(),
        rules=(),
        activation_calibrator="minmax",
        weight_calibrator="minmax",
    ):
        where = "QuantConfig"
        if activation_quantizer is None:
            activation_quantizer = "FloatActivations"
        _check_bits(weight_bits, WEIGHT_BITS, "weight_bits", where)
        _check_bits(activation_bits, ACTIVATION_BITS, "activation_bits", where)
        _check_bits(first_last_bits, WEIGHT_BITS, "first_last_bits", where)
        _check_bits(shortcut_bits, ACTIVATION_BITS, "shortcut_bits", where)
        if not 0.0 <= float(activation_ema_decay) < 1.0:
            raise ValueError(
                f"{where}: activation_ema_decay={activation_ema_decay!r} must be in [0, 1)."
            )
        if isinstance(float_layers, (str, type)):
            float_layers = [float_layers]
        for entry in float_layers:
            check_layer_match(entry, f"{where}: float_layers entry")
        rules = list(rules)
        for rule in rules:
            if not isinstance(rule, LayerRule):
                raise ValueError(f"{where}: rules must be LayerRule objects, got {rule!r}.")
        for spec in (weight_quantizer, activation_quantizer, signed_activation_quantizer):
            _quantizer_class_or_error(spec, where)
        _check_calibrator(activation_calibrator, "activation", where)
        _check_calibrator(weight_calibrator, "weight", where)
        self.activation_calibrator = activation_calibrator
        self.weight_calibrator = weight_calibrator
        self.weight_quantizer = weight_quantizer
        self.activation_quantizer = activation_quantizer
        self.signed_activation_quantizer = signed_activation_quantizer
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.per_channel_weights = bool(per_channel_weights)
        self.symmetric_activations = bool(symmetric_activations)
        self.activation_ema_decay = float(activation_ema_decay)
        self.first_last_bits = first_last_bits
        self.shortcut_bits = shortcut_bits
        self.float_layers = list(float_layers)
        self.rules = rules

    def is_float(self, layer):
        """True when `layer` is to stay in float."""
        if any(layer_matches(entry, layer) for entry in self.float_layers):
            return True
        result = False
        for rule in self.rules:
            if layer_matches(rule.match, layer):
                result = rule.float
        return result

    def layer_spec(self, layer, first_or_last_weights=False, first_or_last_activations=False):
        """The settings that apply to `layer` (None: a model input).

        `first_or_last_weights`: the layer is a first or last layer, so its weights take
        `first_last_bits`; `first_or_last_activations`: its output is a model output or
        the input of a last layer, so it takes `first_last_bits` too (the input of a first
        layer is a model input, always at `first_last_bits`).
        """
        spec = LayerSpec(
            layer_name=layer.name if layer is not None else "model input",
            weight_quantizer=self.weight_quantizer,
            activation_quantizer=self.activation_quantizer,
            weight_bits=self.weight_bits,
            activation_bits=self.activation_bits,
            per_channel=self.per_channel_weights,
            symmetric_activations=self.symmetric_activations,
            ema_decay=self.activation_ema_decay,
            signed_activation_quantizer=self.signed_activation_quantizer,
            activation_calibrator=self.activation_calibrator,
            weight_calibrator=self.weight_calibrator,
        )
        if self.first_last_bits is not None:
            if first_or_last_weights:
                spec.weight_bits = self.first_last_bits
                spec.first_or_last_weights = True
            if (first_or_last_activations or layer is None) and spec.activation_bits != 16:
                spec.activation_bits = max(self.first_last_bits, spec.activation_bits)
        if layer is None:
            return spec
        for rule in self.rules:
            if not layer_matches(rule.match, layer):
                continue
            for field in ("weight_quantizer", "activation_quantizer", "weight_bits",
                          "activation_bits", "per_channel", "symmetric_activations",
                          "activation_calibrator", "weight_calibrator"):
                value = getattr(rule, field)
                if value is not None:
                    setattr(spec, field, value)
        return spec

    def get_config(self):
        return {
            "weight_quantizer": _spec_to_config(self.weight_quantizer),
            "activation_quantizer": _spec_to_config(self.activation_quantizer),
            "signed_activation_quantizer": _spec_to_config(self.signed_activation_quantizer),
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "per_channel_weights": self.per_channel_weights,
            "symmetric_activations": self.symmetric_activations,
            "activation_ema_decay": self.activation_ema_decay,
            "first_last_bits": self.first_last_bits,
            "shortcut_bits": self.shortcut_bits,
            "float_layers": [e if isinstance(e, str) else e.__name__ for e in self.float_layers],
            "rules": [rule.get_config() for rule in self.rules],
            "activation_calibrator": _calibrator_to_config(self.activation_calibrator),
            "weight_calibrator": self.weight_calibrator,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"QuantConfig({args})"
