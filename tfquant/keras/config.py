"""`QuantConfig`: which layers `quantize_model` quantizes, and with what."""

import re

import keras

from tfquant.quantizers.uniform import (
    INT8_FIXED_OUTPUT_RANGES,
    FixedRangeQuantizer,
    MinMaxWeightQuantizer,
    MovingAverageQuantizer,
)

WEIGHT_BITS = tuple(range(2, 9))
ACTIVATION_BITS = (8, 16)


class QuantConfig:
    """Defaults for every layer, and the layers to leave in float.

    Args:
      weight_bits: bits of the weight quantizer, 2 to 8 (symmetric, narrow range).
      activation_bits: bits of the activation quantizers, 8 or 16.
      per_channel_weights: one weight range per output channel (else per tensor).
      symmetric_activations: activation ranges `[-m, m]` (else asymmetric).
      activation_ema_decay: decay of the moving-average activation ranges.
      float_layers: layers that stay in float: layer names, regular expressions matched
        against the whole name, or layer classes (matching subclasses too).

    Example:
      `QuantConfig(float_layers=["lstm", r"head_.*", keras.layers.LayerNormalization])`
    """

    def __init__(
        self,
        weight_bits=8,
        activation_bits=8,
        per_channel_weights=True,
        symmetric_activations=False,
        activation_ema_decay=0.99,
        float_layers=(),
    ):
        if weight_bits not in WEIGHT_BITS or isinstance(weight_bits, bool):
            raise ValueError(
                f"QuantConfig: weight_bits={weight_bits!r} is not supported; allowed: "
                f"{', '.join(map(str, WEIGHT_BITS))}."
            )
        if activation_bits not in ACTIVATION_BITS or isinstance(activation_bits, bool):
            raise ValueError(
                f"QuantConfig: activation_bits={activation_bits!r} is not supported; "
                f"allowed: {', '.join(map(str, ACTIVATION_BITS))} (what LiteRT runs)."
            )
        if isinstance(float_layers, (str, type)):
            float_layers = [float_layers]
        for entry in float_layers:
            if isinstance(entry, str):
                try:
                    re.compile(entry)
                except re.error as error:
                    raise ValueError(
                        f"QuantConfig: float_layers entry {entry!r} is not a valid regular "
                        f"expression ({error})."
                    ) from None
            elif not (isinstance(entry, type) and issubclass(entry, keras.layers.Layer)):
                raise ValueError(
                    f"QuantConfig: float_layers entry {entry!r} must be a layer name, a "
                    "regular expression or a keras.layers.Layer subclass."
                )
        # A throwaway quantizer checks the decay with its own message.
        MovingAverageQuantizer(activation_bits, ema_decay=activation_ema_decay)
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.per_channel_weights = bool(per_channel_weights)
        self.symmetric_activations = bool(symmetric_activations)
        self.activation_ema_decay = float(activation_ema_decay)
        self.float_layers = list(float_layers)

    def is_float(self, layer):
        """True when `layer` is to stay in float."""
        for entry in self.float_layers:
            if isinstance(entry, str):
                if layer.name == entry or re.fullmatch(entry, layer.name):
                    return True
            elif isinstance(layer, entry):
                return True
        return False

    def weight_quantizer(self, layer, axis):
        """The quantizer for a kernel of `layer` whose output channels lie on `axis`."""
        return MinMaxWeightQuantizer(self.weight_bits, self.per_channel_weights, axis)

    def activation_quantizer(self, layer, activation=None):
        """The quantizer for the output of `layer` (None: a model input), whose last
        operation is `activation` (a name, e.g. "sigmoid"; None: not an activation)."""
        if self.activation_bits == 8 and activation in INT8_FIXED_OUTPUT_RANGES:
            return FixedRangeQuantizer(*INT8_FIXED_OUTPUT_RANGES[activation], num_bits=8)
        return MovingAverageQuantizer(
            self.activation_bits,
            symmetric=self.symmetric_activations,
            ema_decay=self.activation_ema_decay,
        )

    def get_config(self):
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "per_channel_weights": self.per_channel_weights,
            "symmetric_activations": self.symmetric_activations,
            "activation_ema_decay": self.activation_ema_decay,
            "float_layers": [
                entry if isinstance(entry, str) else entry.__name__
                for entry in self.float_layers
            ],
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"QuantConfig({args})"
