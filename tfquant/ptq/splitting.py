"""Outlier channel splitting (Zhao et al. 2019, "Improving Neural Network Quantization
without Retraining using Outlier Channel Splitting")."""

import math

import numpy as np

from tfquant.ptq import _graph as g
from tfquant.ptq.equalization import (
    _needs_folding,
    _with_statistics,
    bn_statistics,
    copy_model,
    fold_batch_norm,
)


def _split(kernel, count):
    """Splits `count` times the input channel (axis −2) holding the largest |w|: halves
    it and appends the copy. Returns the new kernel and, for every appended channel, the
    original input channel it duplicates."""
    kernel = np.array(kernel, np.float64)
    origin = list(range(kernel.shape[-2]))
    for _ in range(count):
        moved = np.moveaxis(kernel, -2, 0)
        channel = int(np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1).argmax())
        half = kernel[..., channel:channel + 1, :] / 2.0
        kernel[..., channel:channel + 1, :] = half
        kernel = np.concatenate([kernel, half], axis=-2)
        origin.append(origin[channel])
    return kernel, origin[len(origin) - count:] if count else []


def split_channels(model, expand_ratio=0.02, layers=None):
    """OCS on the weights: for every chain `W1 → (element-wise/pooling layers) → W2`
    with W1 and W2 Dense or convolutions, `ceil(expand_ratio·C_in)` times the input
    channel of W2 holding the largest |w| is halved and appended again, and W1's output
    channel that feeds it is duplicated (kernel column and bias), so the duplicated
    activation times the two halves gives the same sum: same function, W2's range
    shrinks. `layers`: names of the W2 layers to split (default: all).

    Returns a new float model (BN folded first) with wider W1 layers.
    """
    if not 0.0 <= float(expand_ratio) <= 1.0:
        raise ValueError(f"expand_ratio={expand_ratio!r} must be in [0, 1].")
    base = fold_batch_norm(model) if _needs_folding(model) else copy_model(model)
    statistics = dict(bn_statistics(base))
    kernels = {layer.name: g.get_kernel(layer) for layer in base.layers if hasattr(layer, "kernel")}
    biases = {layer.name: g.get_bias(layer) for layer in base.layers if hasattr(layer, "kernel")}
    widened = {}
    for pair in g.find_pairs(base, allow_relu6=True):
        first, second = pair.first, pair.second
        if g.scalable_kind(first) not in ("dense", "conv") or \
                g.scalable_kind(second) not in ("dense", "conv"):
            continue
        if layers is not None and second.name not in layers:
            continue
        w2 = kernels[second.name]
        count = math.ceil(float(expand_ratio) * w2.shape[-2])
        if count == 0 or kernels[first.name].shape[-1] != w2.shape[-2]:
            continue
        kernels[second.name], origin = _split(w2, count)
        kernels[first.name] = np.concatenate([kernels[first.name],
                                              kernels[first.name][..., origin]], axis=-1)
        biases[first.name] = np.concatenate([biases[first.name], biases[first.name][origin]])
        widened[first.name] = kernels[first.name].shape[-1]
        if first.name in statistics:
            mean, std = statistics[first.name]
            statistics[first.name] = (np.concatenate([mean, mean[origin]]),
                                      np.concatenate([std, std[origin]]))
    replace = {}
    for layer in base.layers:
        if layer.name not in kernels or (layer.name not in widened and np.shape(
                kernels[layer.name]) == tuple(layer.kernel.shape)):
            continue
        changes = {}
        if layer.name in widened:
            changes["units" if g.scalable_kind(layer) == "dense" else "filters"] = \
                widened[layer.name]
        replace[id(layer)] = (g.clone_layer(layer, **changes), _setter(
            kernels[layer.name], biases[layer.name]))
    return _with_statistics(g.rebuild(base, replace), statistics)


def _setter(kernel, bias):
    def setter(layer):
        g.set_kernel(layer, kernel)
        if bias is not None:
            g.set_bias(layer, bias)
    return setter
