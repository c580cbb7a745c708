"""SeerNet (Cao et al., CVPR 2019) on a ReLU-heavy Fashion-MNIST CNN: how sparse its
Conv + ReLU (+ 2×2 max-pool) outputs are, how much of each convolution the 4-bit
predictor lets `tfquant.ptq.seernet` skip, the time of predictor + sparse convolution
against TensorFlow's dense Conv2D + bias + ReLU (+ max-pool) on the layer's real inputs,
and the accuracy change of the whole model.

Model: Conv 32 3×3 ReLU, MaxPool, Conv 64 3×3 + BN + ReLU, MaxPool, Conv 128 3×3 ReLU,
Conv 128 3×3 ReLU, MaxPool, GlobalAveragePooling, Dense 10; float-trained 3 epochs.
Timing: batch {BATCH} test images, TF's intra-op threads (the machine's cores), dense
and SeerNet in turns over ROUNDS rounds, median of the rounds' medians.
Run: `make bench` or `.venv/bin/python benchmarks/bench_seernet.py [--rounds R]`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import tfquant  # noqa: E402
from benchmark_report import ROOT, interleaved_median_seconds  # noqa: E402
from benchmark_report import train_float_cached, write_section  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402

BATCH = 256
__doc__ = __doc__.replace("{BATCH}", str(BATCH))


def relu_cnn():
    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(64, 3, padding="same", use_bias=False, name="conv2")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = L.Conv2D(128, 3, padding="same", activation="relu", name="conv4")(x)
    x = L.MaxPooling2D()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), -1) == y))


def dense_layer_fn(layer, x):
    """TF's dense Conv2D + bias + ReLU (+ max-pool) with `layer`'s weights on x."""
    kernel, bias = tf.constant(layer.kernel.numpy()), tf.constant(layer.bias.numpy())
    strides, padding, pool = list(layer.strides), layer.padding.upper(), layer.pool

    @tf.function
    def run():
        y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides, padding), bias))
        return tf.nn.max_pool2d(y, 2, 2, "VALID") if pool == 2 else y
    return run


def layer_rows(fast, x, rounds, runs):
    rows = []
    for layer in fast.layers:
        if not isinstance(layer, tfquant.ptq.SeerNetConv2D):
            continue
        inputs = tf.constant(keras.Model(fast.input, layer.input).predict(x, verbose=0))
        dense = dense_layer_fn(layer, inputs)
        seer = tf.function(lambda layer=layer, inputs=inputs: layer.call_counting(inputs))
        y, computed = seer()
        conv_shape = (inputs.shape[0], *layer.compute_output_shape(inputs.shape)[1:3])
        conv_outputs = np.prod(conv_shape) * layer.filters * layer.pool ** 2
        conv = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(inputs, layer.kernel, list(layer.strides),
                                                      layer.padding.upper()), layer.bias))
        zero = float(np.mean(conv.numpy() == 0))
        error = float(np.mean(np.abs(y.numpy() - dense().numpy())))
        times = interleaved_median_seconds({"dense": dense, "seer": seer}, rounds, runs)
        rows.append((layer.name, tuple(inputs.shape[1:]), layer.filters, layer.pool, zero,
                     int(computed) / conv_outputs, times["dense"] * 1e3, times["seer"] * 1e3,
                     error))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    model = train_float_cached(relu_cnn(), os.path.join(ROOT, "out", "seernet",
                                                        "relu_cnn.weights.h5"),
                               x_train, y_train, epochs=3, batch_size=128)
    float_accuracy = accuracy(model, x_test, y_test)
    every = ["conv1", "conv2", "conv3", "conv4"]
    fast = {bits: tfquant.ptq.seernet(model, bits=bits, layers=every) for bits in (4, 2)}
    accuracies = {bits: accuracy(m, x_test, y_test) for bits, m in fast.items()}
    rows = layer_rows(fast[4], x_test[:BATCH], args.rounds, args.runs)
    variants = {"float": model, "SeerNet on every conv": fast[4],
                "SeerNet default (`min_input_channels=16`: conv2–conv4)":
                    tfquant.ptq.seernet(model),
                "SeerNet on conv3, conv4": tfquant.ptq.seernet(model, layers=["conv3", "conv4"])}
    accuracies_of = {name: accuracy(m, x_test, y_test) for name, m in variants.items()}
    batch = tf.constant(x_test[:BATCH])
    whole = interleaved_median_seconds(
        {name: tf.function(lambda m=m: m(batch)) for name, m in variants.items()},
        args.rounds, args.runs)

    body = [f"Fashion-MNIST ReLU CNN (conv1 32, conv2 64 + BN, conv3 128, conv4 128; 3×3, "
            f"2×2 max-pools after conv1, conv2, conv4), float-trained 3 epochs. Predictor: "
            f"the kernel at 4 bits per channel (packed kernels) on int8 inputs (one scale "
            f"per image); threshold 0. Times: batch {BATCH}, median over {args.rounds} "
            "interleaved rounds.", "",
            "| model | accuracy (10 000 test images) | Δ vs float |", "|---|---:|---:|",
            f"| float | {100 * float_accuracy:.2f} | — |"]
    for bits, acc in accuracies.items():
        body.append(f"| SeerNet, {bits}-bit predictor | {100 * acc:.2f} | "
                    f"{100 * (acc - float_accuracy):+.2f} |")
    body += ["", "| layer | input | filters | pool | ReLU zeros | computed | dense TF ms | "
             "predictor + sparse ms | dense ÷ SeerNet | mean abs error |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, shape, filters, pool, zero, computed, dense_ms, seer_ms, error in rows:
        body.append(f"| {name} | {'×'.join(map(str, shape))} | {filters} | "
                    f"{'2×2' if pool == 2 else '—'} | {100 * zero:.1f} % | "
                    f"{100 * computed:.1f} % | {dense_ms:.2f} | {seer_ms:.2f} | "
                    f"{dense_ms / seer_ms:.2f}× | {error:.4f} |")
    body += ["", f"| whole model, batch {BATCH} | accuracy | ms | float ÷ it |",
             "|---|---:|---:|---:|"]
    for name in variants:
        body.append(f"| {name} | {100 * accuracies_of[name]:.2f} | {whole[name] * 1e3:.2f} | "
                    f"{whole['float'] / whole[name]:.2f}× |")
    body += ["", "\"computed\": the share of the convolution's outputs (before the pool) that "
             "the float convolution ran. The pool layers compute at most 25 % (the window's "
             "predicted maximum, if positive)."]
    met_speed = any(dense_ms > seer_ms for *_, dense_ms, seer_ms, _ in rows)
    met_acc = abs(accuracies[4] - float_accuracy) <= 0.005
    body += ["", "| target | measured | met |", "|---|---:|---|",
             f"| predictor + sparse conv faster than dense at the measured sparsity | best "
             f"{max(d / s for *_, d, s, _ in rows):.2f}× | {'yes' if met_speed else 'no'} |",
             f"| accuracy within 0.5 point of float (4-bit predictor) | "
             f"{100 * (accuracies[4] - float_accuracy):+.2f} | {'yes' if met_acc else 'no'} |"]
    print("\n".join(body))
    write_section("SeerNet", f"python benchmarks/bench_seernet.py --rounds {args.rounds}",
                  "\n".join(body))


if __name__ == "__main__":
    main()
