"""`ChannelAffine`: one elementwise op of a tensor with a per-channel operand."""

import keras
import numpy as np
import tensorflow as tf

from tfquant.keras.dtypes import float32_math, to_compute_dtype, to_float32
from tfquant.keras.layers.registry import QuantizedOutput, register_layer_handler
from tfquant.quantizers.export_graph import export_fake_quant

_OPERATIONS = ("multiply", "add")


@keras.saving.register_keras_serializable(package="tfquant")
class ChannelAffine(keras.layers.Layer):
    """`x · w` (`operation="multiply"`) or `x + w` (`"add"`), `w` of shape `shape`
    broadcast against the input (a per-channel vector for the last axis).

    It stands for the scale or the shift of a LayerNormalization, a Normalization or a
    LayerScale in a quantized model: one TFLite MUL or ADD, whose output the next
    quantizer quantizes. `w` is fake-quantized to 8 bits on `[min(w, 0), max(w, 0)]`
    in every call, so the Keras model computes with the integer operand the flatbuffer
    stores (the converter takes that range from the FakeQuant op); gradients reach `w`
    straight through.

    Args:
      operation: "multiply" or "add".
      shape: the shape of `w`.
      initial_values: the values `w` starts from (not saved in the config: the weights
        are); default ones for "multiply", zeros for "add".
      trainable_values: whether `w` trains (False for preprocessing constants).
    """

    def __init__(self, operation, shape, initial_values=None, trainable_values=True,
                 **kwargs):
        super().__init__(**kwargs)
        if operation not in _OPERATIONS:
            raise ValueError(f"ChannelAffine: operation={operation!r} is not supported; "
                             f"allowed: {', '.join(_OPERATIONS)}.")
        self.operation = operation
        self.shape = tuple(int(d) for d in shape)
        if initial_values is not None:
            initial_values = np.asarray(initial_values, np.float32)
            if initial_values.shape != self.shape:
                raise ValueError(f"ChannelAffine: initial_values has shape "
                                 f"{initial_values.shape}; shape is {self.shape}.")
        self.initial_values = initial_values
        self.trainable_values = bool(trainable_values)

    def build(self, input_shape):
        if self.initial_values is not None:
            values = self.initial_values
            initializer = lambda shape, dtype=None: tf.constant(values, dtype=dtype)  # noqa: E731
        else:
            initializer = "ones" if self.operation == "multiply" else "zeros"
        self.values = self.add_weight(name="values", shape=self.shape,
                                      initializer=initializer,
                                      trainable=self.trainable_values)
        self.built = True

    def call(self, inputs):
        with float32_math():
            values = tf.convert_to_tensor(self.values)
            low = tf.stop_gradient(tf.minimum(tf.reduce_min(values), 0.0))
            high = tf.stop_gradient(tf.maximum(tf.reduce_max(values), 0.0))
            values = export_fake_quant(values, low, high, 8, False)
            x = to_float32(inputs)
            outputs = x * values if self.operation == "multiply" else x + values
        return to_compute_dtype(outputs, self)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"operation": self.operation, "shape": list(self.shape),
                       "trainable_values": self.trainable_values})
        return config


# A model that already holds ChannelAffine layers (a quantized model quantized again).
register_layer_handler(ChannelAffine, QuantizedOutput())
