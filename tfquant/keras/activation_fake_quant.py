"""`ActivationFakeQuant`: a layer that fake-quantizes the tensor passing through it."""

import keras

from tfquant.quantizers.base import deserialize_quantizer, serialize_quantizer
from tfquant.quantizers.uniform import MovingAverageQuantizer


@keras.saving.register_keras_serializable(package="tfquant")
class ActivationFakeQuant(keras.layers.Layer):
    """Applies an activation quantizer to its input.

    `quantize_model` puts one on every model input and after every layer whose output
    becomes an integer tensor in the exported model (Add, Concatenate, average pooling,
    activations, ...). Its variables are the quantizer's (for the default quantizer: the
    moving-average range).

    Args:
      quantizer: a `tfquant.quantizers.Quantizer` for activations; default
        `MovingAverageQuantizer()` (8 bits, asymmetric).
    """

    def __init__(self, quantizer=None, **kwargs):
        super().__init__(**kwargs)
        quantizer = deserialize_quantizer(quantizer) or MovingAverageQuantizer()
        self.quantizer = quantizer
        self._quantizer_vars = {}

    def build(self, input_shape):
        self._quantizer_vars = self.quantizer.build(input_shape, "activation", self)
        self.built = True

    def call(self, inputs, training=None):
        return self.quantizer(inputs, bool(training), self._quantizer_vars)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = serialize_quantizer(self.quantizer)
        return config
