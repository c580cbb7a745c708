"""The model zoo: keras.applications architectures, a small ViT and a token transformer
on Fashion-MNIST, each through PTQ W8A8, QAT W8A8 and QAT W4A8 into a full-integer
LiteRT flatbuffer that runs on the test images.

Images are resized to 32×32 (Xception: 71×71, its smallest input) and repeated to RGB.
Every model is trained from scratch (`weights=None`, logits: `classifier_activation=None`)
on a subset of the training set, its BN statistics re-estimated after training; trained float weights are cached in out/model_zoo/ (keyed
by the recipe), so a rerun only quantizes. Columns: float / Keras quantized / LiteRT
accuracy on the first `--test` test images, argmax agreement LiteRT vs the Keras
quantized model, float compute ops left in the flatbuffer, its size, export seconds.

Run: `make bench`, or `.venv/bin/python benchmarks/model_zoo.py [--models A,B] [--train N]
[--epochs E] [--test N]`; `--report-only` rewrites the BENCHMARKS.md section from the rows
kept so far (runs can be split up); `--quick` trains on 2000 images for one epoch (a smoke run; it
neither reads nor writes the cache and does not write BENCHMARKS.md).
"""

import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import tfquant  # noqa: E402
from benchmark_report import ROOT, write_section  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402
from tfquant.keras.layers import ChannelAffine  # noqa: E402
from tfquant.export.litert_runner import run_litert  # noqa: E402

CACHE = os.path.join(ROOT, "out", "model_zoo")


# -- a ViT and a token transformer, from Keras layers ---------------------------------------

@keras.saving.register_keras_serializable(package="model_zoo")
class PositionEmbedding(layers.Layer):
    """Adds a learned [sequence, features] position table (a user's own layer)."""

    def build(self, input_shape):
        self.positions = self.add_weight(shape=tuple(input_shape[1:]), name="positions",
                                         initializer=keras.initializers.RandomNormal(0.02))

    def call(self, x):
        return x + self.positions


class PositionEmbeddingHandler(tfquant.LayerHandler):
    """Teaches tfquant the layer above: an ADD of a trainable table, quantized as the
    flatbuffer stores it (`ChannelAffine`), with a quantized output."""

    def keeps_layer(self, layer):
        return False

    def rebuild(self, context, node, args, kwargs):
        def make(layer):
            table = keras.ops.convert_to_numpy(layer.positions)
            return ChannelAffine("add", table.shape, table,
                                 name=context.unique_name(f"{layer.name}_table"))

        return context.quantize_output(node, context.replacement(node.operation, make)(args[0]))


tfquant.register_layer_handler(PositionEmbedding, PositionEmbeddingHandler())


def transformer_block(x, dim, heads, name):
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    h = layers.MultiHeadAttention(heads, dim // heads, name=f"{name}_mha")(h, h)
    x = layers.Add(name=f"{name}_add1")([x, h])
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    h = layers.Dense(2 * dim, activation="gelu", name=f"{name}_mlp1")(h)
    h = layers.Dense(dim, name=f"{name}_mlp2")(h)
    return layers.Add(name=f"{name}_add2")([x, h])


def vit(dim=64, heads=4, blocks=2):
    """Patch embedding (4×4 patches), two attention blocks, LayerNorm, GELU MLP."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(dim, 4, strides=4, name="patches")(inputs)
    x = PositionEmbedding(name="positions")(layers.Reshape((49, dim))(x))
    for index in range(blocks):
        x = transformer_block(x, dim, heads, f"block{index}")
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    outputs = layers.Dense(10, name="logits")(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs, name="vit")


def token_transformer(dim=64, heads=4, levels=16):
    """Each 2×2-pooled pixel, quantized to 16 levels, is a token (196 per image)."""
    tokens = keras.Input((196,), dtype="int32", name="tokens")
    x = PositionEmbedding(name="positions")(layers.Embedding(levels, dim, name="embed")(tokens))
    x = transformer_block(x, dim, heads, "block0")
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    outputs = layers.Dense(10, name="logits")(layers.GlobalAveragePooling1D()(x))
    return keras.Model(tokens, outputs, name="token_transformer")


def application(name, size):
    def build():
        return getattr(keras.applications, name)(
            input_shape=(size, size, 3), weights=None, classes=10, classifier_activation=None)
    return build


# name → (builder, input kind). "rgb255": RGB in [0, 255] (models with their own
# Rescaling/Normalization); "rgb11": RGB in [−1, 1]; "gray": 28×28×1 in [0, 1]; "tokens".
MODELS = {
    "MobileNetV2": (application("MobileNetV2", 32), "rgb11"),
    "MobileNetV3Small": (application("MobileNetV3Small", 32), "rgb255"),
    "MobileNetV3Large": (application("MobileNetV3Large", 32), "rgb255"),
    "EfficientNetB0": (application("EfficientNetB0", 32), "rgb255"),
    "EfficientNetV2B0": (application("EfficientNetV2B0", 32), "rgb255"),
    "ResNet50V2": (application("ResNet50V2", 32), "rgb11"),
    "DenseNet121": (application("DenseNet121", 32), "rgb11"),
    "NASNetMobile": (application("NASNetMobile", 32), "rgb11"),
    "ConvNeXtTiny": (application("ConvNeXtTiny", 32), "rgb255"),
    "Xception": (application("Xception", 71), "rgb11"),
    "ViT": (vit, "gray"),
    "TokenTransformer": (token_transformer, "tokens"),
}


def prepare(images, kind, size):
    """Fashion-MNIST images [N, 28, 28, 1] in [0, 1] as the model's input."""
    if kind == "gray":
        return images
    if kind == "tokens":
        pooled = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))
        return np.minimum((pooled * 16).astype(np.int32), 15).reshape(-1, 196)
    resized = tf.image.resize(images, (size, size)).numpy()
    rgb = np.repeat(resized, 3, axis=-1)
    return rgb * 255.0 if kind == "rgb255" else rgb * 2.0 - 1.0


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def compile_model(model, lr, steps):
    schedule = keras.optimizers.schedules.CosineDecay(lr, max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def train_float(name, builder, x, y, epochs, batch, use_cache):
    """The float model, trained (or loaded from the cache)."""
    recipe = json.dumps([name, len(x), epochs, batch, keras.__version__])
    path = os.path.join(CACHE, f"{name}-{hashlib.sha1(recipe.encode()).hexdigest()[:10]}.keras")
    if use_cache and os.path.exists(path):
        return keras.saving.load_model(path), 0.0
    keras.utils.set_random_seed(0)
    model = builder()
    compile_model(model, 1e-3, epochs * (len(x) // batch))
    start = time.time()
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
    seconds = time.time() - start
    if use_cache:
        os.makedirs(CACHE, exist_ok=True)
        model.save(path + ".tmp.keras")
        os.replace(path + ".tmp.keras", path)
    return model, seconds


def evaluate_export(qmodel, x_cal, x_test, y_test):
    """Exports `qmodel`; the row of figures for it."""
    start = time.time()
    report = tfquant.export_tflite(qmodel, representative_data=x_cal)
    export_seconds = time.time() - start
    keras_logits = qmodel.predict(x_test, batch_size=256, verbose=0)
    litert_logits = run_litert(report.flatbuffer, x_test)[0]
    return {
        "keras": accuracy(keras_logits, y_test), "litert": accuracy(litert_logits, y_test),
        "agreement": float(np.mean(np.argmax(keras_logits, -1) == np.argmax(litert_logits, -1))),
        "float_ops": len(report.float_ops), "kib": report.size_bytes / 1024,
        "export_s": export_seconds,
    }


def qat(float_model, config, x, y, epochs, batch):
    qmodel = tfquant.quantize_model(float_model, config)
    steps = epochs * (len(x) // batch)
    compile_model(qmodel, 1e-4, steps)
    qmodel.fit(x, y, epochs=epochs, batch_size=batch, verbose=0,
               callbacks=[tfquant.callbacks.FreezeBatchNorm(after_steps=steps // 2)])
    return qmodel


def run_model(name, args):
    builder, kind = MODELS[name]
    size = 71 if name == "Xception" else 32
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = prepare(x_train[:args.train], kind, size), y_train[:args.train]
    x_test, y_test = prepare(x_test[:args.test], kind, size), y_test[:args.test]
    x_cal = x_train[:256]
    model, train_seconds = train_float(name, builder, x_train, y_train, args.epochs,
                                       args.batch, not args.quick)
    # After a few epochs BN's moving statistics (momentum up to 0.999 in
    # keras.applications) lag far behind the weights: re-estimated before anything else.
    # (dropout off while they are: inference runs without it).
    tfquant.reestimate_batch_norm(model, x_train, batch_size=500, max_batches=20)
    row = {"model": name, "params": model.count_params(), "train_s": train_seconds,
           "recipe": f"{len(x_train)}×{args.epochs}, test {len(x_test)}",
           "float": accuracy(model.predict(x_test, batch_size=256, verbose=0), y_test)}
    variants = {
        "PTQ W8A8": lambda: tfquant.ptq.quantize(model, x_cal, verbose=0),
        "QAT W8A8": lambda: qat(model, tfquant.QuantConfig(), x_train, y_train,
                                args.qat_epochs, args.batch),
        "QAT W4A8": lambda: qat(model, tfquant.QuantConfig(weight_bits=4), x_train, y_train,
                                args.qat_epochs, args.batch),
    }
    row["variants"] = {}
    for variant, make in variants.items():
        try:
            row["variants"][variant] = evaluate_export(make(), x_cal, x_test, y_test)
        except Exception as error:  # a row says what failed; the zoo goes on
            row["variants"][variant] = {"error": f"{type(error).__name__}: {error}"[:300]}
        print(name, variant, row["variants"][variant], flush=True)
    return row


def table(rows):
    lines = ["| model | params | train images × epochs, test images | float | variant | "
             "Keras quantized | LiteRT | agreement | float ops | size KiB | export s |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        recipe = row["recipe"] + (f" († {row['earlier_run']})" if "earlier_run" in row else "")
        for variant, v in row["variants"].items():
            head = (f"| {row['model']} | {row['params'] / 1e6:.2f} M | "
                    f"{recipe} | {row['float']:.4f} ")
            if "error" in v:
                lines.append(head + f"| {variant} | {v['error']} | | | | | |")
                continue
            lines.append(head + f"| {variant} | {v['keras']:.4f} | {v['litert']:.4f} | "
                         f"{v['agreement']:.2%} | {v['float_ops']} | {v['kib']:.0f} | "
                         f"{v['export_s']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--train", type=int, default=20000, help="training images")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--epochs", type=int, default=4, help="float epochs")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--results", default=os.path.join(CACHE, "results.json"),
                        help="rows are kept here per model, so runs can be split up")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="write the BENCHMARKS.md section from --results, run nothing")
    args = parser.parse_args()
    if args.quick:
        args.train, args.epochs, args.test = 2000, 1, 500
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    results = {}
    if not args.quick and os.path.exists(args.results):
        with open(args.results) as handle:
            results = json.load(handle)
    for name in [] if args.report_only else names:
        results[name] = run_model(name, args)
        if not args.quick:
            os.makedirs(os.path.dirname(args.results), exist_ok=True)
            with open(args.results + ".tmp", "w") as handle:
                json.dump(results, handle, indent=1)
            os.replace(args.results + ".tmp", args.results)
    rows = [results[n] for n in MODELS if n in results]
    print(table(rows))
    if not args.quick:
        body = ("Float training from scratch (Adam 1e-3, cosine decay), batch "
                f"{args.batch}, on the first training images; QAT: {args.qat_epochs} "
                "epoch(s) at 1e-4 from the float weights, BN frozen halfway; PTQ: min-max on "
                "256 training images. Accuracies on the first test images (the recipe "
                "column)." + ("" if all("earlier_run" not in r for r in rows) else
                              " Rows marked † were not rerun: they are an earlier run's "
                              "(its date), with the code of that day.")
                + "\n\n" + table(rows))
        write_section("Model zoo", "python benchmarks/model_zoo.py", body)


if __name__ == "__main__":
    main()
