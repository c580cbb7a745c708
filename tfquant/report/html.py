"""`write_report`: the HTML page of `tfquant report`, with its plots beside it."""

import html
import os

import keras

from tfquant.export import ExportError, UnsupportedOperatorError, export_tflite
from tfquant.export.files import atomic_write
from tfquant.report.plots import (
    plot_activation_ranges,
    plot_integer_layers,
    plot_sqnr,
    plot_weight_histogram,
)
from tfquant.report.rows import activation_rows, integer_rows, weight_rows

_INTEGER_SAMPLES = 256


def _table(headers, rows):
    """An HTML table; every cell escaped."""
    def cells(tag, values):
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><tr>{cells('th', headers)}</tr>{body}</table>"


def write_report(qmodel, samples, directory, calibrated_here=False):
    """Writes `directory`/index.html and its PNG plots; returns the index path."""
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
    print("comparing the float simulation with the integer model layer by layer")
    try:
        flatbuffer = export_tflite(qmodel).flatbuffer
        layers = integer_rows(qmodel, samples[:_INTEGER_SAMPLES], flatbuffer)
        integer_note = None
    except (ExportError, UnsupportedOperatorError) as error:
        layers, integer_note = [], f"Not compared: {error}"
    if layers:
        plot_integer_layers(layers, os.path.join(directory, "integer_layers.png"))

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
        parts.append(_table(
            ("layer", "kernel", "quantizer", "bits", "params", "SQNR (dB)"),
            [(row["layer"], row["kernel"], row["quantizer"], row["bits"], row["params"],
              f"{row['sqnr_db']:.1f}") for row in weights]))
        for row in weights:
            parts.append(f"<h3>{e(row['layer'])}.{e(row['kernel'])}</h3>"
                         f"<img src='{e(row['png'])}' alt='histogram of {e(row['layer'])}'>")
    else:
        parts.append("<p>No quantized kernels.</p>")
    parts.append("<h2>Activations</h2>")
    if activations:
        parts.append("<img src='activation_ranges.png' alt='activation ranges'>")
        parts.append(_table(
            ("layer", "quantizer", "bits", "range", "output min/max on the data"),
            [(row["layer"], row["quantizer"], row["bits"], fmt(row["range"]),
              fmt(row["observed"])) for row in activations]))
    else:
        parts.append("<p>No activation quantizers.</p>")
    parts.append("<h2>Keras and LiteRT, layer by layer</h2>")
    if layers:
        parts.append(
            f"<p>On the first {min(len(samples), _INTEGER_SAMPLES)} samples: each layer's "
            "output in the float simulation (the Keras model) and in the integer model "
            "(<code>tfquant.integer_model</code>, the integers LiteRT's XNNPACK path "
            "computes), against float (the model with its quantizers bypassed), and the "
            "share of values where the two differ by at least one output step.</p>")
        parts.append("<img src='integer_layers.png' alt='per-layer comparison'>")
        parts.append(_table(
            ("layer", "op", "float simulation SQNR (dB)", "integer model SQNR (dB)",
             "values differing"),
            [(row["layer"], row["op"], f"{row['float_sim_sqnr_db']:.1f}",
              f"{row['integer_sqnr_db']:.1f}", f"{100 * row['differ']:.2f} %")
             for row in layers]))
    else:
        parts.append(f"<p>{e(integer_note or 'No int8 layer outputs to compare.')}</p>")
    parts.append("</body></html>")
    index = os.path.join(directory, "index.html")
    atomic_write(index, "\n".join(parts))
    return index
