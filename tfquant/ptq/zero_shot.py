"""Zero-shot calibration data: inputs distilled from a model's BatchNormalization
statistics (ZeroQ; Cai et al. 2020, "ZeroQ: A Novel Zero Shot Quantization Framework").

Every BatchNormalization layer remembers the mean μ and variance σ² of its input over the
training data. Starting from Gaussian noise, the inputs x are trained (Adam) to minimize

    L(x) = Σ_BN ( ‖μ_B(x) − μ‖² + ‖σ_B(x) − σ‖² ) / channels

where μ_B, σ_B are the batch statistics of that BN's input (σ = √(σ² + ε)), so that the
activations of the distilled batch look like the training data's to every BN layer: a
calibration set for `ptq.quantize` when no data may be used.
"""

import keras
import numpy as np
import tensorflow as tf

from tfquant.keras.graph import functional_view
from tfquant.ops.arguments import check_count


def _batch_norm_inputs(model):
    """The float BatchNormalization layers of `model` and a model giving their inputs."""
    functional = functional_view(model)
    norms = [layer for layer in functional._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        raise ValueError(f"distill_calibration_data: model {model.name!r} has no "
                         "BatchNormalization layer to distill inputs from; give "
                         "calibration data.")
    if len(functional.inputs) != 1:
        raise ValueError(f"distill_calibration_data: model {model.name!r} has "
                         f"{len(functional.inputs)} inputs; zero-shot data is made for "
                         "models with one input.")
    probe = keras.Model(functional.inputs, [bn.input for bn in norms])
    return norms, probe


def distill_calibration_data(model, num_samples=256, steps=500, learning_rate=0.1,
                             seed=0):
    """`num_samples` inputs for `model` whose statistics at every BatchNormalization
    match the ones it stored (see the module docstring). Returns a float32 array of shape
    `(num_samples, *input_shape)`.

    Args:
      model: a float Keras model with BatchNormalization layers (before BN folding).
      num_samples: inputs to distill; they are optimized as one batch.
      steps: Adam steps. learning_rate: Adam's. seed: of the starting noise.
    """
    for name, value in (("num_samples", num_samples), ("steps", steps)):
        check_count("distill_calibration_data", name, value, minimum=1)
    norms, probe = _batch_norm_inputs(model)
    shape = tuple(probe.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"distill_calibration_data: the input shape {shape} of "
                         f"{model.name!r} is not fully known; build the model on a fixed "
                         "input shape.")
    targets = []
    for bn in norms:
        mean = tf.constant(keras.ops.convert_to_numpy(bn.moving_mean), tf.float32)
        variance = keras.ops.convert_to_numpy(bn.moving_variance)
        targets.append((mean, tf.constant(np.sqrt(variance + bn.epsilon), tf.float32),
                        bn.axis if isinstance(bn.axis, int) else bn.axis[0], bn.epsilon))
    rng = np.random.default_rng(seed)
    x = tf.Variable(rng.normal(size=(num_samples, *shape)).astype(np.float32))
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = statistics_loss(probe, targets, x)
        optimizer.apply_gradients([(tape.gradient(loss, x), x)])
        return loss

    for _ in range(steps):
        step()
    return x.numpy()


def statistics_loss(probe, targets, x):
    """L(x) of the module docstring, summed over the BN layers."""
    outputs = probe(x, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    loss = 0.0
    for output, (mean, sigma, axis, epsilon) in zip(outputs, targets):
        axes = [a for a in range(output.shape.rank) if a != axis % output.shape.rank]
        batch_mean, batch_variance = tf.nn.moments(output, axes)
        batch_sigma = tf.sqrt(batch_variance + epsilon)
        channels = float(mean.shape[0])
        loss += (tf.reduce_sum(tf.square(batch_mean - mean))
                 + tf.reduce_sum(tf.square(batch_sigma - sigma))) / channels
    return loss
