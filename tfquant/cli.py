"""The `tfquant` command: quantize, export, inspect and report on models from the shell.

    tfquant quantize MODEL.keras [--calib DATA.npz] [--config CONFIG.json] -o out.keras
    tfquant export MODEL.keras -o model.tflite [--data DATA.npz] [--int8_io] [--int4]
    tfquant inspect model.tflite
    tfquant report MODEL.keras --data DATA.npz -o report/ [--config CONFIG.json]

Exit codes: 0 done, 1 the input was refused (message on stderr), 2 usage.
"""

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("o", None, "Output path.")
flags.DEFINE_string("calib", None, "A .npz whose first array holds calibration samples.")
flags.DEFINE_string("data", None, "A .npz whose first array holds samples to verify with.")
flags.DEFINE_string("config", None, "A JSON file of QuantConfig arguments.")
flags.DEFINE_bool("int8_io", False, "Export with int8 model input and output.")
flags.DEFINE_bool("int4", False, "Store 2-4-bit weights as INT4 also in models with "
                  "activations below 8 bits (export_tflite low_bit_weights='int4'; "
                  "default: int8 there, for a finer int32 bias).")
flags.DEFINE_integer("calib_batches", 8, "Calibration batches of 32 samples.")

USAGE = __doc__.split("\n\n")[1]


class CommandError(Exception):
    """A message for the shell user; exit code 1."""


def _load_samples(path):
    import numpy as np

    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file.")
    try:
        with np.load(path) as archive:
            if not archive.files:
                raise CommandError(f"{path} holds no arrays.")
            return archive[archive.files[0]].astype("float32")
    except (ValueError, OSError) as error:
        raise CommandError(f"{path} is not a readable .npz file ({error}).") from None


def _load_model(path):
    import keras

    import tfquant  # noqa: F401  registers tfquant's layers for loading

    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file.")
    try:
        return keras.models.load_model(path)
    except (ValueError, OSError, TypeError) as error:
        raise CommandError(f"{path} could not be loaded as a Keras model: {error}") from None


def _load_config(path):
    import tfquant

    if path is None:
        return None
    try:
        with open(path) as handle:
            arguments = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise CommandError(f"{path}: not a readable JSON file ({error}).") from None
    rules = [tfquant.LayerRule(**rule) for rule in arguments.pop("rules", [])]
    try:
        return tfquant.QuantConfig(rules=rules, **arguments)
    except (TypeError, ValueError) as error:
        raise CommandError(f"{path}: {error}") from None


def quantize(model_path, output):
    import keras

    import tfquant

    model = _load_model(model_path)
    try:
        qmodel = tfquant.quantize_model(model, _load_config(FLAGS.config))
    except ValueError as error:
        raise CommandError(str(error)) from None
    if FLAGS.calib:
        samples = _load_samples(FLAGS.calib)
        tfquant.freeze_batch_norm(qmodel)
        batches = max(1, min(FLAGS.calib_batches, -(-len(samples) // 32)))
        progress = keras.utils.Progbar(batches, unit_name="calibration batch")
        for i in range(batches):
            qmodel(samples[i * 32:(i + 1) * 32], training=True)  # observes the ranges
            progress.update(i + 1)
    qmodel.save(output)
    print(f"wrote {output}")


def export(model_path, output):
    import tfquant

    qmodel = _load_model(model_path)
    data = _load_samples(FLAGS.data) if FLAGS.data else None
    io_type = "int8" if FLAGS.int8_io else "float32"
    try:
        report = tfquant.export_tflite(qmodel, output, representative_data=data,
                                       input_type=io_type, output_type=io_type,
                                       low_bit_weights="int4" if FLAGS.int4 else "auto")
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(report)


def inspect(path):
    import tfquant

    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file.")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        summary = tfquant.inspect_flatbuffer(data)
    except ValueError as error:
        raise CommandError(f"{path}: {error}") from None
    print(f"{path}: {summary.size_bytes / 1024:.1f} KiB")
    for subgraph in summary.subgraphs:
        print(f"subgraph {subgraph.index} {subgraph.name!r}: {len(subgraph.operators)} ops")
        for op in subgraph.operators:
            tensors = ", ".join(
                f"{subgraph.tensors[i].type_name}{list(subgraph.tensors[i].shape)}"
                for i in op.inputs if i >= 0)
            print(f"  {op.index:3d} {op.name:22s} {tensors}")
        print("  tensors:")
        for tensor in subgraph.tensors:
            quant = ""
            if tensor.quantization is not None and tensor.quantization.scales:
                q = tensor.quantization
                scales = q.scales if len(q.scales) <= 3 else (*q.scales[:2], "...")
                quant = f" scale={scales} zero_point={q.zero_points[:3]} axis={q.quantized_dimension}"
            size = f" {tensor.buffer_bytes} B" if tensor.buffer_bytes else ""
            print(f"    {tensor.index:3d} {tensor.type_name:7s} {str(list(tensor.shape)):18s}"
                  f"{size}{quant} {tensor.name[:60]}")


# -- tfquant report ----------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CommandError("the report draws its plots with matplotlib: "
                           "pip install matplotlib") from None
    return plt


def _quantized_model_for_report(model, samples):
    """`model` if it has tfquant quantizers; else quantize_model(model, --config) with
    its ranges calibrated on `samples` (frozen BN, training-mode passes)."""
    import keras

    import tfquant

    if any(isinstance(layer, (tfquant.keras.QuantizedConvolution,
                              tfquant.keras.ActivationFakeQuant)) for layer in model.layers):
        return model, False
    try:
        qmodel = tfquant.quantize_model(model, _load_config(FLAGS.config))
    except ValueError as error:
        raise CommandError(str(error)) from None
    tfquant.freeze_batch_norm(qmodel)
    batches = max(1, min(FLAGS.calib_batches, -(-len(samples) // 32)))
    progress = keras.utils.Progbar(batches, unit_name="calibration batch")
    for i in range(batches):
        qmodel(samples[i * 32:(i + 1) * 32], training=True)
        progress.update(i + 1)
    return qmodel, True


def weight_rows(qmodel):
    """One dict per quantized kernel: layer, kernel, bits, float and quantized values
    (BN folded, depthwise channels flattened), output axis, weight SQNR (dB), and the
    per-channel step of the grid (max |quantized| / (2^(b−1) − 1))."""
    import numpy as np

    from tfquant.keras import QuantizedConvolution
    from tfquant.keras.quantized_convolution import _flatten_depthwise

    rows = []
    for layer in qmodel.layers:
        if not isinstance(layer, QuantizedConvolution):
            continue
        kernels, _ = layer.folded_kernels_and_bias()
        for name, (quantized, axis) in layer.deployed_kernels().items():
            values = kernels[name]
            if layer.kernel_layout(name) == "depthwise":
                values = _flatten_depthwise(values)
            values = np.asarray(values, dtype=np.float64)
            quantized = np.asarray(quantized, dtype=np.float64)
            noise = float(np.sum((quantized - values) ** 2))
            signal = float(np.sum(values ** 2))
            sqnr = float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)
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
    import keras
    import numpy as np

    from tfquant.keras import quantizer_slots

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


def plot_weight_histogram(row, path):
    """Histogram of a kernel's float values, the grid of its widest channel overlaid
    (every level up to 33 levels, else every n-th) and the clip limits dashed."""
    import numpy as np

    plt = _pyplot()
    bits, step = row["bits"], float(np.max(row["steps"]))
    qmax = 2 ** (bits - 1) - 1
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(row["values"].ravel(), bins=120, color="#4c72b0", alpha=0.85,
            label="float weights (BN folded)")
    every = max(1, -(-(2 * qmax + 1) // 33))
    for k in range(-qmax, qmax + 1, every):
        ax.axvline(k * step, color="#dd8452", linewidth=0.7, alpha=0.8)
    for limit in (-qmax * step, qmax * step):
        ax.axvline(limit, color="#c44e52", linestyle="--", linewidth=1.4)
    ax.plot([], [], color="#dd8452", label="grid levels" + (f" (every {every}th)"
                                                              if every > 1 else ""))
    ax.plot([], [], color="#c44e52", linestyle="--", label="clip ±max")
    per_channel = len(row["steps"]) > 1
    ax.set_title(f"{row['layer']}.{row['kernel']}: {bits}-bit {row['quantizer']}"
                 f"{' (grid of the widest channel)' if per_channel else ''}", fontsize=9)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sqnr(rows, path):
    plt = _pyplot()
    names = [f"{r['layer']}.{r['kernel']}" if r["kernel"] != "kernel" else r["layer"]
             for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 3.8))
    ax.bar(range(len(rows)), [min(r["sqnr_db"], 99.0) for r in rows], color="#55a868")
    for i, row in enumerate(rows):
        ax.text(i, min(row["sqnr_db"], 99.0), f"{row['bits']}b", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("weight SQNR (dB)")
    ax.set_title("Weight quantization SQNR per layer (BN folded)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_activation_ranges(rows, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, max(2.5, 0.32 * len(rows) + 1.2)))
    for i, row in enumerate(rows):
        if row["range"] is not None:
            low, high = row["range"]
            ax.plot([low, high], [i, i], color="#4c72b0", linewidth=6, alpha=0.6,
                    solid_capstyle="butt", label="quantizer range" if i == 0 else None)
        low, high = row["observed"]
        ax.plot([low, high], [i, i], "|", color="#c44e52", markersize=12, markeredgewidth=2,
                label="output min/max on the data" if i == 0 else None)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['layer']} ({r['bits']}b)" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.0, color="gray", linewidth=0.6)
    ax.set_xlabel("value")
    ax.set_title("Activation quantizer ranges", fontsize=9)
    # Below the axes: inside, it would cover the bars of the last layers.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(qmodel, samples, directory, calibrated_here=False):
    """Writes `directory`/index.html and its PNG plots; returns the index path."""
    import html

    import keras

    os.makedirs(directory, exist_ok=True)
    weights = weight_rows(qmodel)
    print(f"{len(weights)} quantized kernels; plotting")
    progress = keras.utils.Progbar(len(weights) + 2, unit_name="plot")
    for i, row in enumerate(weights):
        row["png"] = f"weights_{i:03d}_{row['layer']}_{row['kernel']}.png"
        plot_weight_histogram(row, os.path.join(directory, row["png"]))
        progress.update(i + 1)
    if weights:
        plot_sqnr(weights, os.path.join(directory, "weight_sqnr.png"))
    progress.update(len(weights) + 1)
    print("measuring activations")
    activations = activation_rows(qmodel, samples)
    if activations:
        plot_activation_ranges(activations, os.path.join(directory, "activation_ranges.png"))
    progress.update(len(weights) + 2)

    def fmt(pair):
        return "—" if pair is None else f"[{pair[0]:.4g}, {pair[1]:.4g}]"

    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tfquant report: {e(qmodel.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
        "</head><body>", f"<h1>tfquant report: {e(qmodel.name)}</h1>",
        f"<p>{len(samples)} samples. "
        + ("The model had no quantizers: it was quantized and calibrated for this report."
           if calibrated_here else "") + "</p>",
        "<h2>Weights</h2>",
    ]
    if weights:
        parts.append("<img src='weight_sqnr.png' alt='weight SQNR per layer'>")
        parts.append("<table><tr><th>layer</th><th>kernel</th><th>quantizer</th><th>bits</th>"
                     "<th>params</th><th>SQNR (dB)</th></tr>")
        for row in weights:
            parts.append(f"<tr><td>{e(row['layer'])}</td><td>{e(row['kernel'])}</td>"
                         f"<td>{e(row['quantizer'])}</td><td>{row['bits']}</td>"
                         f"<td>{row['params']}</td><td>{row['sqnr_db']:.1f}</td></tr>")
        parts.append("</table>")
        for row in weights:
            parts.append(f"<h3>{e(row['layer'])}.{e(row['kernel'])}</h3>"
                         f"<img src='{e(row['png'])}' alt='histogram of {e(row['layer'])}'>")
    else:
        parts.append("<p>No quantized kernels.</p>")
    parts.append("<h2>Activations</h2>")
    if activations:
        parts.append("<img src='activation_ranges.png' alt='activation ranges'>")
        parts.append("<table><tr><th>layer</th><th>quantizer</th><th>bits</th>"
                     "<th>range</th><th>output min/max on the data</th></tr>")
        for row in activations:
            parts.append(f"<tr><td>{e(row['layer'])}</td><td>{e(row['quantizer'])}</td>"
                         f"<td>{row['bits']}</td><td>{fmt(row['range'])}</td>"
                         f"<td>{fmt(row['observed'])}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No activation quantizers.</p>")
    parts.append("</body></html>")
    index = os.path.join(directory, "index.html")
    with open(index, "w") as handle:
        handle.write("\n".join(parts))
    return index


def report(model_path, output):
    if not FLAGS.data:
        raise CommandError("give the samples to measure with --data DATA.npz")
    samples = _load_samples(FLAGS.data)
    _pyplot()  # fail early without matplotlib
    model = _load_model(model_path)
    qmodel, calibrated = _quantized_model_for_report(model, samples)
    index = write_report(qmodel, samples, output, calibrated)
    print(f"wrote {index}")


def main(argv):
    args = argv[1:]
    commands = {"quantize": (quantize, 2), "export": (export, 2), "inspect": (inspect, 1),
                "report": (report, 2)}
    if not args or args[0] not in commands:
        print(f"usage:\n{USAGE}", file=sys.stderr)
        return 2
    command, arity = commands[args[0]]
    positional = args[1:]
    if len(positional) != 1:
        print(f"usage:\n{USAGE}", file=sys.stderr)
        return 2
    if arity == 2 and not FLAGS.o:
        print(f"tfquant {args[0]}: give the output path with -o", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        command(positional[0], FLAGS.o) if arity == 2 else command(positional[0])
    except CommandError as error:
        print(f"tfquant {args[0]}: {error}", file=sys.stderr)
        return 1
    return 0


def run():
    """Console-script entry point."""
    # absl's --help prints the __main__ module's docstring: the console-script stub has
    # none, so it would show a bare "USAGE: tfquant [flags]" without the commands.
    sys.modules["__main__"].__doc__ = __doc__
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
