"""Data-free transformations of a float Keras model (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"; Meller et al. 2019,
"Same, Same But Different: Recovering Neural Network Quantization Error Through Weight
Factorization").

Every function returns a NEW float model with the same layer names and (up to the
stated approximations) the same function; the input model is not modified. The
BatchNormalization statistics a transformation needs (the mean β and standard deviation
|γ| of each folded layer's pre-activation output, per channel) travel with the returned
models: `bn_statistics(model)`.
"""

import weakref

import keras
import numpy as np

from tfquant.keras.kernel_layout import kernel_kind, kernel_names
from tfquant.keras.quantized_convolution import activation_name
from tfquant.keras.layers.convolution import batch_norm_to_fold
from tfquant.ptq import _graph as g

_L = keras.layers
_STATISTICS = weakref.WeakKeyDictionary()


def bn_statistics(model):
    """{layer name: (mean, std)} of the pre-activation outputs of the layers a
    BatchNormalization was folded into (as the transformations left them); {} if none."""
    return _STATISTICS.get(model, {})


def _with_statistics(model, statistics):
    _STATISTICS[model] = {k: (np.array(m, dtype=np.float64), np.array(s, dtype=np.float64))
                          for k, (m, s) in statistics.items()}
    return model


def copy_model(model):
    """A float copy of `model` (same graph, names and weights) that carries its
    statistics."""
    return _with_statistics(g.rebuild(model), bn_statistics(model))


def _is_relu6(layer):
    if type(layer) is _L.ReLU:
        return (layer.negative_slope == 0 and layer.threshold == 0
                and layer.max_value is not None and float(layer.max_value) == 6.0)
    return type(layer) is _L.Activation and activation_name(layer) == "relu6"


def _scale_output(kernel, factor, kind):
    if kind == "depthwise":
        shape = kernel.shape
        return (kernel.reshape(shape[:-2] + (shape[-2] * shape[-1],)) * factor).reshape(shape)
    if kind == "transpose":
        return kernel * factor[:, None]
    return kernel * factor


def _fold_setter(layer, batch_norm):
    kind = kernel_kind(layer)
    kernels = {name: np.asarray(keras.ops.convert_to_numpy(getattr(layer, name)), np.float64)
               for name in kernel_names(layer)}
    bias = g.get_bias(layer)
    if batch_norm is not None:
        bn = {w.name: np.asarray(keras.ops.convert_to_numpy(w), np.float64)
              for w in batch_norm.weights}
        mean, variance = bn["moving_mean"], bn["moving_variance"]
        gamma = bn.get("gamma", np.ones_like(mean))
        beta = bn.get("beta", np.zeros_like(mean))
        factor = gamma / np.sqrt(variance + batch_norm.epsilon)
        name = "pointwise_kernel" if kind == "separable" else "kernel"
        kernels[name] = _scale_output(kernels[name], factor,
                                      "conv" if kind == "separable" else kind)
        bias = beta + factor * ((0.0 if bias is None else bias) - mean)
    elif bias is None:
        last = kernels["pointwise_kernel" if kind == "separable" else "kernel"]
        channels = {"depthwise": last.shape[-2] * last.shape[-1],
                    "transpose": last.shape[-2]}.get(kind, last.shape[-1])
        bias = np.zeros(channels)

    def setter(new_layer):
        for name, value in kernels.items():
            getattr(new_layer, name).assign(value.astype(np.float32))
        new_layer.bias.assign(bias.astype(np.float32))

    return setter


def fold_batch_norm(model, relu6_to_relu=False):
    """Folds every BatchNormalization that directly follows a Dense/conv layer into it
    (`w ← w·γ/σ`, `b ← β + γ(b − μ)/σ`, σ = sqrt(moving variance + ε)) and gives every
    Dense/conv layer a bias. `relu6_to_relu`: ReLU6 (layers and activations) become ReLU,
    as DFQ does before equalization (this changes outputs above 6).

    The BN parameters (β, |γ|) are kept as the statistics of the folded layer's output.
    """
    graph = g.graph_of(model)
    replace, skip, statistics = {}, set(), dict(bn_statistics(model))
    for node in graph.nodes:
        layer = node.operation
        if id(layer) in replace:
            continue
        if relu6_to_relu and _is_relu6(layer):
            new = (_L.ReLU(name=layer.name) if type(layer) is _L.ReLU
                   else _L.Activation("relu", name=layer.name))
            replace[id(layer)] = (new, lambda _: None)
            continue
        kind = kernel_kind(layer)
        if kind is None:
            continue
        bn_node = batch_norm_to_fold(graph, node)
        batch_norm = bn_node.operation if bn_node is not None else None
        changes = {"use_bias": True}
        if relu6_to_relu and activation_name(layer) == "relu6":
            changes["activation"] = "relu"
        replace[id(layer)] = (g.clone_layer(layer, **changes), _fold_setter(layer, batch_norm))
        if batch_norm is not None:
            skip.add(id(batch_norm))
            bn = {w.name: keras.ops.convert_to_numpy(w) for w in batch_norm.weights}
            channels = bn["moving_mean"].shape
            beta = bn.get("beta", np.zeros(channels))
            gamma = bn.get("gamma", np.ones(channels))
            statistics[layer.name] = (beta, np.abs(gamma))
    return _with_statistics(g.rebuild(model, replace, skip), statistics)


def _needs_folding(model):
    graph = g.graph_of(model)
    return any(isinstance(node.operation, _L.BatchNormalization) for node in graph.nodes) or any(
        kernel_kind(node.operation) is not None and not node.operation.use_bias
        for node in graph.nodes)


def _scale_statistics(statistics, name, factor):
    if name in statistics:
        mean, std = statistics[name]
        statistics[name] = (mean * factor, std * factor)


def _triples_and_pairs(pairs):
    """Splits the chains into depthwise triples (A → depthwise → B) and plain pairs."""
    by_first = {id(p.first): p for p in pairs}
    triples, used = [], set()
    for pair in pairs:
        if g.scalable_kind(pair.second) == "depthwise" and id(pair.second) in by_first:
            follow = by_first[id(pair.second)]
            if id(pair) not in used and id(follow) not in used:
                triples.append((pair, follow))
                used.update((id(pair), id(follow)))
    return triples, [p for p in pairs if id(p) not in used]


def _safe_ratio(numerator, denominator):
    valid = (numerator > 0) & (denominator > 0)
    return np.where(valid, numerator / np.where(valid, denominator, 1.0), 1.0)


def cross_layer_equalize(model, iterations=100, tolerance=1e-7, relu6_to_relu=True):
    """Cross-layer equalization (DFQ). Folds BN first (`fold_batch_norm`), then for
    every chain `W1 → (ReLU, pooling, ...) → W2` rescales output channel i of W1 (and its
    bias) by `1/s_i` and input channel i of W2 by `s_i`, `s_i = sqrt(r1_i/r2_i)` (r: the
    channel's max|w|), so both ranges become `sqrt(r1_i·r2_i)`; for `W1 → depthwise →
    W2` triples, with `g_i = (r1_i·r2_i·r3_i)^(1/3)`, `s12 = r1/g`, `s23 = g/r3`, all three
    ranges become `g_i`. Positive scaling commutes with ReLU (not ReLU6: with
    `relu6_to_relu`, ReLU6 becomes ReLU; otherwise chains through ReLU6 are left out).
    Repeats until no scale differs from 1 by more than `tolerance`.
    """
    folded = fold_batch_norm(model, relu6_to_relu)
    statistics = dict(bn_statistics(folded))
    pairs = [p for p in g.find_pairs(folded) if g.pair_channels_match(p)]
    triples, singles = _triples_and_pairs(pairs)
    for _ in range(iterations):
        change = 0.0
        for first, second in triples:
            a, d, b = first.first, first.second, second.second
            r1, r2, r3 = (g.channel_ranges(a, "out"), g.channel_ranges(d, "out"),
                          g.channel_ranges(b, "in"))
            valid = (r1 > 0) & (r2 > 0) & (r3 > 0)
            geo = np.cbrt(np.where(valid, r1 * r2 * r3, 1.0))
            s12 = np.where(valid, r1 / np.where(valid, geo, 1.0), 1.0)
            s23 = np.where(valid, geo / np.where(valid, r3, 1.0), 1.0)
            g.scale_channels(a, 1.0 / s12, "out")
            g.scale_channels(d, s12, "in")
            g.scale_channels(d, 1.0 / s23, "out")
            g.scale_channels(b, s23, "in")
            _scale_statistics(statistics, a.name, 1.0 / s12)
            _scale_statistics(statistics, d.name, 1.0 / s23)
            change = max(change, np.abs(np.log(s12)).max(), np.abs(np.log(s23)).max())
        for pair in singles:
            r1, r2 = g.channel_ranges(pair.first, "out"), g.channel_ranges(pair.second, "in")
            scale = np.sqrt(_safe_ratio(r1, r2))
            g.scale_channels(pair.first, 1.0 / scale, "out")
            g.scale_channels(pair.second, scale, "in")
            _scale_statistics(statistics, pair.first.name, 1.0 / scale)
            change = max(change, np.abs(np.log(scale)).max())
        if change <= tolerance:
            break
    return _with_statistics(folded, statistics)


def absorb_high_bias(model, num_std=3.0):
    """High-bias absorption (DFQ): for a chain `W1 → ReLU → W2` where W1's output has
    BN statistics (β, γ), `c = max(0, β − num_std·γ)` per channel; `b1 −= c`,
    `b2 += W2·c` (summed over W2's kernel window). Exact wherever the pre-activation is
    ≥ c (≈ 99.9 % of a normal at 3σ); chains through zero padding are left out (the
    padded zeros would not shift). Returns a new model (BN folded first if needed)."""
    model = fold_batch_norm(model) if _needs_folding(model) else copy_model(model)
    statistics = dict(bn_statistics(model))
    for pair in g.find_pairs(model):
        name = pair.first.name
        if (name not in statistics or pair.activation != "relu" or not pair.shift_invariant
                or not g.pair_channels_match(pair)):
            continue
        mean, std = statistics[name]
        shift = np.maximum(0.0, mean - num_std * std)
        if not np.any(shift > 0):
            continue
        g.set_bias(pair.first, g.get_bias(pair.first) - shift)
        g.set_bias(pair.second, g.get_bias(pair.second) + g.kernel_times_input(pair.second, shift))
        statistics[name] = (mean - shift, std)
    return _with_statistics(model, statistics)


def factorize_weights(model):
    """Weight factorization (Meller et al. 2019): for every chain `W1 → (ReLU, ...) →
    W2`, output channel i of W1 is multiplied by `s_i = R/r_i` (r_i its max|w|,
    R = max_i r_i) and input channel i of W2 by `1/s_i`: all output channels of W1 get
    the same range, so a per-tensor grid serves W1 as well as a per-channel one. Same
    function (positive scaling through ReLU). Returns a new model (BN folded first)."""
    model = fold_batch_norm(model) if _needs_folding(model) else copy_model(model)
    statistics = dict(bn_statistics(model))
    for pair in g.find_pairs(model):
        if not g.pair_channels_match(pair):
            continue
        ranges = g.channel_ranges(pair.first, "out")
        scale = _safe_ratio(np.full_like(ranges, ranges.max()), ranges)
        g.scale_channels(pair.first, scale, "out")
        g.scale_channels(pair.second, 1.0 / scale, "in")
        _scale_statistics(statistics, pair.first.name, scale)
    return _with_statistics(model, statistics)


def dfq(model, relu6_to_relu=True, absorb=True, num_std=3.0, iterations=100):
    """The data-free pipeline on the float model: fold BN, (ReLU6 → ReLU), cross-layer
    equalization, (high-bias absorption). Bias correction needs the quantized weights:
    `tfquant.ptq.quantize(..., data_free=True)` applies it after quantization."""
    result = cross_layer_equalize(model, iterations=iterations, relu6_to_relu=relu6_to_relu)
    return absorb_high_bias(result, num_std) if absorb else result
