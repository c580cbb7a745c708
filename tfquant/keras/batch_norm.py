"""Folded and standalone BatchNormalization after quantization: switching between batch
and moving statistics, and re-estimating the moving statistics."""

import keras
import numpy as np

from tfquant.keras.quantized_convolution import QuantizedConvolution
from tfquant.keras.slots import quantizer_slots


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


def reestimate_batch_norm(model, data, batch_size=256, max_batches=20):
    """Re-estimates the moving statistics of every BatchNormalization of `model` (folded,
    standalone or float) from the current weights: the mean of the batch statistics over
    up to `max_batches` batches of `data` (an array, or a list of arrays for several
    inputs). Nagel et al. 2021, "A White Paper on Neural Network Quantization", §4: after
    QAT the moving statistics lag the weights that moved under them. Re-estimate before
    freezing BN, not after a frozen phase that trained learned weight steps against the
    frozen statistics (see `tfquant.callbacks.ReestimateBatchNorm`).

    Only the moving means and variances change: the passes run in training mode with the
    folded BNs on batch statistics, dropout off, and every quantizer's state (ranges,
    learned scales, codebooks) put back afterwards. Returns the number of BN layers.
    """
    arrays = [np.asarray(a) for a in (data if isinstance(data, (list, tuple)) else [data])]
    if not arrays[0].size:
        raise ValueError("reestimate_batch_norm: data is empty; give samples of the "
                         "training inputs.")
    # Folded and wrapped BNs are tracked sublayers of their tfquant layers: all found here.
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    folded = folded_batch_norm_layers(model)
    frozen = [layer.batch_norm_frozen for layer in folded]
    momenta = [bn.momentum for bn in norms]
    dropouts = [layer for layer in model._flatten_layers()
                if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    state = [(variable, variable.numpy()) for slot in quantizer_slots(model)
             for variable in slot.variables.values()]
    try:
        for slot in quantizer_slots(model):
            if "frozen" in slot.variables:  # the ranges stay as they are, also in the passes
                slot.variables["frozen"].assign(1.0)
        for layer in folded:
            layer.freeze_batch_norm(False)
        for layer in dropouts:
            layer.rate = 0.0  # inference runs without it: so do the statistics
        batches = min(max_batches, -(-len(arrays[0]) // batch_size))
        for k in range(batches):
            for bn in norms:
                bn.momentum = k / (k + 1)  # the running mean of the batches' statistics
            batch = [a[k * batch_size:(k + 1) * batch_size] for a in arrays]
            model(batch if len(batch) > 1 else batch[0], training=True)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for layer, was_frozen in zip(folded, frozen):
            layer.freeze_batch_norm(was_frozen)
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
        for variable, value in state:
            variable.assign(value)
    return len(norms)
