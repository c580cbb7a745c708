"""Shared by the PTQ benchmarks: a MobileNetV2-style model (inverted residuals, ReLU6,
depthwise convolutions, BN) trained on Fashion-MNIST, and accuracy helpers.

BN uses ε = 1e-5 (PyTorch's default, which the MobileNetV2 of the DFQ paper was trained
with; Keras uses 1e-3). It matters for per-tensor weights: a depthwise channel whose
input is dead has zero output variance, and folding multiplies its kernel by
γ/sqrt(ε), i.e. up to 316·γ instead of 32·γ — the kind of outlier channel that DFQ's
equalization is for. No weight decay."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402


BN_EPSILON = 1e-5


def _batch_norm(name):
    return layers.BatchNormalization(momentum=0.9, epsilon=BN_EPSILON, name=name)


def _inverted_residual(x, expand, filters, stride, name):
    channels = x.shape[-1]
    y = layers.Conv2D(channels * expand, 1, use_bias=False, name=f"{name}_expand")(x)
    y = _batch_norm(f"{name}_expand_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                               name=f"{name}_dw")(y)
    y = _batch_norm(f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = _batch_norm(f"{name}_project_bn")(y)
    if stride == 1 and channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_v2_small(width=16):
    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = _batch_norm("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = _inverted_residual(x, 1, width, 1, "b1")
    x = _inverted_residual(x, 6, 24, 2, "b2")
    x = _inverted_residual(x, 6, 24, 1, "b3")
    x = _inverted_residual(x, 6, 32, 1, "b4")
    x = _inverted_residual(x, 6, 32, 1, "b5")
    x = layers.Conv2D(96, 1, use_bias=False, name="head")(x)
    x = _batch_norm("head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2_small")


def data(quick):
    from datasets import load_fashion_mnist

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    if quick:
        return (x_train[:6000], y_train[:6000]), (x_test[:500], y_test[:500])
    return (x_train, y_train), (x_test, y_test)


def trained_model(quick, seed=0):
    """The float model, trained (cached in out/ for the full run)."""
    keras.utils.set_random_seed(seed)
    (x_train, y_train), _ = data(quick)
    cache = os.path.join(ROOT, "out", "ptq_mobilenet_v2_small_eps1e-5.keras")
    if not quick and os.path.exists(cache):
        return keras.models.load_model(cache)
    model = mobilenet_v2_small()
    model.compile(optimizer=keras.optimizers.Adam(5e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=2 if quick else 6, batch_size=128, verbose=0)
    if not quick:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        model.save(cache)
    return model


def accuracy(model, x, y, batch_size=256):
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = keras.ops.convert_to_numpy(model(x[start:start + batch_size], training=False))
        correct += int(np.sum(np.argmax(logits, -1) == y[start:start + batch_size]))
    return correct / len(x)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
