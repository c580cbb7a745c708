"""`tfquant.ptq.quantize`: post-training quantization of a float Keras model."""

import contextlib

import keras
import numpy as np

from tfquant.keras.batch_norm import freeze_batch_norm
from tfquant.keras.config import QuantConfig
from tfquant.keras.kernel_layout import flat_kernel_and_axis
from tfquant.keras.slots import quantizers_bypassed
from tfquant.keras.tf_keras_models import keras3_model_and_config
from tfquant.keras.transform import quantize_model
from tfquant.ptq import _sites as s
from tfquant.ptq.adaround import adaround_wrapper
from tfquant.ptq.bias_correction import (
    analytic_bias_correction,
    empirical_bias_correction,
    float_output_means,
)
from tfquant.ptq.equalization import dfq, fold_batch_norm
from tfquant.ptq.gptq import gptq_wrapper
from tfquant.ptq.zero_shot import distill_calibration_data
from tfquant.quantizers.calibration import make_calibrator, symmetric_quantize, weight_clip


def _uses_grid_weights(wrapper):
    return type(wrapper.weight_quantizer).__name__ == "MinMaxWeightQuantizer"


def _calibrator_choice(spec, config, role, names, owner):
    """The calibrator of one tensor: from `spec` (one value or a per-layer dict; the
    explicit argument wins), else from `config`'s defaults and LayerRules for `owner`
    (the layer the tensor belongs to; None: a model input)."""
    if spec is not None:
        return s.choose(spec, names, owner, "minmax")
    if config is None:
        return "minmax"
    return getattr(config.layer_spec(owner), f"{role}_calibrator")


def calibrate_activations(qmodel, batches, calibrator=None, verbose=1, config=None):
    """Sets the range of every `MovingAverageQuantizer` of `qmodel` (a `quantize_model`
    result) from a float pass over `batches` (see `calibration_batches`): the range
    variables `min`/`max` get the calibrator's range and `observed` = 1.

    `calibrator`: a name ("minmax", "ema", "percentile", "mse", "entropy"), a
    `Calibrator` instance (a template), or a dict {layer name, regular expression or
    layer class: either of those} tried in order against the quantized tensor's layer
    (unmatched: "minmax"); None: `config.activation_calibrator` and its LayerRules
    (no config: "minmax"). Returns {quantizer key: (lo, hi)}; quantizers without range
    variables (fixed ranges, learned ranges) are left alone."""
    sites = [site for site in s.activation_sites(qmodel)
             if {"min", "max"} <= set(site.variables)]
    calibrators = {site.key: make_calibrator(_calibrator_choice(
        calibrator, config, "activation", site.names, site.owner)) for site in sites}
    record = {key: cal.observe for key, cal in calibrators.items()}
    bar = keras.utils.Progbar(len(batches), unit_name="batch") if verbose else None
    with quantizers_bypassed(qmodel, record):
        for index, batch in enumerate(batches):
            s.run(qmodel, batch)
            if bar is not None:
                bar.update(index + 1)
    ranges = {}
    for site in sites:
        quantizer = site.quantizer
        lo, hi = calibrators[site.key].compute_range(
            quantizer.num_bits, getattr(quantizer, "symmetric", False))
        s.set_range(site, lo, hi)
        ranges[site.key] = (lo, hi)
    return ranges


def calibrate_weights(qmodel, weight_calibrator=None, config=None, exclude=()):
    """Clips the weights of every wrapper with a `MinMaxWeightQuantizer` at the clip of
    `weight_calibrator` ("minmax", "mse", "sawb", or a dict {layer name, regex or class:
    name}; unmatched: "minmax"; None: `config.weight_calibrator` and its LayerRules) and
    stores them on the grid, so that the quantizer (which takes max|w|) reproduces that
    grid; the layers named in `exclude` are left alone. Returns the names of the layers
    changed."""
    changed = []
    for wrapper in s.wrappers(qmodel):
        if wrapper.name in exclude:
            continue
        method = _calibrator_choice(weight_calibrator, config, "weight", (wrapper.name,),
                                    wrapper.layer)
        if method == "minmax" or not _uses_grid_weights(wrapper):
            continue
        quantizer = wrapper.weight_quantizer
        for name, kernel in s.folded_kernels(wrapper).items():
            kind = wrapper.kernel_layout(name)
            flat, axis = flat_kernel_and_axis(kernel, kind, quantizer.per_channel)
            clip = weight_clip(flat, quantizer.num_bits, method, axis)
            grid = symmetric_quantize(flat, clip, quantizer.num_bits, axis)
            s.write_folded_kernel(wrapper, name, grid.reshape(kernel.shape))
        changed.append(wrapper.name)
    return changed


def _layer_inputs(qmodel, targets, batches, max_samples, quantized):
    """{wrapper name: its inputs over the first `max_samples` samples}, in the quantized
    model as it stands (`quantized`) or with every quantizer bypassed."""
    extractor = keras.Model(s.model_inputs(qmodel), [w.input for w in targets])
    parts, total = [[] for _ in targets], 0
    with contextlib.nullcontext() if quantized else quantizers_bypassed(qmodel):
        for batch in batches:
            outputs = s.run(extractor, batch)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for part, x in zip(parts, outputs):
                part.append(keras.ops.convert_to_numpy(x))
            total += len(parts[0][-1])
            if total >= max_samples:
                break
    return {w.name: np.concatenate(part)[:max_samples] for w, part in zip(targets, parts)}


def adaround_weights(qmodel, batches, weight_calibrator=None, iterations=2000,
                     max_samples=512, verbose=1, config=None, **kwargs):
    """AdaRound (`tfquant.ptq.adaround`) for every one-kernel wrapper with a
    `MinMaxWeightQuantizer`, in graph order. Each layer learns to map its input in the
    quantized model (activation ranges must be set; earlier layers already rounded) to
    its float output on the float model's input. `weight_calibrator` (or `config`) gives
    the clip of each grid, as in `calibrate_weights`. Returns {layer name:
    `AdaRoundResult`}."""
    targets = [w for w in s.wrappers(qmodel)
               if _uses_grid_weights(w) and w.kind != "separable"]
    if not targets:
        return {}
    float_inputs = _layer_inputs(qmodel, targets, batches, max_samples, quantized=False)
    results = {}
    bar = keras.utils.Progbar(len(targets), unit_name="layer") if verbose else None
    for index, wrapper in enumerate(targets):
        method = _calibrator_choice(weight_calibrator, config, "weight", (wrapper.name,),
                                    wrapper.layer)
        inputs = _layer_inputs(qmodel, [wrapper], batches, max_samples, quantized=True)
        results[wrapper.name] = adaround_wrapper(
            wrapper, inputs[wrapper.name], method, float_inputs[wrapper.name],
            iterations=iterations, **kwargs)
        if bar is not None:
            bar.update(index + 1)
    return results


def _gptq_targets(qmodel):
    return [w for w in s.wrappers(qmodel) if _uses_grid_weights(w) and w.kind == "dense"]


def gptq_weights(qmodel, batches, weight_calibrator=None, max_samples=512, act_order=True,
                 damping=0.01, block_size=128, verbose=1, config=None):
    """GPTQ (`tfquant.ptq.gptq`) for every Dense wrapper (Dense, EinsumDense in Dense
    form, attention projections) with a `MinMaxWeightQuantizer`, in graph order. Each
    layer's Hessian comes from its inputs in the quantized model as it stands (activation
    ranges must be set; earlier layers already GPTQ'd), over the first `max_samples`
    samples. `weight_calibrator` (or `config`) gives the clip of each grid, as in
    `calibrate_weights`. One step per output channel (or per tensor): exports as it is.
    Returns {layer name: `GPTQResult`}."""
    targets = _gptq_targets(qmodel)
    results = {}
    bar = keras.utils.Progbar(len(targets), unit_name="layer") if verbose and targets else None
    for index, wrapper in enumerate(targets):
        method = _calibrator_choice(weight_calibrator, config, "weight", (wrapper.name,),
                                    wrapper.layer)
        inputs = _layer_inputs(qmodel, [wrapper], batches, max_samples, quantized=True)
        results[wrapper.name] = gptq_wrapper(wrapper, inputs[wrapper.name], method,
                                             act_order, damping, block_size)
        if bar is not None:
            bar.update(index + 1)
    return results


def quantize(model, calibration_data=None, config=None, calibrator=None,
             weight_calibrator=None, data_free=False, bias_correction=None,
             rounding="nearest", adaround_iterations=2000, relu6_to_relu=True,
             high_bias_absorption=True, batch_size=32, num_batches=None, verbose=1,
             zero_shot=False):
    """Post-training quantization: returns what `tfquant.quantize_model(model, config)`
    returns, with folded BN frozen (`tfquant.freeze_batch_norm`), weights calibrated and
    every activation range set from `calibration_data` — ready for `export_tflite`,
    evaluation, or QAT fine-tuning with `fit`.

    Args:
      model: a float Keras Sequential/Functional model.
      calibration_data: an array (list of arrays for several inputs), a
        `tf.data.Dataset` or a generator of batches (`x` or `(x, y)` elements).
        Activation ranges always need it (a few hundred samples suffice).
      config: a `tfquant.QuantConfig` (per-tensor weights: `per_channel_weights=False`);
        its `activation_calibrator` / `weight_calibrator` (defaults and LayerRules)
        choose the calibrators unless the two arguments below are given.
      calibrator: activation calibrator ("minmax", "ema", "percentile", "mse",
        "entropy", a `tfquant.ptq.Calibrator`, or a dict {layer name/regex/class: one of
        those}); None: from `config`.
      weight_calibrator: "minmax", "mse", "sawb" or a dict {layer name/regex/class:
        name}, for layers with the default `MinMaxWeightQuantizer`; None: from `config`.
      data_free: first run DFQ on the float model (`tfquant.ptq.dfq`: fold BN,
        ReLU6 → ReLU if `relu6_to_relu`, cross-layer equalization, high-bias
        absorption if `high_bias_absorption`); bias correction then defaults to
        "analytic".
      bias_correction: None (analytic with `data_free`, else none), False, "analytic"
        (from BN statistics) or "empirical" (from `calibration_data`).
      rounding: "nearest", "adaround" (`adaround_iterations` per layer, on at most
        512 calibration samples) or "gptq" (Dense layers, on at most 512 samples;
        other layers round to nearest; options: `gptq_weights`); for both the
        activation ranges are calibrated first.
      batch_size: batch size for array data; num_batches: use at most this many batches.
      verbose: 1 shows progress bars.
      zero_shot: without `calibration_data`: calibrate on inputs distilled from the
        model's BatchNormalization statistics (`tfquant.ptq.distill_calibration_data`,
        ZeroQ, 256 samples): post-training quantization with no data at all.
    """
    model, config = keras3_model_and_config(model, config or QuantConfig(), "ptq.quantize")
    if rounding not in ("nearest", "adaround", "gptq"):
        raise ValueError(f"rounding={rounding!r}: use 'nearest', 'adaround' or 'gptq'.")
    if bias_correction is None:
        bias_correction = "analytic" if data_free else False
    if bias_correction not in (False, "analytic", "empirical"):
        raise ValueError(f"bias_correction={bias_correction!r}: use False, 'analytic' or "
                         "'empirical'.")
    if zero_shot and calibration_data is not None:
        raise ValueError("tfquant.ptq.quantize: give calibration_data or zero_shot=True, "
                         "not both.")
    if zero_shot:
        calibration_data = distill_calibration_data(model)
    if calibration_data is None:
        raise ValueError(
            "tfquant.ptq.quantize needs calibration_data for the activation ranges (a few "
            "hundred samples suffice); data_free=True only keeps the weight "
            "transformations (equalization, absorption, analytic bias correction) "
            "data-free; zero_shot=True distills calibration inputs from the BN "
            "statistics.")
    float_model = dfq(model, relu6_to_relu, high_bias_absorption) if data_free else model
    qmodel = quantize_model(float_model, config)
    freeze_batch_norm(qmodel)
    batches = s.calibration_batches(calibration_data, len(qmodel.inputs), batch_size,
                                    num_batches)
    batches = s.fix_batch_rank(batches, qmodel)

    float_kernels = {w.name: s.folded_kernels(w) for w in s.wrappers(qmodel)}
    float_means = (float_output_means(qmodel, batches) if bias_correction == "empirical"
                   else None)
    if rounding == "adaround":
        # AdaRound learns on the quantized model's inputs: the ranges come first.
        calibrate_activations(qmodel, batches, calibrator, verbose, config)
        adaround_weights(qmodel, batches, weight_calibrator, adaround_iterations,
                         verbose=verbose, config=config)
    elif rounding == "gptq":
        # GPTQ rounds the float Dense kernels on the inputs of the quantized model: the
        # other layers' grids and the ranges come first.
        calibrate_weights(qmodel, weight_calibrator, config,
                          exclude={w.name for w in _gptq_targets(qmodel)})
        calibrate_activations(qmodel, batches, calibrator, verbose, config)
        gptq_weights(qmodel, batches, weight_calibrator, verbose=verbose, config=config)
    else:
        calibrate_weights(qmodel, weight_calibrator, config)
        calibrate_activations(qmodel, batches, calibrator, verbose, config)
    if bias_correction == "analytic":
        statistics_model = float_model if data_free else fold_batch_norm(model)
        analytic_bias_correction(qmodel, statistics_model, float_kernels)
    elif bias_correction == "empirical":
        empirical_bias_correction(qmodel, batches, float_means)
    return qmodel
