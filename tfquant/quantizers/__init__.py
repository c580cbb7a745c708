"""Quantizers: one module per family, each class registered by name."""

from tfquant.quantizers.base import (
    Deployment,
    Quantizer,
    deserialize_quantizer,
    get_quantizer,
    register_quantizer,
    registered_quantizers,
    serialize_quantizer,
)
from tfquant.quantizers.uniform import (
    FixedRangeQuantizer,
    MinMaxWeightQuantizer,
    MovingAverageQuantizer,
)

__all__ = [
    "Deployment",
    "FixedRangeQuantizer",
    "MinMaxWeightQuantizer",
    "MovingAverageQuantizer",
    "Quantizer",
    "deserialize_quantizer",
    "get_quantizer",
    "register_quantizer",
    "registered_quantizers",
    "serialize_quantizer",
]
