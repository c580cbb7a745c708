"""Cell Division (Park & Yoo, DAC 2019) through tfquant's LiteRT delegate: a W8A8 model
run on the packed kernels as two INT4 (or four INT2) cells per weight, against the same
int8 model on LiteRT's own kernels and against plain W4A8.

`q = 16·cell₁ + cell₀ + 8` with both cells in [−8, 7], `q = Σᵢ 4ⁱ·cellᵢ + 42` with
cells in [−2, 1] (cc_ops/kernels/packed_int8_fc.h): the int32 accumulators, hence the
outputs, are the int8 model's bit for bit (checked here on every test image), so Cell
Division keeps int8 accuracy on 4-bit (2-bit) kernels, at twice (four times) their work.

Models: an MLP on Fashion-MNIST (Flatten, Dense 1024-ReLU, Dense 1024-ReLU, Dense 10),
float-trained 4 epochs, then QAT W8A8 and W4A8 (every layer, per channel) 1 epoch each
from the float weights; and the FC 4096→4096 of bench_delegate.py at 8 bits. Columns:
LiteRT accuracy on the 10 000 test images, flatbuffer KiB, weight bytes the kernels read,
invoke() ms at batch 1 and 64 ({THREADS} threads; variants in turns over ROUNDS rounds,
median of the rounds' medians).
Run: `make bench` or `.venv/bin/python benchmarks/bench_cell_division.py [--rounds R]`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import tfquant  # noqa: E402
from bench_delegate import THREADS, dense_stack, interpreter_case  # noqa: E402
from bench_delegate import export as export_fc  # noqa: E402
from benchmark_report import ROOT, cpu_name, interleaved_median_seconds  # noqa: E402
from benchmark_report import train_float_cached, write_section  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402
from tfquant.export import delegate_stats  # noqa: E402


def mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(1024, activation="relu")(x)
    x = keras.layers.Dense(1024, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def qat_flatbuffer(float_model, bits, x, y):
    """W{bits}A8 QAT for one epoch from `float_model`'s weights, exported."""
    qmodel = tfquant.quantize_model(float_model, tfquant.QuantConfig(weight_bits=bits,
                                                                     first_last_bits=None))
    qmodel.compile(keras.optimizers.Adam(1e-4),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, batch_size=128, epochs=1, verbose=2)
    return tfquant.export_tflite(qmodel, representative_data=x[:256]).flatbuffer


def has_amx_int8():
    try:
        with open("/proc/cpuinfo") as handle:
            return " amx_int8" in handle.read()
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    float_model = train_float_cached(
        mlp(), os.path.join(ROOT, "out", "cell_division", "mlp.weights.h5"), x_train,
        y_train, epochs=4, batch_size=128)
    float_accuracy = float(np.mean(np.argmax(float_model.predict(x_test, verbose=0), -1)
                                   == y_test))
    flatbuffers = {8: qat_flatbuffer(float_model, 8, x_train, y_train),
                   4: qat_flatbuffer(float_model, 4, x_train, y_train)}
    rng = np.random.default_rng(0)
    flatbuffers["fc8"] = export_fc(dense_stack([4096, 4096]), 8, rng.normal(
        size=(64, 4096)).astype(np.float32))

    # (label, flatbuffer key, interpreter variant, cell_bits)
    variants = [("int8, LiteRT builtin", 8, "builtin", None),
                ("int8, XNNPACK", 8, "XNNPACK", None),
                ("int8 as 2×INT4 cells, delegate", 8, "delegate", 4),
                ("int8 as 4×INT2 cells, delegate", 8, "delegate", 2),
                ("W4A8 INT4, delegate", 4, "delegate", None),
                ("W4A8 INT4, XNNPACK", 4, "XNNPACK", None)]
    accuracy, claimed, outputs = {}, {}, {}
    for label, key, variant, cell_bits in variants:
        _, output, delegate = interpreter_case(flatbuffers[key], x_test, variant, cell_bits)
        outputs[label] = output()
        accuracy[label] = float(np.mean(np.argmax(outputs[label], -1) == y_test))
        claimed[label] = delegate_stats(delegate)["claimed_nodes"] if delegate else 0
    for label in ("int8 as 2×INT4 cells, delegate", "int8 as 4×INT2 cells, delegate"):
        assert np.array_equal(outputs[label], outputs["int8, LiteRT builtin"]), label
        assert claimed[label] == 3, label

    workloads = [("MLP", key) for key in (8, 4)] + [("FC 4096→4096", "fc8")]
    cases = {}
    for name, key in workloads:
        for m in (1, 64):
            shape = (m, 28, 28, 1) if name == "MLP" else (m, 4096)
            x = rng.normal(size=shape).astype(np.float32)
            for label, vkey, variant, cell_bits in variants:
                if (vkey == 4) != (key == 4):
                    continue
                cases[(name, label, m)] = interpreter_case(flatbuffers[key], x, variant,
                                                           cell_bits)[0]
    ms = {case: t * 1e3 for case, t in interleaved_median_seconds(
        cases, args.rounds, args.runs).items()}

    body = [f"{THREADS} threads; invoke() ms, median over {args.rounds} interleaved rounds "
            f"of {args.runs}-invoke medians. Float MLP accuracy {float_accuracy:.2%}. The "
            "cells' outputs equal the int8 kernel's on all 10 000 test images "
            "(checked by the script).", "",
            f"CPU: {cpu_name()}, AMX-INT8 {'present' if has_amx_int8() else 'absent'}. "
            "With AMX, XNNPACK's int8 FULLY_CONNECTED at batch 64 outruns what 2 cores "
            "reach with VNNI (the packed kernels' instructions): there the cells lose; at "
            "batch 1 the cells' GEMVs read as many weight bytes as one int8 GEMV.", "",
            "| MLP, Fashion-MNIST | accuracy | FC nodes on the delegate | flatbuffer KiB "
            "| weight bytes read | batch 1 ms | batch 64 ms |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    weights = 784 * 1024 + 1024 * 1024 + 1024 * 10
    for label, key, _, _ in variants:
        read = weights if key == 8 else weights // 2
        body.append(f"| {label} | {accuracy[label]:.2%} | {claimed[label]} | "
                    f"{len(flatbuffers[key]) / 1024:.0f} | {read / 2**20:.2f} MiB "
                    f"| {ms[('MLP', label, 1)]:.3f} | {ms[('MLP', label, 64)]:.3f} |")
    body += ["", "| FC 4096→4096 int8 | batch 1 ms | batch 64 ms |", "|---|---:|---:|"]
    for label, key, _, _ in variants:
        if key == 8:
            body.append(f"| {label} | {ms[('FC 4096→4096', label, 1)]:.3f} | "
                        f"{ms[('FC 4096→4096', label, 64)]:.3f} |")
    text = "\n".join(body)
    print(text)
    write_section("Cell Division", f"python benchmarks/bench_cell_division.py --rounds "
                  f"{args.rounds}", text)


if __name__ == "__main__":
    main()
