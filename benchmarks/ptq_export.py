"""PTQ models of the MobileNetV2-style Fashion-MNIST model (ptq_common.py) exported with
`tfquant.export_tflite` and run in LiteRT: Keras vs LiteRT accuracy, argmax agreement
and the largest output difference in LSB, as for QAT models.

    python benchmarks/ptq_export.py            # full run, writes BENCHMARKS.md
    python benchmarks/ptq_export.py --quick    # smoke run, no write
"""

import argparse
import time

import numpy as np
from ptq_common import accuracy, data, markdown_table, trained_model

import tfquant  # noqa: E402
from tfquant import ptq  # noqa: E402
from tfquant.export.litert_runner import run_litert  # noqa: E402

SETTINGS = (
    ("W8A8 per-channel, percentile activations",
     dict(config=tfquant.QuantConfig(activation_calibrator="percentile"))),
    ("W8A8 per-tensor, DFQ (CLE + absorption + bias correction)",
     dict(config=tfquant.QuantConfig(per_channel_weights=False), data_free=True)),
    ("W4A8 per-channel, MSE weights, AdaRound",
     dict(config=tfquant.QuantConfig(weight_bits=4, weight_calibrator="mse"),
          rounding="adaround")),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, no BENCHMARKS.md")
    parser.add_argument("--adaround-iterations", type=int, default=2000)
    args = parser.parse_args()
    (x_train, _), (x_test, y_test) = data(args.quick)
    calib = x_train[:128 if args.quick else 512]
    model = trained_model(args.quick)
    rows = []
    for label, kwargs in SETTINGS:
        start = time.time()
        qmodel = ptq.quantize(model, calib, verbose=0,
                              adaround_iterations=100 if args.quick else args.adaround_iterations,
                              **kwargs)
        report = tfquant.export_tflite(qmodel, representative_data=x_test)
        litert = run_litert(report.flatbuffer, x_test)[0]
        litert_accuracy = float(np.mean(np.argmax(litert, -1) == y_test))
        keras_accuracy = accuracy(qmodel, x_test, y_test)
        weights = "/".join(sorted(set(report.weight_dtypes.values()) - {"INT32"}))
        rows.append((label, f"{100 * keras_accuracy:.2f}", f"{100 * litert_accuracy:.2f}",
                     f"{100 * report.argmax_agreement:.2f}", f"{report.max_abs_diff_lsb:.1f}",
                     len(report.float_ops), weights, f"{report.size_bytes / 1024:.1f}"))
        print(" | ".join(map(str, rows[-1])), f"({time.time() - start:.1f} s)", flush=True)
    table = markdown_table(("PTQ model", "Keras top-1 %", "LiteRT top-1 %", "argmax agree %",
                            "max diff (LSB)", "float ops", "weight types", "KiB"), rows)
    print(table)
    if not args.quick:
        from benchmark_report import write_section

        write_section("PTQ: export to LiteRT", "python benchmarks/ptq_export.py",
                      f"Fashion-MNIST test set ({len(x_test)} images); calibration on "
                      f"{len(calib)} training images; LiteRT = ai_edge_litert interpreter "
                      "on the exported flatbuffer, diff on the int8 output logits.\n\n"
                      + table)


if __name__ == "__main__":
    main()
