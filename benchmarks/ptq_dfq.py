"""Data-free quantization and other PTQ methods on a MobileNetV2-style model trained on
Fashion-MNIST (inverted residuals, ReLU6, depthwise, BN).

Rows: W8A8 per-tensor weights naive / CLE / CLE + high-bias absorption / + bias
correction, per-channel for reference; OCS at W6A8 per tensor; AdaRound vs nearest at
W4A8; mixed precision (8/4/2-bit weights) at 0.2× the float size.

    python benchmarks/ptq_dfq.py            # full: trains 8 epochs (cached), writes BENCHMARKS.md
    python benchmarks/ptq_dfq.py --quick    # smoke run: small data, no write
"""

import argparse
import time

from ptq_common import accuracy, data, markdown_table, trained_model

import tfquant  # noqa: E402
from tfquant import ptq  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, no BENCHMARKS.md")
    parser.add_argument("--calibration", type=int, default=512, help="calibration samples")
    parser.add_argument("--adaround-iterations", type=int, default=1000)
    args = parser.parse_args()
    quick = args.quick
    (x_train, _), (x_test, y_test) = data(quick)
    calib = x_train[:128 if quick else args.calibration]
    model = trained_model(quick)
    rows = [("float", "-", "-", f"{100 * accuracy(model, x_test, y_test):.2f}")]

    def run(label, bits, granularity, **kwargs):
        start = time.time()
        config = kwargs.pop("config", None) or tfquant.QuantConfig(
            weight_bits=bits[0], activation_bits=bits[1],
            per_channel_weights=granularity == "per-channel")
        qmodel = ptq.quantize(model if "float_model" not in kwargs else kwargs.pop("float_model"),
                              calib, config=config, verbose=0, **kwargs)
        acc = accuracy(qmodel, x_test, y_test)
        rows.append((label, f"W{bits[0]}A{bits[1]}", granularity, f"{100 * acc:.2f}"))
        print(f"{label:<40} W{bits[0]}A{bits[1]} {granularity:<12} {100 * acc:6.2f} %  "
              f"({time.time() - start:.1f} s)", flush=True)
        return qmodel

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
    run("nearest", (4, 8), "per-channel")
    run("AdaRound", (4, 8), "per-channel", rounding="adaround",
        adaround_iterations=100 if quick else args.adaround_iterations)
    start = time.time()
    plan = ptq.mixed_precision(model, calib[:256], size_ratio=0.2, bits=(8, 4, 2))
    counts = {b: sum(1 for v in plan.bits.values() if v == b) for b in (8, 4, 2)}
    print(f"mixed precision plan: {counts} layers at 8/4/2 bits, "
          f"{plan.size_bytes / plan.float_bytes:.3f}× float ({time.time() - start:.1f} s)")
    run(f"mixed 8/4/2 at {plan.size_bytes / plan.float_bytes:.2f}× float size", ("mix", 8),
        "per-channel", config=tfquant.QuantConfig(rules=list(plan)))
    table = markdown_table(("method", "bits", "weights", "top-1 %"), rows)
    print(table)
    if not quick:
        from benchmark_report import write_section

        write_section("PTQ: data-free quantization on a MobileNetV2-style model",
                      "python benchmarks/ptq_dfq.py",
                      "Fashion-MNIST test set; calibration on "
                      f"{len(calib)} training images.\n\n" + table)


if __name__ == "__main__":
    main()
