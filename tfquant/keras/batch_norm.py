"""Switching folded BatchNormalization between batch and moving statistics."""

from tfquant.keras.quantized_convolution import QuantizedConvolution


def folded_batch_norm_layers(model):
    """The `QuantizedConvolution` layers of `model` that have a BatchNormalization folded in."""
    return [layer for layer in model.layers
            if isinstance(layer, QuantizedConvolution) and layer.batch_norm is not None]


def freeze_batch_norm(model, frozen=True):
    """Makes every folded BN of `model` train with its moving statistics, and stop
    updating them (`frozen=False` switches back to batch statistics).

    Returns the number of layers switched. Takes effect at the next training step, also
    inside an already traced `fit` (the switch is a variable).
    """
    layers = folded_batch_norm_layers(model)
    for layer in layers:
        layer.freeze_batch_norm(frozen)
    return len(layers)
