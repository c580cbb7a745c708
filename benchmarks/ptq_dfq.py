"""Data-free quantization and other PTQ methods on a MobileNetV2-style model trained on
Fashion-MNIST (inverted residuals, ReLU6, depthwise, BN).

Rows: W8A8 per-tensor weights naive / CLE / CLE + high-bias absorption / + bias
correction, per-channel for reference; OCS at W6A8 per tensor; AdaRound vs nearest at
W4A8 (per channel and per tensor); mixed precision (8/4/2-bit weights) at 0.2× the
float size. Also the spread of the BN-folded per-channel weight ranges, which is what
per-tensor quantization and CLE are about.

    python benchmarks/ptq_dfq.py            # full: trains 6 epochs (cached), writes BENCHMARKS.md
    python benchmarks/ptq_dfq.py --quick    # smoke run: small data, no write
"""

import argparse
import time

import numpy as np
from ptq_common import accuracy, data, markdown_table, trained_model

import tfquant  # noqa: E402
from tfquant import ptq  # noqa: E402
from tfquant.keras.kernel_layout import flat_kernel_and_axis  # noqa: E402


def folded_range_spread(model):
    """(layer, max/median of the per-output-channel max|w| after BN folding), widest
    first: a large spread is what makes per-tensor weights lose accuracy."""
    qmodel = tfquant.quantize_model(model)
    spread = []
    for wrapper in qmodel.layers:
        if not isinstance(wrapper, tfquant.keras.QuantizedConvolution):
            continue
        kernels, _ = wrapper.folded_kernels_and_bias()
        flat, axis = flat_kernel_and_axis(kernels["kernel"], wrapper.kernel_layout("kernel"),
                                          per_channel=True)
        ranges = np.abs(np.moveaxis(flat, axis, 0).reshape(flat.shape[axis], -1)).max(1)
        spread.append((wrapper.name, float(ranges.max() / max(np.median(ranges), 1e-12))))
    return sorted(spread, key=lambda item: -item[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, no BENCHMARKS.md")
    parser.add_argument("--calibration", type=int, default=512, help="calibration samples")
    parser.add_argument("--adaround-iterations", type=int, default=2000)
    args = parser.parse_args()
    quick = args.quick
    (x_train, _), (x_test, y_test) = data(quick)
    calib = x_train[:128 if quick else args.calibration]
    iterations = 100 if quick else args.adaround_iterations
    model = trained_model(quick)
    float_accuracy = accuracy(model, x_test, y_test)
    rows = [("float", "-", "-", f"{100 * float_accuracy:.2f}", "-")]

    def run(label, bits, granularity, **kwargs):
        start = time.time()
        config = kwargs.pop("config", None) or tfquant.QuantConfig(
            weight_bits=bits[0], activation_bits=bits[1],
            per_channel_weights=granularity == "per-channel")
        qmodel = ptq.quantize(kwargs.pop("float_model", model), calib, config=config,
                              verbose=0, **kwargs)
        acc = accuracy(qmodel, x_test, y_test)
        rows.append((label, f"W{bits[0]}A{bits[1]}", granularity, f"{100 * acc:.2f}",
                     f"{100 * (acc - float_accuracy):+.2f}"))
        print(f"{label:<44} W{bits[0]}A{bits[1]} {granularity:<12} {100 * acc:6.2f} %  "
              f"({time.time() - start:.1f} s)", flush=True)
        return qmodel

    spread = folded_range_spread(model)
    w8 = (8, 8)
    run("naive (min-max)", w8, "per-tensor")
    run("CLE", w8, "per-tensor", data_free=True, high_bias_absorption=False,
        bias_correction=False)
    run("CLE + absorption", w8, "per-tensor", data_free=True, bias_correction=False)
    run("CLE + absorption + bias correction", w8, "per-tensor", data_free=True)
    run("CLE + absorption + empirical BC", w8, "per-tensor", data_free=True,
        bias_correction="empirical")
    run("naive (min-max)", w8, "per-channel")
    run("naive (min-max)", (6, 8), "per-tensor")
    run("OCS 0.02", (6, 8), "per-tensor", float_model=ptq.split_channels(model, 0.02))
    run("CLE + OCS 0.02", (6, 8), "per-tensor",
        float_model=ptq.split_channels(ptq.cross_layer_equalize(model), 0.02))
    run("CLE + absorption + bias correction", (6, 8), "per-tensor", data_free=True)
    for granularity in ("per-channel", "per-tensor"):
        for clip in ("minmax", "mse"):
            run(f"nearest, {clip} clip", (4, 8), granularity, weight_calibrator=clip)
            run(f"AdaRound {iterations} it., {clip} clip", (4, 8), granularity,
                weight_calibrator=clip, rounding="adaround", adaround_iterations=iterations)
    start = time.time()
    plan = ptq.mixed_precision(model, calib[:256], size_ratio=0.2, bits=(8, 4, 2))
    counts = {b: sum(1 for v in plan.bits.values() if v == b) for b in (8, 4, 2)}
    ratio = plan.size_bytes / plan.float_bytes
    print(f"mixed precision plan: {counts} layers at 8/4/2 bits, {ratio:.3f}× float "
          f"({time.time() - start:.1f} s)")
    run(f"mixed 8/4/2 at {ratio:.2f}× float size ({counts[8]}/{counts[4]}/{counts[2]} "
        "layers)", ("mix", 8), "per-channel", config=tfquant.QuantConfig(rules=list(plan)))
    table = markdown_table(("method", "bits", "weights", "top-1 %", "vs float"), rows)
    spread_text = ", ".join(f"{name} {value:.1f}×" for name, value in spread[:4])
    notes = (f"Fashion-MNIST test set ({len(x_test)} images); calibration on {len(calib)} "
             f"training images; AdaRound {iterations} iterations per layer on the "
             "quantized model's layer inputs (first and last layers at 8 bits, as "
             "everywhere here). Spread of the BN-folded per-channel weight ranges "
             f"(max/median), widest layers: {spread_text}.")
    print(notes)
    print(table)
    if not quick:
        from benchmark_report import write_section

        write_section("PTQ: data-free quantization on a MobileNetV2-style model",
                      "python benchmarks/ptq_dfq.py", notes + "\n\n" + table)


if __name__ == "__main__":
    main()
