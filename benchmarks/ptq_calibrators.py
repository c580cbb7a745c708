"""Activation and weight calibrators compared at W8A8 and W4A8 (per-channel weights) on
the MobileNetV2-style Fashion-MNIST model of ptq_dfq.py.

    python benchmarks/ptq_calibrators.py            # full run, writes BENCHMARKS.md
    python benchmarks/ptq_calibrators.py --quick    # smoke run, no write
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
    args = parser.parse_args()
    (x_train, _), (x_test, y_test) = data(args.quick)
    calib = x_train[:128 if args.quick else args.calibration]
    model = trained_model(args.quick)
    rows = [("float", "-", "-", "-", f"{100 * accuracy(model, x_test, y_test):.2f}")]
    for bits in ((8, 8), (4, 8)):
        config = tfquant.QuantConfig(weight_bits=bits[0], activation_bits=bits[1])
        weight_methods = ("minmax",) if bits[0] == 8 else ("minmax", "mse", "sawb")
        for weights in weight_methods:
            for name in ("minmax", "ema", "percentile", "mse", "entropy"):
                start = time.time()
                qmodel = ptq.quantize(model, calib, config=config, calibrator=name,
                                      weight_calibrator=weights, verbose=0)
                acc = accuracy(qmodel, x_test, y_test)
                rows.append((f"W{bits[0]}A{bits[1]}", name, weights, "per-channel",
                             f"{100 * acc:.2f}"))
                print(f"W{bits[0]}A{bits[1]} activations {name:<10} weights {weights:<7} "
                      f"{100 * acc:6.2f} %  ({time.time() - start:.1f} s)", flush=True)
    table = markdown_table(("bits", "activation calibrator", "weight calibrator", "weights",
                            "top-1 %"), rows)
    print(table)
    if not args.quick:
        from benchmark_report import write_section

        write_section("PTQ: calibrators on a MobileNetV2-style model",
                      "python benchmarks/ptq_calibrators.py",
                      f"Fashion-MNIST test set; calibration on {len(calib)} training "
                      "images.\n\n" + table)


if __name__ == "__main__":
    main()
