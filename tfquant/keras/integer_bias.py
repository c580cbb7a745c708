"""The int32 bias as LiteRT holds it, simulated in training (docs/ARCHITECTURE.md §5).

TFLite stores the bias of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED in int32 with
the step `input scale × weight scale`. After a low-bit activation that step is a sizeable
fraction of the output step (W2A2 demo CNN: 2.4 % of it in the depthwise layer), and the
rounded bias moves ~1 % of the 2-bit outputs to the next level, which the next layers
amplify: with the exact bias the integer model had the Keras accuracy, with the int32
one 1.1 points (XNNPACK) and 3.2 points (builtin) less. `integer_bias` rounds the bias
the same way in the Keras model, with a straight-through gradient.
"""

import keras
import tensorflow as tf

from tfquant.quantizers.base import exporting
from tfquant.quantizers.export_graph import recording_export_steps

# Layers between an activation quantizer and the layer it feeds that keep its grid.
_SAME_GRID = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
              keras.layers.Flatten, keras.layers.Reshape, keras.layers.ZeroPadding1D,
              keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D, keras.layers.Dropout,
              keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D)


def input_quantizer_slot(layer):
    """The activation quantizer slot whose grid `layer`'s input lies on (found through
    the graph, past max pooling, reshapes, padding and dropout), or None."""
    try:
        tensor = layer.input
    except (AttributeError, ValueError):  # not called in a functional graph yet
        return None
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        producer = history[0]
        slots = [slot for slot in getattr(producer, "quantizer_slots", lambda: [])()
                 if slot.role in ("activation", "output")]
        if slots:
            return slots[-1]
        if not isinstance(producer, _SAME_GRID):
            return None
        tensor = producer.input


def deployed_step(quantizer, values, variables, int8_low_bit_weights):
    """The step (per channel for a per-channel grid) with which `quantizer` deploys
    `values`, as the export writes it; None when it has no uniform grid."""
    try:
        with exporting(None, int8_low_bit_weights), recording_export_steps() as steps:
            quantizer(values, training=False, weights=variables)
    except (ValueError, TypeError, KeyError):
        return None
    return steps[-1] if steps else None


def integer_bias(bias, input_step, weight_steps):
    """`bias` rounded to the int32 grid of step input step × weight step (ties away from
    zero, as the converter rounds); the gradient passes straight through."""
    step = tf.stop_gradient(input_step * weight_steps)
    scaled = bias / step
    magnitude = tf.abs(scaled)
    # The sign as scaled/|scaled| (exactly ±1; 0 for 0), not tf.sign: the converter
    # leaves a SIGN of a folded constant as a float op when the bias is computed late
    # (e.g. a ternary kernel's scale), and the export then refuses the model.
    sign = scaled / tf.maximum(magnitude, 1e-30)
    rounded = sign * tf.floor(magnitude + 0.5) * step
    return bias + tf.stop_gradient(rounded - bias)
