"""`QuantizedBatchNormalization`: a BatchNormalization that no Dense or convolution
before it absorbs (pre-activation ResNets, DenseNet's BN-ReLU-Conv), as TFLite runs it:
a MUL by `a = γ/√(σ² + ε)` and an ADD of `b = β − μ·a`, with a quantizer between them
(the MUL's int8 output) and the next layer's after.
"""

import keras
import tensorflow as tf
from keras import ops

from tfquant.keras.dtypes import float32_math, to_compute_dtype, to_float32
from tfquant.keras.quantized_convolution import batch_moments
from tfquant.keras.slots import OneQuantizerLayer
from tfquant.quantizers.base import deserialize_quantizer


@keras.saving.register_keras_serializable(package="tfquant")
class QuantizedBatchNormalization(OneQuantizerLayer, keras.layers.Wrapper):
    """`q(x·a) + b` over the last axis.

    In training (a trainable BatchNormalization) `a` and `b` come from the batch
    statistics, which update the moving ones with the layer's momentum, as Keras's
    layer does; otherwise from the moving statistics.

    Args:
      layer: the float `keras.layers.BatchNormalization` (over the last axis).
      intermediate_quantizer: the quantizer of `x·a`.
    """

    QUANTIZER = "intermediate_quantizer"
    QUANTIZER_VARIABLES = "intermediate_variables"
    QUANTIZER_ROLE = "intermediate"

    def __init__(self, layer, intermediate_quantizer, **kwargs):
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(f"QuantizedBatchNormalization wraps a BatchNormalization; got "
                             f"{layer.name!r} ({type(layer).__name__}).")
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.intermediate_quantizer = deserialize_quantizer(intermediate_quantizer)
        if self.intermediate_quantizer is None:
            raise ValueError(f"QuantizedBatchNormalization {self.name!r} needs an "
                             "intermediate_quantizer.")

    def build(self, input_shape):
        self.build_quantizer(input_shape, "intermediate")
        self.built = True

    def call(self, inputs, training=None, mask=None):
        del mask  # BatchNormalization passes masks through; so does this layer
        bn = self.layer
        with float32_math():
            x = to_float32(inputs)
            if training and bn.trainable:
                mean, variance = batch_moments(x, list(range(len(x.shape) - 1)))
                bn.moving_mean.assign(bn.moving_mean * bn.momentum
                                      + mean * (1.0 - bn.momentum))
                bn.moving_variance.assign(bn.moving_variance * bn.momentum
                                          + variance * (1.0 - bn.momentum))
            else:
                mean = ops.convert_to_tensor(bn.moving_mean)
                variance = ops.convert_to_tensor(bn.moving_variance)
            scale = tf.math.rsqrt(variance + bn.epsilon)
            if bn.scale:
                scale = scale * bn.gamma
            shift = -mean * scale
            if bn.center:
                shift = shift + bn.beta
            scaled = self.intermediate_quantizer(x * scale, bool(training),
                                                 self.intermediate_variables)
            outputs = scaled + shift
        return to_compute_dtype(outputs, self)

    def compute_output_shape(self, input_shape):
        return input_shape

