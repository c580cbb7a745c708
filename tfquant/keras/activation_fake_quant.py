"""`ActivationFakeQuant`: a layer that fake-quantizes the tensor passing through it."""

import keras
import tensorflow as tf

from tfquant.quantizers.base import deserialize_quantizer, is_exporting, serialize_quantizer
from tfquant.quantizers.uniform import MovingAverageQuantizer


@keras.saving.register_keras_serializable(package="tfquant")
class ActivationFakeQuant(keras.layers.Layer):
    """Applies an activation quantizer to its input.

    `quantize_model` puts one on every model input and after every layer whose output
    becomes an integer tensor in the exported model (Add, Concatenate, average pooling,
    activations, ...). Its variables are the quantizer's (for the default quantizer: the
    moving-average range), and the switch `quantize_enabled` (1.0 by default): at 0 the
    layer passes its input through unchanged (the quantizer still runs, so its range
    keeps observing the data). `tfquant.callbacks.QuantizationDelay` flips it. The
    switch is a variable, read inside the graph: no retrace. Export always quantizes.

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
        self.quantize_enabled = self.add_weight(
            name="quantize_enabled", shape=(), initializer="ones", trainable=False)
        self.built = True

    def call(self, inputs, training=None):
        outputs = self.quantizer(inputs, bool(training), self._quantizer_vars)
        return apply_switch(self.quantize_enabled, outputs, inputs)

    def set_quantize_enabled(self, enabled):
        """Turns fake quantization on (True) or off (False: float output, still observing)."""
        self.quantize_enabled.assign(1.0 if enabled else 0.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = serialize_quantizer(self.quantizer)
        return config


def apply_switch(switch, quantized, original):
    """`quantized` where the switch variable is on (> 0.5), else `original`; the switch is
    read in the graph. Under `exporting()` the quantized tensor, unconditionally."""
    if switch is None or is_exporting():
        return quantized
    on = tf.convert_to_tensor(switch) > 0.5
    return tf.where(on, quantized, tf.cast(original, quantized.dtype))
