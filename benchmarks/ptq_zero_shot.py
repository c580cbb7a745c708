"""Zero-shot PTQ (ZeroQ) on the MobileNetV2-style model of the PTQ tables: activation
ranges calibrated on real training images, on inputs distilled from the BatchNormalization
statistics (`ptq.quantize(model, zero_shot=True)`), and on Gaussian noise (what a user
without data would try first), at W8A8 and W4A8 with per-channel weights.

    python benchmarks/ptq_zero_shot.py            # full: writes BENCHMARKS.md
    python benchmarks/ptq_zero_shot.py --quick    # smoke run: small data, no write
"""

import argparse
import time

import numpy as np
from ptq_common import accuracy, data, markdown_table, trained_model

import tfquant  # noqa: E402
from tfquant import ptq  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, no BENCHMARKS.md")
    parser.add_argument("--samples", type=int, default=256, help="calibration samples")
    parser.add_argument("--steps", type=int, default=500, help="distillation Adam steps")
    args = parser.parse_args()
    (x_train, _), (x_test, y_test) = data(args.quick)
    model = trained_model(args.quick)
    float_accuracy = accuracy(model, x_test, y_test)
    start = time.time()
    distilled = ptq.distill_calibration_data(model, args.samples, args.steps)
    distill_seconds = time.time() - start
    sources = {
        "training images": x_train[:args.samples],
        "distilled from BN statistics (zero-shot)": distilled,
        "Gaussian noise N(0, 1)": np.random.default_rng(0).normal(
            size=(args.samples, *x_train.shape[1:])).astype(np.float32),
    }
    rows = [("float", "-", f"{100 * float_accuracy:.2f}", "-")]
    for bits in ((8, 8), (4, 8)):
        for label, calibration in sources.items():
            config = tfquant.QuantConfig(weight_bits=bits[0], activation_bits=bits[1])
            qmodel = ptq.quantize(model, calibration, config=config, verbose=0)
            acc = accuracy(qmodel, x_test, y_test)
            rows.append((label, f"W{bits[0]}A{bits[1]}", f"{100 * acc:.2f}",
                         f"{100 * (acc - float_accuracy):+.2f}"))
            print(f"{label:<44} W{bits[0]}A{bits[1]} {100 * acc:6.2f} %", flush=True)
    table = markdown_table(("calibration data", "bits", "top-1 %", "vs float"), rows)
    notes = (f"Fashion-MNIST test set ({len(x_test)} images); {args.samples} calibration "
             f"samples each; per-channel weights, first and last layers at 8 bits. "
             f"Distillation: {args.steps} Adam steps (learning rate 0.1) on one batch of "
             f"{args.samples} inputs, {distill_seconds:.0f} s.")
    print(notes)
    print(table)
    if not args.quick:
        from benchmark_report import write_section

        write_section("PTQ: zero-shot calibration on a MobileNetV2-style model",
                      "python benchmarks/ptq_zero_shot.py", notes + "\n\n" + table)


if __name__ == "__main__":
    main()
