"""Bias correction (Nagel et al. 2019): quantizing W to W̃ shifts the expected output of
a layer by `ε·E[x]` (ε = W̃ − W); subtracting that from the bias removes the shift.

- analytic: `E[x]` from the BatchNormalization statistics of the layer before, through
  its activation: the mean of a clipped normal (ReLU: [0, ∞), ReLU6: [0, 6]);
- empirical: from calibration data, layer by layer in graph order, comparing the mean
  pre-bias output of the quantized model (every earlier correction applied) with the
  float model's, so the corrected layer's mean output error on that data is 0.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfquant.keras.slots import quantizers_bypassed
from tfquant.ptq import _graph as g
from tfquant.ptq import _sites as s
from tfquant.ptq.equalization import bn_statistics

_erf = np.vectorize(math.erf)


def _cdf(z):
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def _pdf(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def clipped_normal_mean(mean, std, lo=0.0, hi=np.inf):
    """E[clip(X, lo, hi)] for X ~ N(mean, std²):
    `lo·Φ(α) + hi·(1 − Φ(β)) + μ·(Φ(β) − Φ(α)) + σ·(φ(α) − φ(β))`, α = (lo − μ)/σ,
    β = (hi − μ)/σ (terms with an infinite bound drop out); `clip(μ)` where σ = 0."""
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    safe = np.where(std > 0, std, 1.0)
    alpha = (lo - mean) / safe
    cdf_a, pdf_a = _cdf(alpha), _pdf(alpha)
    if np.isinf(hi):
        cdf_b, pdf_b, upper = np.ones_like(mean), np.zeros_like(mean), 0.0
    else:
        beta = (hi - mean) / safe
        cdf_b, pdf_b = _cdf(beta), _pdf(beta)
        upper = hi * (1.0 - cdf_b)
    value = lo * cdf_a + upper + mean * (cdf_b - cdf_a) + std * (pdf_a - pdf_b)
    return np.where(std > 0, value, np.clip(mean, lo, hi))


_CLIPS = {"relu": (0.0, np.inf), "relu6": (0.0, 6.0)}


def _quantized_kernel(wrapper):
    """The deployed kernel W̃ of a one-kernel wrapper, in the layer's kernel layout."""
    values, _ = wrapper.deployed_kernels()["kernel"]
    return np.asarray(values, np.float64).reshape(tuple(wrapper.layer.kernel.shape))


def analytic_bias_correction(qmodel, float_model, float_kernels):
    """Corrects, in place, every Dense/conv/depthwise layer of `qmodel` whose input comes
    (through ReLU/ReLU6, average pooling or dropout) from a layer with BN statistics in
    `float_model` (`bn_statistics`). `float_kernels`: {layer name: {"kernel": the float
    folded kernel}} before any weight rewriting. Returns the corrected layer names."""
    statistics = bn_statistics(float_model)
    by_name = {layer.name: layer for layer in qmodel.layers}
    corrected = []
    for pair in g.find_pairs(float_model, allow_relu6=True):
        wrapper = by_name.get(pair.second.name)
        if (pair.first.name not in statistics or not pair.mean_preserving
                or wrapper is None or not hasattr(wrapper, "deployed_kernels")
                or g.scalable_kind(wrapper.layer) is None
                or wrapper.name not in float_kernels):
            continue
        mean, std = statistics[pair.first.name]
        if pair.activation in _CLIPS:
            expected = clipped_normal_mean(mean, std, *_CLIPS[pair.activation])
        else:
            expected = mean
        error = _quantized_kernel(wrapper) - float_kernels[wrapper.name]["kernel"]
        if error.shape[-2] != expected.shape[0]:
            continue
        shift = g.kernel_times(g.scalable_kind(wrapper.layer), error, expected)
        if s.add_to_bias(wrapper, -shift):
            corrected.append(wrapper.name)
    return corrected


def _pre_bias_mean(wrapper, inputs, kernels, quantized):
    outputs = wrapper.convolve(tf.convert_to_tensor(inputs), kernels, False, quantized)
    outputs = keras.ops.convert_to_numpy(outputs).astype(np.float64)
    flat = outputs.reshape(-1, outputs.shape[-1])
    return flat.sum(axis=0), flat.shape[0]


def _as_tensors(kernels):
    return {k: tf.constant(v, tf.float32) for k, v in kernels.items()}


def float_output_means(qmodel, batches):
    """{wrapper name: mean pre-bias output per channel} of the float model (every
    quantizer bypassed), with the kernels the wrappers hold now."""
    targets = s.wrappers(qmodel)
    if not targets:
        return {}
    extractor = keras.Model(s.model_inputs(qmodel), [w.input for w in targets])
    kernels = {w.name: _as_tensors(s.folded_kernels(w)) for w in targets}
    sums, counts = {}, {}
    with quantizers_bypassed(qmodel):
        for batch in batches:
            outputs = s.run(extractor, batch)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for w, x in zip(targets, outputs):
                total, count = _pre_bias_mean(w, x, kernels[w.name], quantized=False)
                sums[w.name] = sums.get(w.name, 0.0) + total
                counts[w.name] = counts.get(w.name, 0) + count
    return {name: sums[name] / counts[name] for name in sums}


def empirical_bias_correction(qmodel, batches, float_means):
    """Layer by layer in graph order: `b −= E[conv(x̃, W̃)] − E[conv(x, W)]`, x̃ the
    layer's input in the quantized model (earlier corrections applied), x and W float
    (`float_means` from `float_output_means` before the weights were quantized)."""
    corrected = []
    for wrapper in s.wrappers(qmodel):
        if wrapper.name not in float_means:
            continue
        extractor = keras.Model(s.model_inputs(qmodel), wrapper.input)
        kernels = wrapper._quantized_kernels(_as_tensors(s.folded_kernels(wrapper)), False)
        total, count = 0.0, 0
        for batch in batches:
            x = s.run(extractor, batch)
            part, n = _pre_bias_mean(wrapper, x, kernels, quantized=True)
            total, count = total + part, count + n
        if s.add_to_bias(wrapper, -(total / count - float_means[wrapper.name])):
            corrected.append(wrapper.name)
    return corrected
