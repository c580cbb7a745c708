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
from tfquant.quantizers._common import check_applies_to
from tfquant.quantizers.binary import BinaryQuantizer
from tfquant.quantizers.daq import DAQQuantizer
from tfquant.quantizers.identity import FloatActivations
from tfquant.quantizers.dorefa import DoReFaActivationQuantizer, DoReFaWeightQuantizer
from tfquant.quantizers.lqnets import LQNetsQuantizer
from tfquant.quantizers.lsq import LearnedRangeQuantizer, LSQPlusQuantizer, LSQQuantizer
from tfquant.quantizers.pact import PACTQuantizer
from tfquant.quantizers.sawb import SAWBQuantizer
from tfquant.quantizers.soft import SoftQuantizer
from tfquant.quantizers.ternary import TernaryQuantizer, TGAQuantizer, TTQQuantizer
from tfquant.quantizers.tqt import TQTQuantizer
from tfquant.quantizers.uniform import (
    CappedRangeQuantizer,
    FixedRangeQuantizer,
    MinMaxWeightQuantizer,
    MovingAverageQuantizer,
)

__all__ = [
    "BinaryQuantizer",
    "CappedRangeQuantizer",
    "DAQQuantizer",
    "DoReFaActivationQuantizer",
    "DoReFaWeightQuantizer",
    "FloatActivations",
    "LQNetsQuantizer",
    "LSQPlusQuantizer",
    "LSQQuantizer",
    "LearnedRangeQuantizer",
    "PACTQuantizer",
    "SAWBQuantizer",
    "SoftQuantizer",
    "TGAQuantizer",
    "TQTQuantizer",
    "TTQQuantizer",
    "TernaryQuantizer",
    "check_applies_to",
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
