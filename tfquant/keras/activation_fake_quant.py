"""`ActivationFakeQuant`: a layer that fake-quantizes the tensor passing through it."""

import keras
import tensorflow as tf

from tfquant.keras.dtypes import float32_math, to_compute_dtype, to_float32
from tfquant.keras.slots import OneQuantizerLayer
from tfquant.quantizers.base import deserialize_quantizer, is_exporting
from tfquant.quantizers.uniform import MovingAverageQuantizer


@keras.saving.register_keras_serializable(package="tfquant")
class ActivationFakeQuant(OneQuantizerLayer, keras.layers.Layer):
    """Applies an activation quantizer to its input.

    `quantize_model` puts one on every model input and after every layer whose output
    becomes an integer tensor in the exported model (Add, Concatenate, average pooling,
    activations, ...). Its variables are the quantizer's (for the default quantizer: the
    moving-average range), and, once `set_quantize_enabled` has been called (e.g. by
    `tfquant.callbacks.QuantizationDelay`), the switch variable `quantize_enabled`: at 0
    the layer passes its input through unchanged (the quantizer still runs, so its range
    keeps observing the data). Under a mixed-precision policy the quantizer runs in float32
    (variables, math) and the output is cast back to the compute dtype. The switch is read inside the graph (flipping it needs no
    retrace; creating it does, which the callbacks do); `quantize_switch=True` in the
    config makes `build` create it, so saved models keep it. Export always quantizes.

    Args:
      quantizer: a `tfquant.quantizers.Quantizer` for activations; default
        `MovingAverageQuantizer()` (8 bits, asymmetric).
    """

    def __init__(self, quantizer=None, quantize_switch=False, **kwargs):
        super().__init__(**kwargs)
        self.quantize_switch = bool(quantize_switch)
        self.quantize_enabled = None
        quantizer = deserialize_quantizer(quantizer) or MovingAverageQuantizer()
        self.quantizer = quantizer
        self.quantizer_variables = {}

    def build(self, input_shape):
        self.build_quantizer(input_shape, "activation")
        if self.quantize_switch:
            self._make_switches()
        self.built = True

    def _make_switches(self):
        self.quantize_enabled = self.add_weight(
            name="quantize_enabled", shape=(), initializer="ones", trainable=False)

    def call(self, inputs, training=None):
        # Quantizer math in float32 under any dtype policy (tfquant.keras.dtypes).
        with float32_math():
            inputs32 = to_float32(inputs)
            outputs = self.quantizer(inputs32, bool(training), self.quantizer_variables)
            outputs = apply_switch(self.quantize_enabled, outputs, inputs32)
        return to_compute_dtype(outputs, self)

    def set_quantize_enabled(self, enabled):
        """Turns fake quantization on (True) or off (False: float output, still observing).
        Returns True when the switch variable was created now (traced functions that
        use this layer must be retraced: `tfquant.callbacks.rebuild_functions`)."""
        created = False
        if self.quantize_enabled is None:
            if enabled:
                return False  # no switch: always quantized
            created = add_switches(self)
        self.quantize_enabled.assign(1.0 if enabled else 0.0)
        return created

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantize_switch"] = self.quantize_switch
        return config


def apply_switch(switch, quantized, original):
    """`quantized` where the switch variable is on (> 0.5), else `original`; the switch is
    read in the graph. Under `exporting()` the quantized tensor, unconditionally."""
    if switch is None or is_exporting():
        return quantized
    on = tf.convert_to_tensor(switch) > 0.5
    return tf.where(on, quantized, tf.cast(original, quantized.dtype))


def add_switches(layer):
    """Creates a built layer's switch variables (`layer._make_switches()`) after build and
    records it in its config (`quantize_switch`). Returns True."""
    tracker = getattr(layer, "_tracker", None)
    locked = tracker is not None and tracker.locked
    if locked:
        tracker.unlock()
    try:
        layer._make_switches()
    finally:
        if locked:
            tracker.lock()
    layer.quantize_switch = True
    return True
