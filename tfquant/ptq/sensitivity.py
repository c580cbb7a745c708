"""Per-layer sensitivity to weight quantization, and a mixed-precision search.

Sensitivity of a layer at b bits: quantize only that layer's (BN-folded) kernel to a
b-bit symmetric grid, run the model, and compare with the float model:
`SQNR = 10·log10(Σ y² / Σ (ŷ − y)²)` dB over the outputs, and the accuracy change when
labels are given.
"""

import dataclasses

import numpy as np

from tfquant.export import files
from tfquant.keras.config import LayerRule
from tfquant.keras.kernel_layout import flat_kernel_and_axis, kernel_kind, kernel_names
from tfquant.quantizers.calibration import symmetric_quantize, weight_clip
from tfquant.quantizers.metrics import sqnr_db
from tfquant.ptq.equalization import fold_batch_norm


def _quantized(kernel, kind, bits, per_channel, method):
    flat, axis = flat_kernel_and_axis(kernel, kind, per_channel)
    clip = weight_clip(flat, bits, method, axis)
    return symmetric_quantize(flat, clip, bits, axis).reshape(kernel.shape)


@dataclasses.dataclass
class SensitivityReport:
    """rows: one dict per (layer, bits): layer, bits, params, sqnr_db, accuracy_delta
    (None without labels). float_accuracy: the float model's (None without labels)."""

    rows: list
    float_accuracy: float = None

    def get(self, layer, bits):
        for row in self.rows:
            if row["layer"] == layer and row["bits"] == bits:
                return row
        raise KeyError((layer, bits))

    def layers(self):
        seen = []
        for row in self.rows:
            if row["layer"] not in seen:
                seen.append(row["layer"])
        return seen

    def table(self):
        """A text table: one line per layer, SQNR (and accuracy change) per bit width."""
        bits = sorted({row["bits"] for row in self.rows}, reverse=True)
        labelled = self.float_accuracy is not None
        header = f"{'layer':<24}{'params':>9}" + "".join(f"{f'SQNR@{b}b dB':>13}" for b in bits)
        if labelled:
            header += "".join(f"{f'Δacc@{b}b':>10}" for b in bits)
        lines = [header, "-" * len(header)]
        for layer in self.layers():
            rows = {b: self.get(layer, b) for b in bits}
            line = f"{layer[:23]:<24}{rows[bits[0]]['params']:>9}"
            line += "".join(f"{rows[b]['sqnr_db']:>13.1f}" for b in bits)
            if labelled:
                line += "".join(f"{100 * rows[b]['accuracy_delta']:>+10.2f}" for b in bits)
            lines.append(line)
        if labelled:
            lines.append(f"float accuracy {100 * self.float_accuracy:.2f} %")
        return "\n".join(lines)

    def plot(self, path):
        """A bar chart (SQNR per layer and bit width) as PNG; needs matplotlib."""
        plt = files.pyplot("SensitivityReport.plot (SensitivityReport.table() needs nothing)")
        layers = self.layers()
        bits = sorted({row["bits"] for row in self.rows}, reverse=True)
        width = 0.8 / len(bits)
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(layers)), 4))
        for k, b in enumerate(bits):
            ax.bar(np.arange(len(layers)) + k * width,
                   [self.get(name, b)["sqnr_db"] for name in layers], width, label=f"{b} bit")
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("output SQNR (dB), only this layer quantized")
        ax.legend()
        files.save_figure(fig, path)
        return path


def _accuracy(outputs, labels):
    labels = np.asarray(labels).reshape(-1)
    return float(np.mean(np.argmax(outputs, axis=-1).reshape(-1) == labels))


def layer_sensitivity(model, data, labels=None, bits=(8, 4, 2), per_channel=True,
                      weight_calibrator="minmax", batch_size=128):
    """Sensitivity of every Dense/conv layer of `model` (BN folded) at each of `bits`:
    only that layer's kernel quantized. `data`: an array (or list of arrays) of inputs.
    Returns a `SensitivityReport`."""
    folded = fold_batch_norm(model)
    reference = np.asarray(folded.predict(data, batch_size=batch_size, verbose=0))
    float_accuracy = None if labels is None else _accuracy(reference, labels)
    rows = []
    for layer in folded.layers:
        kind = kernel_kind(layer)
        if kind is None:
            continue
        names = kernel_names(layer)
        saved = {n: np.asarray(getattr(layer, n).numpy()) for n in names}
        params = int(sum(v.size for v in saved.values()))
        for b in bits:
            for n in names:
                kernel_layout = "conv" if n == "pointwise_kernel" else (
                    "depthwise" if n == "depthwise_kernel" else kind)
                getattr(layer, n).assign(_quantized(saved[n].astype(np.float64), kernel_layout,
                                                    b, per_channel,
                                                    weight_calibrator).astype(np.float32))
            outputs = np.asarray(folded.predict(data, batch_size=batch_size, verbose=0))
            rows.append({"layer": layer.name, "bits": b, "params": params,
                         "sqnr_db": sqnr_db(reference, outputs),
                         "accuracy_delta": None if labels is None
                         else _accuracy(outputs, labels) - float_accuracy})
        for n in names:
            getattr(layer, n).assign(saved[n])
    return SensitivityReport(rows, float_accuracy)


class MixedPrecisionPlan(list):
    """A list of `tfquant.LayerRule(name, weight_bits=b)` (pass it as
    `QuantConfig(rules=plan)`), with `bits` {layer: b}, `size_bytes` (kernels at their
    bits, other parameters at 32 bits), `float_bytes`, and `noise` (the summed relative
    output noise power Σ 10^(−SQNR/10) the plan is expected to cost)."""

    bits: dict
    size_bytes: float
    float_bytes: float
    noise: float


def mixed_precision(model, data, size_ratio=0.2, bits=(8, 4, 2), labels=None, report=None,
                    per_channel=True, weight_calibrator="minmax"):
    """Chooses weight bits per layer so that the model size is at most `size_ratio`
    times the float size, losing the least: start with every layer at max(bits); while
    over budget, lower by one step the layer whose next step costs the least added
    output noise power per byte saved (noise from the per-layer SQNR of
    `layer_sensitivity`, assumed additive). Raises ValueError when even the lowest bits
    miss the budget. Returns a `MixedPrecisionPlan`."""
    options = sorted(set(bits), reverse=True)
    report = report or layer_sensitivity(model, data, labels, options, per_channel,
                                         weight_calibrator)
    folded = fold_batch_norm(model)
    total_params = folded.count_params()
    layers = report.layers()
    params = {name: report.get(name, options[0])["params"] for name in layers}
    other = total_params - sum(params.values())

    def noise(name, b):
        return 10.0 ** (-report.get(name, b)["sqnr_db"] / 10.0)

    chosen = {name: options[0] for name in layers}

    def size():
        return 4.0 * other + sum(params[n] * chosen[n] / 8.0 for n in layers)

    budget = float(size_ratio) * 4.0 * total_params
    while size() > budget:
        best, best_cost = None, None
        for name in layers:
            index = options.index(chosen[name])
            if index + 1 == len(options):
                continue
            lower = options[index + 1]
            saved = params[name] * (chosen[name] - lower) / 8.0
            cost = (noise(name, lower) - noise(name, chosen[name])) / saved
            if best_cost is None or cost < best_cost:
                best, best_cost = (name, lower), cost
        if best is None:
            raise ValueError(
                f"mixed_precision: even {options[-1]}-bit weights everywhere take "
                f"{size():.0f} bytes, over the budget {budget:.0f} bytes "
                f"({size_ratio}× the float size); allow fewer bits or a larger ratio.")
        chosen[best[0]] = best[1]
    plan = MixedPrecisionPlan(LayerRule(name, weight_bits=chosen[name]) for name in layers)
    plan.bits = dict(chosen)
    plan.size_bytes = size()
    plan.float_bytes = 4.0 * total_params
    plan.noise = sum(noise(n, chosen[n]) for n in layers)
    return plan
