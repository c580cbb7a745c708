"""LSTM and GRU on Fashion-MNIST read as sequences (28 rows of 28 pixels): float, PTQ W8A8
and short QAT W8A8, exported to full-integer LiteRT by `tfquant.export_tflite` (the
recurrence unrolled and quantized op by op, tfquant.keras.layers.recurrent).

For each cell: a float `Input((28, 28)) → LSTM/GRU(units) → Dense(10)` classifier trained
`--float-epochs` epochs (cached in out/); PTQ with 1000 calibration images; QAT
`--qat-epochs` epochs (Adam 1e-4) from the PTQ model. Reports the Keras and LiteRT test
accuracy, the LiteRT/Keras agreement, the largest output difference in LSB, the
flatbuffer size against the float model converted as Keras has it (`unroll=False`: a
WHILE loop), the op count and the minutes; writes its BENCHMARKS.md section (not with
--quick).

    python benchmarks/bench_recurrent.py              # full run
    python benchmarks/bench_recurrent.py --quick      # smoke run on a subset
"""

import argparse
import contextlib
import io
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfquant  # noqa: E402
from benchmark_report import train_float_cached, write_section  # noqa: E402
from tfquant.export.litert_runner import run_litert  # noqa: E402

CELLS = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU}
CALIBRATION_IMAGES = 1000


def sequences(quick):
    """Fashion-MNIST images as (N, 28 steps, 28 features); a subset with `quick`."""
    from datasets import load_fashion_mnist

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, x_test = x_train[..., 0], x_test[..., 0]
    if quick:
        return (x_train[:3000], y_train[:3000]), (x_test[:1000], y_test[:1000])
    return (x_train, y_train), (x_test, y_test)


def float_classifier(cell, units, batch_size=None):
    inputs = keras.Input((28, 28), batch_size=batch_size, name="rows")
    x = CELLS[cell](units, name=cell.lower())(inputs)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"{cell.lower()}_classifier")


def trained_float(cell, args, x_train, y_train):
    """The float classifier after `args.float_epochs` epochs; cached in out/ (not with
    --quick)."""
    path = os.path.join(ROOT, "out", f"bench_recurrent_{cell.lower()}{args.units}_"
                                     f"{args.float_epochs}.weights.h5")
    return train_float_cached(float_classifier(cell, args.units), path, x_train, y_train,
                              args.float_epochs, args.batch_size, cache=not args.quick)


def float_flatbuffer(model, cell, units):
    """The float model as the converter makes it (the recurrence a WHILE loop), for a
    batch of one: the loop's tensor list needs a static shape."""
    fixed = float_classifier(cell, units, batch_size=1)
    fixed.set_weights(model.get_weights())
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return converter.convert()


def op_count(flatbuffer):
    return sum(tfquant.inspect_flatbuffer(flatbuffer).op_counts().values())


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, -1) == labels))


def keras_accuracy(model, x, y):
    return accuracy(model.predict(x, batch_size=500, verbose=0), y)


def exported_row(label, cell, qmodel, x_test, y_test, float_size, start):
    """Exports `qmodel`, runs it in LiteRT on the test set; returns the table row (the
    agreement is over the whole test set, the LSB difference over the export's 500
    verification samples)."""
    report = tfquant.export_tflite(qmodel, representative_data=x_test[:500])
    litert = np.argmax(run_litert(report.flatbuffer, x_test, batch_size=500)[0], -1)
    keras_predictions = np.argmax(qmodel.predict(x_test, batch_size=500, verbose=0), -1)
    return (cell, label, f"{100 * np.mean(keras_predictions == y_test):.2f}",
            f"{100 * np.mean(litert == y_test):.2f}",
            f"{100 * np.mean(litert == keras_predictions):.2f}",
            f"{report.max_abs_diff_lsb:.1f}", str(len(report.float_ops)),
            f"{report.size_bytes / 1024:.1f}", f"{report.size_bytes / float_size:.2f}",
            str(op_count(report.flatbuffer)), f"{(time.time() - start) / 60:.1f}")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a subset")
    parser.add_argument("--cells", default="LSTM,GRU", help="comma-separated: LSTM, GRU")
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--float-epochs", type=int, default=6)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"--cells: {', '.join(unknown)} unknown; allowed: {', '.join(CELLS)}")
    if args.quick:
        args.float_epochs, args.qat_epochs = 1, 1
    (x_train, y_train), (x_test, y_test) = sequences(args.quick)
    calibration = x_train[:CALIBRATION_IMAGES]
    rows = []
    for cell in cells:
        keras.utils.set_random_seed(0)
        start = time.time()
        model = trained_float(cell, args, x_train, y_train)
        flatbuffer = float_flatbuffer(model, cell, args.units)
        float_size = len(flatbuffer)
        litert = accuracy(run_litert(flatbuffer, x_test, batch_size=1)[0], y_test)
        rows.append((cell, f"float ({args.float_epochs} epochs), unroll=False",
                     f"{100 * keras_accuracy(model, x_test, y_test):.2f}",
                     f"{100 * litert:.2f}", "-", "-", "-", f"{float_size / 1024:.1f}", "1.00",
                     str(op_count(flatbuffer)),
                     f"{(time.time() - start) / 60:.1f}"))
        print(" | ".join(rows[-1]), flush=True)

        start = time.time()
        ptq_model = tfquant.ptq.quantize(model, calibration, verbose=0)
        rows.append(exported_row("PTQ W8A8", cell, ptq_model, x_test, y_test, float_size,
                                 start))
        print(" | ".join(rows[-1]), flush=True)

        start = time.time()
        qat_model = tfquant.ptq.quantize(model, calibration, verbose=0)
        qat_model.compile(optimizer=keras.optimizers.Adam(1e-4),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        qat_model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.qat_epochs,
                      verbose=0)
        epochs = f"{args.qat_epochs} epoch" + ("s" if args.qat_epochs != 1 else "")
        rows.append(exported_row(f"QAT W8A8 ({epochs}, from PTQ)", cell,
                                 qat_model, x_test, y_test, float_size, start))
        print(" | ".join(rows[-1]), flush=True)
    body = (f"Fashion-MNIST rows as sequences, {cells} ({args.units} units) → Dense(10); "
            f"test set {len(x_test)} images; PTQ calibration on {len(calibration)} training "
            "images; agreement: LiteRT vs Keras predictions on the test set; max diff over "
            "500 test images; size ratio against the float unroll=False flatbuffer; "
            "minutes: training (float: none when cached in out/), conversion and "
            "evaluation.\n\n"
            + markdown_table(("cell", "model", "Keras acc %", "LiteRT acc %", "agree %",
                              "max diff (LSB)", "float ops", "KiB", "size × float", "ops",
                              "minutes"), rows))
    print(body)
    if not args.quick:
        write_section("LSTM and GRU to full-integer LiteRT", "python benchmarks/bench_recurrent.py",
                      body)


if __name__ == "__main__":
    main()
