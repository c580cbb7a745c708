"""Fashion-MNIST end to end: float training → tfquant QAT → int8 TFLite → LiteRT accuracy.

What `make demo` runs. Trains a small CNN (conv-BN-ReLU, depthwise, one residual Add) in
float, quantizes it with `tfquant.quantize_model` (int8 weights per channel, int8
activations, BN folded), fine-tunes it with QAT, exports a full-integer flatbuffer,
evaluates it in the LiteRT interpreter on all 10 000 test images and prints a table.
"""

import contextlib
import io
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("float_epochs", 8, "Epochs of float training (cosine learning rate).")
flags.DEFINE_integer("qat_epochs", 2, "Epochs of QAT fine-tuning; BN is frozen for the last.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("train_samples", 60000, "Training images used (≤ 60000).")
flags.DEFINE_string("output", "out/fashion_mnist_int8.tflite", "Where to write the flatbuffer.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def _compile(model, learning_rate, steps):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _format_table(rows):
    width = max(len(name) for name, _ in rows)
    lines = ["", "tfquant Fashion-MNIST demo (W8A8)", "-" * (width + 24)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("-" * (width + 24))
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    timings = {}
    start = time.perf_counter()
    import keras
    import numpy as np

    import tfquant

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from datasets import load_fashion_mnist
    from demo_model import build_float_model

    keras.utils.set_random_seed(FLAGS.seed)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = x_train[:FLAGS.train_samples], y_train[:FLAGS.train_samples]
    print(f"Fashion-MNIST: {len(x_train)} training, {len(x_test)} test images")
    timings["load data"] = time.perf_counter() - start

    print(f"\n[1/4] Float training, {FLAGS.float_epochs} epochs")
    phase = time.perf_counter()
    model = build_float_model()
    steps_per_epoch = -(-len(x_train) // FLAGS.batch_size)
    _compile(model, 3e-3, FLAGS.float_epochs * steps_per_epoch)
    model.fit(x_train, y_train, batch_size=FLAGS.batch_size, epochs=FLAGS.float_epochs,
              verbose=2)
    float_accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)[1]
    print(f"float test accuracy {float_accuracy:.4f}")
    timings["float training"] = time.perf_counter() - phase

    print(f"\n[2/4] Quantization-aware fine-tuning, {FLAGS.qat_epochs} epoch(s)")
    phase = time.perf_counter()
    qmodel = tfquant.quantize_model(model)
    _compile(qmodel, 2e-4, FLAGS.qat_epochs * steps_per_epoch)
    # Batch statistics while the weights adapt to quantization, then moving statistics
    # (what the integer model uses) for the last epoch.
    freeze_bn = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: (epoch == max(FLAGS.qat_epochs - 1, 1)
                                            and tfquant.freeze_batch_norm(qmodel)))
    qmodel.fit(x_train, y_train, batch_size=FLAGS.batch_size, epochs=FLAGS.qat_epochs,
               verbose=2, callbacks=[freeze_bn])
    qat_accuracy = qmodel.evaluate(x_test, y_test, batch_size=512, verbose=0)[1]
    print(f"QAT (Keras, fake-quantized) test accuracy {qat_accuracy:.4f}")
    timings["QAT fine-tuning"] = time.perf_counter() - phase

    print("\n[3/4] Export to a full-integer TFLite flatbuffer")
    phase = time.perf_counter()
    report = tfquant.export_tflite(qmodel, FLAGS.output, representative_data=x_test[:500])
    print(report)
    float_report_size = len(_float_flatbuffer(model))
    timings["export + verify"] = time.perf_counter() - phase

    print("\n[4/4] LiteRT evaluation on all 10 000 test images")
    phase = time.perf_counter()
    from tfquant.export.litert_runner import run_litert

    litert_logits = run_litert(report.flatbuffer, x_test, batch_size=500)[0]
    keras_logits = qmodel.predict(x_test, batch_size=500, verbose=0)
    litert_accuracy = float(np.mean(np.argmax(litert_logits, -1) == y_test))
    agreement = float(np.mean(np.argmax(litert_logits, -1) == np.argmax(keras_logits, -1)))
    timings["LiteRT evaluation"] = time.perf_counter() - phase
    timings["total"] = time.perf_counter() - start

    rows = [
        ("float accuracy (Keras)", f"{float_accuracy * 100:.2f} %"),
        ("QAT accuracy (Keras, fake quant)", f"{qat_accuracy * 100:.2f} %"),
        ("int8 accuracy (LiteRT)", f"{litert_accuracy * 100:.2f} %"),
        ("int8 − float", f"{(litert_accuracy - float_accuracy) * 100:+.2f} points"),
        ("argmax agreement Keras QAT vs LiteRT", f"{agreement * 100:.2f} %"),
        ("float .tflite size", f"{float_report_size / 1024:.1f} KiB"),
        ("int8 .tflite size", f"{report.size_bytes / 1024:.1f} KiB ({FLAGS.output})"),
    ]
    rows += [(f"time: {name}", f"{seconds:.1f} s") for name, seconds in timings.items()]
    print(_format_table(rows))


def _float_flatbuffer(model):
    """The plain float conversion, for the size comparison."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the exported signature
        return converter.convert()


if __name__ == "__main__":
    app.run(main)
