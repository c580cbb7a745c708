"""Which keras.applications architectures tfquant takes: every builder, at its smallest
input, through `quantize_model`, and with `--export` through `ptq.quantize` (random
calibration images) and `export_tflite` (checked for float ops, run in LiteRT).

A row is "quantized" (and "full-integer" after export), or the error the user gets: a
ValueError that lists the layers tfquant cannot quantize is an answer; any other
exception is a bug of tfquant's. Random weights: this measures coverage, not accuracy
(that is `model_zoo.py`).

Run: `.venv/bin/python benchmarks/applications_coverage.py [--export] [--include-large]
[--models A,B]`. The largest builders (`LARGE`: build time and memory on 2 cores) are
skipped unless `--include-large`, and the row says so.
"""

import argparse
import inspect
import os
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfquant  # noqa: E402
from benchmark_report import write_section  # noqa: E402

# Smallest input each family builds at (keras.applications' own minimums).
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
# Parameters of each builder at 10 classes, to skip the largest without building them.
LARGE = ("ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge", "EfficientNetB5",
         "EfficientNetB6", "EfficientNetB7", "EfficientNetV2L", "EfficientNetV2M",
         "NASNetLarge", "RegNetX320", "RegNetY320", "RegNetX160", "RegNetY160",
         "ResNet152", "ResNet152V2", "VGG19")


def builders():
    return sorted(name for name, value in vars(keras.applications).items()
                  if inspect.isfunction(value) and name[0].isupper())


def check(name, export):
    size = MIN_SIZE.get(name, 32)
    kwargs = dict(input_shape=(size, size, 3), weights=None, classes=10)
    if "classifier_activation" in inspect.signature(getattr(keras.applications, name)).parameters:
        kwargs["classifier_activation"] = None
    model = getattr(keras.applications, name)(**kwargs)
    start = time.time()
    try:
        if not export:
            tfquant.quantize_model(model)
            return "quantized", time.time() - start
        x = (np.random.rand(8, size, size, 3) * 255).astype(np.float32)
        qmodel = tfquant.ptq.quantize(model, x, verbose=0)
        report = tfquant.export_tflite(qmodel, representative_data=x)
        return (f"full-integer, {report.size_bytes / 2**20:.1f} MiB, max "
                f"{report.max_abs_diff_lsb:.0f} LSB", time.time() - start)
    except ValueError as error:  # tfquant's answer: what it cannot quantize, and why
        first = str(error).splitlines()
        return "refused: " + " ".join(first[:3])[:200], time.time() - start
    except Exception as error:  # anything else is a bug
        traceback.print_exc()
        return f"BUG {type(error).__name__}: {str(error)[:200]}", time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated builder names")
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--include-large", action="store_true")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else builders()
    rows = []
    for name in names:
        if name in LARGE and not args.include_large:
            rows.append((name, "skipped (large; --include-large)", 0.0))
        else:
            rows.append((name, *check(name, args.export)))
        print(*rows[-1], flush=True)
    lines = ["| builder | result | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {result} | {seconds:.0f} |" for name, result, seconds in rows]
    print("\n".join(lines))
    if not args.models:
        what = "ptq.quantize + export_tflite" if args.export else "quantize_model"
        write_section(f"keras.applications coverage ({what})",
                      "python benchmarks/applications_coverage.py"
                      + (" --export" if args.export else "")
                      + (" --include-large" if args.include_large else ""),
                      "Random weights, 10 classes, smallest input of each builder.\n\n"
                      + "\n".join(lines))


if __name__ == "__main__":
    main()
