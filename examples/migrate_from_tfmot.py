"""Moving a TFMOT QAT script to tfquant: the same tf_keras model, a few changed lines.

A TFMOT user's script (tf_keras, `TF_USE_LEGACY_KERAS=1`):

    import tensorflow_model_optimization as tfmot
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    model = tf_keras.Sequential([..., annotate(tf_keras.layers.Conv2D(...)), ...])
    with tfmot.quantization.keras.quantize_scope():
        qmodel = tfmot.quantization.keras.quantize_apply(
            tfmot.quantization.keras.quantize_annotate_model(model))
    qmodel.compile(tf_keras.optimizers.Adam(1e-3), loss=..., metrics=[...])
    qmodel.fit(x, y, epochs=...)
    converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()

The same with tfquant — the tf_keras model and its TFMOT annotations stay as they are:

    import tfquant
    qmodel = tfquant.quantize_model(model)          # annotations honoured; a Keras 3 model
    qmodel.compile(keras.optimizers.Adam(1e-3), loss=..., metrics=[...])   # Keras 3 objects
    qmodel.fit(x, y, epochs=..., callbacks=[tfquant.callbacks.FreezeBatchNorm(after_epochs=1)])
    report = tfquant.export_tflite(qmodel, "model.tflite", representative_data=x[:500])

What changes: `quantize_model` returns a Keras 3 model (tf_keras layers rebuilt with the
same names and weights), so compile it with `keras` optimizers, losses and callbacks —
the tfquant callbacks among them; BatchNormalization is folded into the convolution
before it (TFMOT keeps it separate); `export_tflite` converts, checks that every op is
integer and runs the flatbuffer in LiteRT against the Keras model. Here the float model
has BN after each convolution and only the convolutions and the classifier are
annotated, as a TFMOT user may have done; both scripts run on Fashion-MNIST and the table
compares them.

    python examples/migrate_from_tfmot.py [--float_epochs 4] [--qat_epochs 1] [--train_samples 20000]
"""

import os
import sys
import time

# TFMOT works with tf_keras only: tf.keras must be Keras 2 in this process. tfquant uses
# Keras 3 (`import keras`) either way.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("float_epochs", 4, "Epochs of float training (tf_keras).")
flags.DEFINE_integer("qat_epochs", 1, "Epochs of QAT fine-tuning, for TFMOT and tfquant alike.")
flags.DEFINE_integer("train_samples", 20000, "Training images used (≤ 60000).")
flags.DEFINE_integer("seed", 0, "Random seed.")


def build_annotated_float_model():
    """A tf_keras CNN; the convolutions and the classifier carry TFMOT annotations."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    annotate = tfmot.quantization.keras.quantize_annotate_layer
    L = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((28, 28, 1)),
        annotate(L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")),
        annotate(L.BatchNormalization(momentum=0.9, name="bn1")),
        annotate(L.ReLU(name="relu1")),
        L.MaxPooling2D(name="pool1"),
        annotate(L.Conv2D(32, 3, padding="same", use_bias=False, name="conv2")),
        annotate(L.BatchNormalization(momentum=0.9, name="bn2")),
        annotate(L.ReLU(name="relu2")),
        annotate(L.GlobalAveragePooling2D(name="gap")),
        annotate(L.Dense(10, name="logits")),
    ], name="tfmot_user_cnn")


def litert_accuracy(flatbuffer, x, y):
    from tfquant.export.litert_runner import run_litert

    import numpy as np

    return float(np.mean(np.argmax(run_litert(flatbuffer, [x])[0], -1) == y))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    import tfquant

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from datasets import load_fashion_mnist

    keras.utils.set_random_seed(FLAGS.seed)
    tf_keras.utils.set_random_seed(FLAGS.seed)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = x_train[:FLAGS.train_samples], y_train[:FLAGS.train_samples]

    # The float model, trained as the TFMOT user trained it (tf_keras).
    model = build_annotated_float_model()
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=128, epochs=FLAGS.float_epochs, verbose=2)
    float_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

    # Before: TFMOT.
    start = time.perf_counter()
    with tfmot.quantization.keras.quantize_scope():
        tfmot_model = tfmot.quantization.keras.quantize_apply(model)
    tfmot_model.compile(optimizer=tf_keras.optimizers.Adam(1e-4), metrics=["accuracy"],
                        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tfmot_model.fit(x_train, y_train, batch_size=128, epochs=FLAGS.qat_epochs, verbose=2)
    converter = tf.lite.TFLiteConverter.from_keras_model(tfmot_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    tfmot_flatbuffer = converter.convert()
    tfmot_seconds = time.perf_counter() - start

    # After: tfquant — the same annotated tf_keras model.
    start = time.perf_counter()
    qmodel = tfquant.quantize_model(model)
    qmodel.compile(optimizer=keras.optimizers.Adam(1e-4), metrics=["accuracy"],
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train, y_train, batch_size=128, epochs=FLAGS.qat_epochs, verbose=2,
               callbacks=[tfquant.callbacks.FreezeBatchNorm(after_steps=100)])
    report = tfquant.export_tflite(qmodel, representative_data=x_test[:1000])
    tfquant_seconds = time.perf_counter() - start

    rows = [
        ("float (tf_keras) test accuracy", f"{float_accuracy:.2%}"),
        ("TFMOT: Keras QAT accuracy", f"{tfmot_model.evaluate(x_test, y_test, verbose=0)[1]:.2%}"),
        ("TFMOT: LiteRT accuracy", f"{litert_accuracy(tfmot_flatbuffer, x_test, y_test):.2%}"),
        ("TFMOT: flatbuffer size", f"{len(tfmot_flatbuffer) / 1024:.1f} KiB"),
        ("TFMOT: QAT + convert time", f"{tfmot_seconds:.1f} s"),
        ("tfquant: Keras QAT accuracy", f"{qmodel.evaluate(x_test, y_test, verbose=0)[1]:.2%}"),
        ("tfquant: LiteRT accuracy", f"{litert_accuracy(report.flatbuffer, x_test, y_test):.2%}"),
        ("tfquant: flatbuffer size", f"{report.size_bytes / 1024:.1f} KiB"),
        ("tfquant: max |Keras - LiteRT| (1000 images)", f"{report.max_abs_diff_lsb:.0f} LSB"),
        ("tfquant: argmax agreement Keras/LiteRT", f"{report.argmax_agreement:.2%}"),
        ("tfquant: QAT + export + verification time", f"{tfquant_seconds:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(["", "TFMOT → tfquant on the same annotated tf_keras model",
                     "-" * (width + 12)]
                    + [f"{name:<{width}}  {value}" for name, value in rows]))


if __name__ == "__main__":
    app.run(main)
