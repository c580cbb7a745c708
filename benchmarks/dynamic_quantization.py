"""Weight-only (dynamic range) export against float and the full-integer export, in LiteRT.

For the ViT of model_zoo.py (its cached float model), a transformer MLP (Flatten,
Dense-GELU-Dense, trained briefly) and the demo CNN (its cached float weights): the float
flatbuffer, weight-only PTQ exported with `activations="dynamic"` at int8 and INT4
(per channel, MSE-clipped INT4 weights, every layer at 4 bits; once more with GPTQ
rounding of the Dense/EinsumDense/attention weights), and W8A8 PTQ through the
full-integer export. Columns: flatbuffer KiB, LiteRT (XNNPACK, the default) accuracy on
the Fashion-MNIST test set, batch-1 latency (one thread; interleaved rounds, median of the
rounds' medians).

Run: `.venv/bin/python benchmarks/dynamic_quantization.py [--test N] [--rounds R]`.
"""

import argparse
import glob
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import model_zoo  # noqa: E402,F401  (registers the ViT's PositionEmbedding and its handler)
import tfquant  # noqa: E402
from benchmark_report import ROOT, train_float_cached, write_section  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402
from demo_model import build_float_model  # noqa: E402
from tfquant.export.litert_runner import run_litert  # noqa: E402


def vit(x, y):
    cached = sorted(glob.glob(os.path.join(ROOT, "out", "model_zoo", "ViT-*.keras")))
    if cached:
        return keras.saving.load_model(cached[0])
    return model_zoo.train_float("ViT", model_zoo.vit, x[:20000], y[:20000], 4, 128, True)[0]


def mlp(x, y):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Dense(512, activation="gelu", name="mlp1")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, name="mlp2")(h), name="mlp")
    path = os.path.join(ROOT, "out", "dynamic_mlp_3.weights.h5")
    return train_float_cached(model, path, x, y, 3, 128)


def cnn(x, y):
    path = os.path.join(ROOT, "out", "accuracy_float_8.weights.h5")
    return train_float_cached(build_float_model(), path, x, y, 8, 128)


def variants(model, x_cal):
    """{name: flatbuffer} of the five exports."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    out = {"float": converter.convert()}
    for name, bits, clip, rounding in (("dynamic int8", 8, "minmax", "nearest"),
                                       ("dynamic INT4", 4, "mse", "nearest"),
                                       ("dynamic INT4 GPTQ", 4, "mse", "gptq")):
        config = tfquant.QuantConfig(activation_quantizer=None, weight_bits=bits,
                                     first_last_bits=None, weight_calibrator=clip)
        qmodel = tfquant.ptq.quantize(model, x_cal, config, rounding=rounding, verbose=0)
        report = tfquant.export_tflite(qmodel, representative_data=x_cal[:256],
                                       activations="dynamic")
        print(name, report.notes[-1])
        out[name] = report.flatbuffer
    qmodel = tfquant.ptq.quantize(model, x_cal, verbose=0)
    out["static int8"] = tfquant.export_tflite(qmodel, representative_data=x_cal[:256]).flatbuffer
    return out


def latencies(flatbuffers, x, rounds, invokes=50):
    """Batch-1 seconds per flatbuffer: interleaved rounds, median of the round medians."""
    from ai_edge_litert.interpreter import Interpreter

    runners = {}
    for name, data in flatbuffers.items():
        interpreter = Interpreter(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], x[:1].astype(np.float32))
        interpreter.invoke()
        runners[name] = interpreter.invoke
    times = {name: [] for name in flatbuffers}
    for _ in range(rounds):
        for name, invoke in runners.items():
            samples = []
            for _ in range(invokes):
                start = time.perf_counter()
                invoke()
                samples.append(time.perf_counter() - start)
            times[name].append(statistics.median(samples))
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_test, y_test = x_test[:args.test], y_test[:args.test]
    x_cal = x_train[-512:]
    rows = []
    for label, build in (("ViT", vit), ("transformer MLP", mlp), ("demo CNN", cnn)):
        flatbuffers = variants(build(x_train, y_train), x_cal)
        seconds = latencies(flatbuffers, x_test, args.rounds)
        accuracies = {name: float(np.mean(np.argmax(run_litert(data, x_test)[0], -1) == y_test))
                      for name, data in flatbuffers.items()}
        for name, data in flatbuffers.items():
            rows.append(f"| {label} | {name} | {len(data) / 1024:.1f} | "
                        f"{100 * accuracies[name]:.2f} | "
                        f"{100 * (accuracies[name] - accuracies['float']):+.2f} | "
                        f"{1e6 * seconds[name]:.0f} |")
            print(rows[-1], flush=True)
    body = (
        "Weight-only PTQ (`QuantConfig(activation_quantizer=None)`) exported with "
        "`export_tflite(..., activations=\"dynamic\")`: int8/INT4 per-channel weights, float "
        "activations that LiteRT's hybrid FULLY_CONNECTED/CONV_2D kernels quantize per row "
        "at run time (INT4 depthwise kernels are stored as int8: LiteRT has no INT4 hybrid "
        "DEPTHWISE_CONV_2D). INT4: every layer at 4 bits, MSE-clipped; GPTQ: the same with "
        "`rounding=\"gptq\"` (Dense, EinsumDense and attention projections; convolutions "
        "round to nearest). Static int8: W8A8 "
        "PTQ through the full-integer export. Accuracy: LiteRT (XNNPACK) on the first "
        f"{len(x_test)} Fashion-MNIST test images; latency: batch 1, one thread, "
        f"{args.rounds} interleaved rounds of 50 invokes, median of the round medians.\n\n"
        "| model | export | KiB | LiteRT accuracy % | vs float | batch-1 µs |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Target of issue 19: weight-only INT4 of the ViT and of the transformer MLP within "
        "0.5 point of float in LiteRT (the 'vs float' column).")
    write_section("Weight-only (dynamic range) export", "python benchmarks/"
                  f"dynamic_quantization.py --test {args.test} --rounds {args.rounds}", body)


if __name__ == "__main__":
    main()
