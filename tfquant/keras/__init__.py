"""Keras model transformation: config, layer wrappers, BN folding."""

from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.keras.batch_norm import freeze_batch_norm, reestimate_batch_norm
from tfquant.keras.config import LayerRule, QuantConfig
from tfquant.keras.quantized_convolution import QuantizedConvolution
from tfquant.keras.slots import QuantizerSlot, quantizer_slots
from tfquant.keras.transform import quantize_model

__all__ = ["ActivationFakeQuant", "LayerRule", "QuantConfig", "QuantizedConvolution",
           "QuantizerSlot", "freeze_batch_norm", "quantize_model", "quantizer_slots",
           "reestimate_batch_norm"]
