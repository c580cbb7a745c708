"""The numbers of `tfquant report`: one row per quantized kernel, per activation
quantizer, and per layer of the Keras-vs-LiteRT comparison of a quantized model."""

import re

import keras
import numpy as np

from tfquant.export.integer_exact import IntegerModel
from tfquant.keras import QuantizedConvolution, quantizer_slots
from tfquant.keras.kernel_layout import flatten_depthwise
from tfquant.keras.slots import quantizers_bypassed
from tfquant.quantizers.metrics import sqnr_db, sqnr_db_of_sums


def weight_rows(qmodel):
    """One dict per quantized kernel: layer, kernel, bits, float and quantized values
    (BN folded, depthwise channels flattened), output axis, weight SQNR (dB), and the
    per-channel step of the grid (max |quantized| / (2^(b−1) − 1))."""
    rows = []
    for layer in qmodel.layers:
        if not isinstance(layer, QuantizedConvolution):
            continue
        kernels, _ = layer.folded_kernels_and_bias()
        for name, (quantized, axis) in layer.deployed_kernels().items():
            values = kernels[name]
            if layer.kernel_layout(name) == "depthwise":
                values = flatten_depthwise(values)
            values = np.asarray(values, dtype=np.float64)
            quantized = np.asarray(quantized, dtype=np.float64)
            sqnr = sqnr_db(values, quantized)
            bits = layer.weight_quantizer.num_bits
            channel_axes = tuple(a for a in range(quantized.ndim) if a != axis % quantized.ndim)
            steps = np.max(np.abs(quantized), axis=channel_axes) / float(2 ** (bits - 1) - 1)
            rows.append({"layer": layer.name, "kernel": name, "bits": bits,
                         "quantizer": type(layer.weight_quantizer).__name__,
                         "values": values, "quantized": quantized, "steps": steps,
                         "sqnr_db": sqnr, "params": int(values.size)})
    return rows


def _quantizer_range(quantizer, variables):
    """The (min, max) a quantizer's state gives, or None when it has no plain range."""
    import numpy as np

    if "min" in variables and "max" in variables:
        return float(np.min(variables["min"].numpy())), float(np.max(variables["max"].numpy()))
    if "alpha" in variables:
        return 0.0, float(np.max(variables["alpha"].numpy()))
    if hasattr(quantizer, "min_value") and hasattr(quantizer, "max_value"):
        return float(quantizer.min_value), float(quantizer.max_value)
    return None


def activation_rows(qmodel, samples, batch_size=64):
    """One dict per activation quantizer that writes a layer output (ActivationFakeQuant,
    a convolution's output quantizer): its range and the range of the values it wrote
    on `samples` (inference mode)."""
    probes, rows = [], []
    for slot in quantizer_slots(qmodel, weights=False):
        if slot.role not in ("activation", "output"):
            continue
        layer, quantizer, variables = slot.layer, slot.quantizer, slot.variables
        probes.append(layer.output)
        rows.append({"layer": layer.name, "quantizer": type(quantizer).__name__,
                     "bits": quantizer.num_bits,
                     "range": _quantizer_range(quantizer, variables)})
    if not rows:
        return rows
    inputs = qmodel.inputs if len(qmodel.inputs) > 1 else qmodel.inputs[0]
    probe = keras.Model(inputs, probes)
    low = [np.inf] * len(rows)
    high = [-np.inf] * len(rows)
    batches = -(-len(samples) // batch_size)
    progress = keras.utils.Progbar(batches, unit_name="batch")
    for i in range(batches):
        outputs = probe(samples[i * batch_size:(i + 1) * batch_size], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for k, output in enumerate(outputs):
            output = np.asarray(output)
            low[k] = min(low[k], float(output.min()))
            high[k] = max(high[k], float(output.max()))
        progress.update(i + 1)
    for row, lo, hi in zip(rows, low, high):
        row["observed"] = (lo, hi)
    return rows


def _layer_of_tensor(tensor_name, layer_names):
    """The Keras layer whose output a flatbuffer tensor is: the first name of the fused
    tensor's name list, `model/layer_1/Op`, with the tracing suffix `_1` dropped."""
    first = tensor_name.split(";")[0].split("/")
    if len(first) < 2:
        return None
    name = first[1]
    if name in layer_names:
        return name
    stripped = re.sub(r"_\d+$", "", name)
    return stripped if stripped in layer_names else None


def _same_sample_shape(tensor_shape, layer):
    """Whether a flatbuffer tensor holds as many values per sample as `layer`'s output."""
    keras_shape = getattr(layer.output, "shape", None)
    if keras_shape is None:
        return False
    return np.prod(tensor_shape[1:]) == np.prod([d or 0 for d in keras_shape[1:]])


def integer_rows(qmodel, samples, flatbuffer, backend="xnnpack", batch_size=64):
    """Layer by layer, how far the float simulation (the Keras model) and the integer
    model (`tfquant.integer_model`, what LiteRT computes) are from float (the model with
    its quantizers bypassed), and how often the two part by at least one output step.

    One dict per layer whose output is an int8 tensor of `flatbuffer`, in graph order:
    layer, op, SQNR of each against float (dB), fraction of values that differ.
    """
    integer = IntegerModel(flatbuffer, backend)
    names = {layer.name for layer in qmodel.layers}
    chosen = {}
    for tensor in integer.activation_tensors():
        layer = _layer_of_tensor(tensor.name, names)
        # A fused tensor's name can start with a layer whose output it is not (the
        # converter names MobileNetV3Small's first CONV_2D after `conv_1`): sizes decide.
        if (layer is not None and layer not in chosen
                and _same_sample_shape(tensor.shape, qmodel.get_layer(layer))):
            chosen[layer] = tensor
    if not chosen:
        return []
    layers = [qmodel.get_layer(name) for name in chosen]
    inputs = qmodel.inputs if len(qmodel.inputs) > 1 else qmodel.inputs[0]
    probe = keras.Model(inputs, [layer.output for layer in layers])
    sums = {name: np.zeros(4) for name in chosen}  # Σx², Σ(sim−x)², Σ(int−x)², #differ
    counts = dict.fromkeys(chosen, 0)
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        simulated = probe(batch, training=False)
        with quantizers_bypassed(qmodel):
            reference = probe(batch, training=False)
        tensors = integer.tensor_values(batch, [t.index for t in chosen.values()])
        for name, sim, ref in zip(chosen, _as_list(simulated), _as_list(reference)):
            tensor = chosen[name]
            sim, ref = np.asarray(sim, np.float64), np.asarray(ref, np.float64)
            got = np.asarray(tensors[tensor.index], np.float64)
            if got.shape != sim.shape:
                got = got.reshape(sim.shape)
            sums[name] += [np.sum(ref ** 2), np.sum((sim - ref) ** 2), np.sum((got - ref) ** 2),
                           np.count_nonzero(np.round(np.abs(sim - got) / tensor.scale))]
            counts[name] += sim.size
    rows = []
    for name, tensor in chosen.items():
        signal, sim_noise, int_noise, differ = sums[name]
        rows.append({
            "layer": name, "op": tensor.operator,
            "float_sim_sqnr_db": sqnr_db_of_sums(signal, sim_noise),
            "integer_sqnr_db": sqnr_db_of_sums(signal, int_noise),
            "differ": differ / max(counts[name], 1),
        })
    return rows


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
