"""The numbers of `tfquant report`: one row per quantized kernel and per activation
quantizer of a quantized model."""

import keras
import numpy as np

from tfquant.keras import QuantizedConvolution, quantizer_slots
from tfquant.keras.kernel_layout import flatten_depthwise
from tfquant.quantizers.metrics import sqnr_db


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
