"""tfquant's delegate on hybrid FULLY_CONNECTED nodes (weight-only INT4 exports, float
activations) against LiteRT's own hybrid kernel and XNNPACK, side by side in one process.

Models: weight-only INT4 PTQ (`QuantConfig(activation_quantizer=None, weight_bits=4)`,
MSE-clipped, per channel) exported with `export_tflite(..., activations="dynamic")`:
  FC 4096→4096       one Dense(4096, no bias) on 4096 inputs (random data)
  transformer MLP    dynamic_quantization.py's Flatten, Dense 512-GELU, Dense 10, trained
                     3 epochs on Fashion-MNIST (its cached float weights)
Interpreters (num_threads=THREADS): builtin (LiteRT's hybrid kernel,
BUILTIN_WITHOUT_DEFAULT_DELEGATES), XNNPACK (the default resolver), delegate (builtin
resolver + tfquant's delegate claiming every hybrid FC: `min_int4_weights=0`). The
delegate quantizes each input row symmetrically to int8 (packed.h), LiteRT's kernel
asymmetrically: outputs agree within the dynamic-quantization tolerance, not bit for bit
(max |diff| / max |builtin output| is reported). invoke() ms: variants take turns over
ROUNDS rounds, median of the rounds' medians.
Run: `make bench` or `.venv/bin/python benchmarks/bench_hybrid_delegate.py [--rounds R]`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import tfquant  # noqa: E402
from bench_delegate import THREADS, dense_stack, interpreter_case  # noqa: E402
from benchmark_report import interleaved_median_seconds, write_section  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402
from dynamic_quantization import mlp  # noqa: E402
from tfquant.export import delegate_stats  # noqa: E402

VARIANTS = ("builtin", "XNNPACK", "delegate")


def interpreter(flatbuffer, x, variant):
    """(invoke, output getter, FC nodes the delegate claimed) of bench_delegate's case."""
    invoke, output, delegate = interpreter_case(flatbuffer, x, variant)
    return invoke, output, delegate_stats(delegate)["claimed_nodes"] if delegate else 0


def weight_only_int4(model, x_cal):
    config = tfquant.QuantConfig(activation_quantizer=None, weight_bits=4, first_last_bits=None,
                                 weight_calibrator="mse")
    qmodel = tfquant.ptq.quantize(model, x_cal, config, verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x_cal[:256],
                                   activations="dynamic")
    assert "INT4" in report.weight_dtypes.values()
    return report.flatbuffer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    float_mlp = mlp(x_train, y_train)
    float_accuracy = float(np.mean(np.argmax(float_mlp.predict(x_test, verbose=0), -1)
                                   == y_test))
    models = {"FC 4096→4096": weight_only_int4(
                  dense_stack([4096, 4096]), rng.normal(size=(256, 4096)).astype(np.float32)),
              "transformer MLP": weight_only_int4(float_mlp, x_train[-512:])}

    accuracy, claimed, agreement = {}, {}, {}
    outputs = {}
    for variant in VARIANTS:
        _, output, claimed[variant] = interpreter(models["transformer MLP"], x_test, variant)
        outputs[variant] = output()
        accuracy[variant] = float(np.mean(np.argmax(outputs[variant], -1) == y_test))
    for variant in ("XNNPACK", "delegate"):
        agreement[variant] = float(np.mean(np.argmax(outputs[variant], -1)
                                           == np.argmax(outputs["builtin"], -1)))

    cases, deviation = {}, {}
    for name, flatbuffer in models.items():
        for m in (1, 16):
            shape = (m, 4096) if name.startswith("FC") else (m, 28, 28, 1)
            x = (rng.normal(size=shape) if name.startswith("FC") else x_test[:m]).astype(
                np.float32)
            got = {}
            for variant in VARIANTS:
                invoke, output, nodes = interpreter(flatbuffer, x, variant)
                cases[(name, m, variant)] = invoke
                got[variant] = output()
                claimed[(name, variant)] = nodes
            deviation[(name, m)] = float(np.abs(got["delegate"] - got["builtin"]).max()
                                         / np.abs(got["builtin"]).max())
    ms = {case: t * 1e3 for case, t in interleaved_median_seconds(
        cases, args.rounds, args.runs).items()}

    body = [f"{THREADS} threads; invoke() ms, median over {args.rounds} interleaved rounds of "
            f"{args.runs}-invoke medians. Deviation: max |delegate − builtin| / max |builtin| "
            "on that batch (tfquant.export.dynamic.TOLERANCE is 0.03).", "",
            "| model | batch | FC nodes on the delegate | builtin hybrid ms | XNNPACK ms "
            "| delegate ms | × builtin | × XNNPACK | deviation |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in models:
        for m in (1, 16):
            t = {v: ms[(name, m, v)] for v in VARIANTS}
            body.append(f"| {name} | {m} | {claimed[(name, 'delegate')]} | {t['builtin']:.3f} "
                        f"| {t['XNNPACK']:.3f} | {t['delegate']:.3f} | "
                        f"{t['builtin'] / t['delegate']:.2f} | "
                        f"{t['XNNPACK'] / t['delegate']:.2f} | {deviation[(name, m)]:.4f} |")
    body += ["", f"Transformer MLP on the 10 000 Fashion-MNIST test images (float "
             f"{float_accuracy:.2%}):", "",
             "| interpreter | accuracy | argmax agreement with builtin |", "|---|---:|---:|"]
    for variant in VARIANTS:
        agree = "—" if variant == "builtin" else f"{agreement[variant]:.2%}"
        body.append(f"| {variant} | {accuracy[variant]:.2%} | {agree} |")
    text = "\n".join(body)
    print(text)
    write_section("LiteRT delegate on hybrid FULLY_CONNECTED",
                  f"python benchmarks/bench_hybrid_delegate.py --rounds {args.rounds}", text)


if __name__ == "__main__":
    main()
