"""The integer-exact model against LiteRT on real models (part of `make bench`).

For each model: the int8 flatbuffer run by LiteRT with XNNPACK (its default) and with the
builtin kernels only, and by `tfquant.integer_model` for each backend, on Fashion-MNIST
test images. Reports the share of output values that are bit-equal, argmax agreement,
and, for comparison, how far the float simulation (the Keras model) and the two LiteRT
backends are from each other. Writes the "Integer-exact evaluation" section of
BENCHMARKS.md.

Models: the demo CNN (QAT W8A8, the demo's recipe; W2A2 LSQ+PACT for 3 and 20 epochs
as benchmarks/accuracy_fashion_mnist.py trains it), a briefly trained and so fragile
MobileNetV2 (alpha 0.35, 32×32, 2 epochs, PTQ W8A8) and the keras.applications models
cached by benchmarks/model_zoo.py in out/model_zoo/ (PTQ W8A8; rows for models not in
the cache are skipped).

Run: `.venv/bin/python benchmarks/integer_exact.py [--test 10000] [--zoo MobileNetV2,ResNet50V2]`.
"""

import glob
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import accuracy_fashion_mnist as methods  # noqa: E402  (defines its flags before parsing)

FLAGS = flags.FLAGS
flags.DEFINE_integer("test", 10000, "Test images per model.")
flags.DEFINE_string("zoo", "MobileNetV2,ResNet50V2,MobileNetV3Small,MobileNetV3Large,"
                    "EfficientNetB0", "Cached model_zoo models to check.")
flags.DEFINE_bool("write", True, "Write the BENCHMARKS.md section.")
flags.DEFINE_bool("skip_demo", False, "Leave out the demo CNN row.")
flags.DEFINE_string("w2a2_epochs", "3,20", "QAT epochs of the W2A2 demo CNN rows.")

BACKENDS = ("xnnpack", "builtin")


def compare(name, qmodel, flatbuffer, x_test, y_test):
    """The row of figures for one exported model."""
    import numpy as np

    import tfquant
    from tfquant.export.integer_exact import run_integer_model, unsupported
    from tfquant.export.litert_runner import output_lsb, run_litert

    keras_logits = qmodel.predict(x_test, batch_size=256, verbose=0)
    lsb = output_lsb(flatbuffer)[0]
    row = {"model": name, "keras": float(np.mean(keras_logits.argmax(-1) == y_test))}
    litert = {}
    for backend in BACKENDS:
        litert[backend] = run_litert(flatbuffer, x_test, backend=backend)[0]
        row[f"litert_{backend}"] = float(np.mean(litert[backend].argmax(-1) == y_test))
        row[f"sim_agree_{backend}"] = float(np.mean(
            keras_logits.argmax(-1) == litert[backend].argmax(-1)))
    row["backends_agree"] = float(np.mean(
        litert["xnnpack"].argmax(-1) == litert["builtin"].argmax(-1)))
    missing = unsupported(flatbuffer)
    row["missing"] = missing
    for backend in BACKENDS if missing is None else ():
        start = time.perf_counter()
        ours = run_integer_model(tfquant.integer_model(flatbuffer, backend), [x_test])[0]
        row[f"seconds_{backend}"] = time.perf_counter() - start
        steps = np.round(np.abs(ours.astype(np.float64) - litert[backend]) / lsb)
        row[f"equal_{backend}"] = float(np.mean(steps == 0))
        row[f"max_steps_{backend}"] = float(steps.max())
        row[f"argmax_{backend}"] = float(np.mean(ours.argmax(-1) == litert[backend].argmax(-1)))
    print(row, flush=True)
    return row


def demo_cnn(data):
    import keras

    import tfquant

    (x_train, y_train), (x_test, y_test) = data
    model = methods.float_model(x_train, y_train)  # cached in out/
    qmodel = tfquant.quantize_model(model)
    steps = 2 * -(-len(x_train) // 128)
    qmodel.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(5e-4, steps)),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train, y_train, batch_size=128, epochs=2, verbose=0,
               callbacks=[tfquant.callbacks.FreezeBatchNorm(after_epochs=1)])
    report = tfquant.export_tflite(qmodel, representative_data=x_test[:500])
    return compare("demo CNN, QAT W8A8", qmodel, report.flatbuffer, x_test[:FLAGS.test],
                   y_test[:FLAGS.test])


def w2a2_demo(data, epochs):
    """The demo CNN, W2A2 LSQ + PACT as benchmarks/accuracy_fashion_mnist.py trains it
    (Keras now rounds the bias as LiteRT does, `QuantizedConvolution.integer_bias`)."""
    import tfquant

    (x_train, y_train), (x_test, y_test) = data
    model = methods.float_model(x_train, y_train)
    method = [m for m in methods.METHODS if m[0] == "LSQ+PACT"][0]
    method = (*method[:-1], {"epochs": epochs})
    qmodel = methods.run_method(model, method, data)[-1]
    report = tfquant.export_tflite(qmodel, representative_data=x_test[:500])
    return compare(f"demo CNN, W2A2 LSQ+PACT, {epochs} epochs", qmodel, report.flatbuffer,
                   x_test[:FLAGS.test], y_test[:FLAGS.test])


def fragile_mobilenet(data):
    """MobileNetV2 alpha 0.35 after two epochs (~69 %): many images sit near a decision
    boundary, so one LSB anywhere flips predictions."""
    import keras

    import model_zoo as zoo
    import tfquant

    (x_train, y_train), (x_test, y_test) = data
    x_train, x_test = zoo.prepare(x_train, "rgb11", 32), zoo.prepare(x_test[:FLAGS.test], "rgb11", 32)
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10, classifier_activation=None)
    zoo.compile_model(model, 1e-3, 2 * (len(x_train) // 256))
    model.fit(x_train, y_train, epochs=2, batch_size=256, verbose=0)
    # keras.applications BN momentum (0.999) leaves the moving statistics far behind
    # after two epochs: re-estimated, as benchmarks/model_zoo.py does.
    tfquant.reestimate_batch_norm(model, x_train, batch_size=500, max_batches=20)
    qmodel = tfquant.ptq.quantize(model, x_train[:256], verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x_train[:256])
    return compare("MobileNetV2 α 0.35, 2 epochs, PTQ W8A8", qmodel, report.flatbuffer, x_test,
                   y_test[:FLAGS.test])


def zoo_model(name, data):
    import keras

    import model_zoo as zoo
    import tfquant

    cached = glob.glob(os.path.join(ROOT, "out", "model_zoo", f"{name}-*.keras"))
    if not cached:
        print(f"{name}: not in out/model_zoo (run benchmarks/model_zoo.py); skipped")
        return None
    (x_train, _), (x_test, y_test) = data
    _, kind = zoo.MODELS[name]
    x_cal, x_test = zoo.prepare(x_train[:256], kind, 32), zoo.prepare(x_test[:FLAGS.test], kind, 32)
    model = keras.saving.load_model(cached[0])
    tfquant.reestimate_batch_norm(model, zoo.prepare(x_train[:10000], kind, 32), batch_size=500,
                                  max_batches=20)  # as benchmarks/model_zoo.py does
    qmodel = tfquant.ptq.quantize(model, x_cal, verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x_cal)
    return compare(f"{name} (model_zoo), PTQ W8A8", qmodel, report.flatbuffer, x_test,
                   y_test[:FLAGS.test])


def _pct(value, digits=2):
    return "—" if value is None else f"{100 * value:.{digits}f}"


def table(rows):
    lines = ["| model | values bit-equal xnnpack / builtin % | argmax agree xnnpack / builtin % "
             "| Keras (float sim) vs LiteRT argmax xnnpack / builtin % | XNNPACK vs builtin "
             "argmax % | accuracy Keras / LiteRT xnnpack / builtin % |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["missing"]:
            exact = agree = f"not computed: {r['missing'][:60]}"
        else:
            exact = f"{_pct(r['equal_xnnpack'], 3)} / {_pct(r['equal_builtin'], 3)}"
            agree = f"{_pct(r['argmax_xnnpack'])} / {_pct(r['argmax_builtin'])}"
        lines.append(
            f"| {r['model']} | {exact} | {agree} | {_pct(r['sim_agree_xnnpack'])} / "
            f"{_pct(r['sim_agree_builtin'])} | {_pct(r['backends_agree'])} | "
            f"{_pct(r['keras'])} / {_pct(r['litert_xnnpack'])} / {_pct(r['litert_builtin'])} |")
    return "\n".join(lines)


def main(argv):
    del argv
    from benchmark_report import write_section
    from datasets import load_fashion_mnist

    data = load_fashion_mnist()
    rows = [] if FLAGS.skip_demo else [demo_cnn(data)]
    rows += [w2a2_demo(data, int(e)) for e in FLAGS.w2a2_epochs.split(",") if e]
    rows.append(fragile_mobilenet(data))
    rows += [r for r in (zoo_model(n, data) for n in FLAGS.zoo.split(",") if n) if r]
    body = (f"{FLAGS.test} Fashion-MNIST test images per model. \"values bit-equal\": the "
            "share of output values where `tfquant.integer_model(flatbuffer, backend)` "
            "equals LiteRT run with that backend (XNNPACK: LiteRT's default; builtin: "
            "`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`); \"argmax agree\": the "
            "same for the predicted class. The next two columns show the gap the integer "
            "model closes: the float simulation against LiteRT, and LiteRT's two backends "
            "against each other.\n\n" + table(rows))
    print(body)
    if FLAGS.write:
        write_section("Integer-exact evaluation",
                      "python benchmarks/integer_exact.py --test " + str(FLAGS.test), body)


if __name__ == "__main__":
    app.run(main)
