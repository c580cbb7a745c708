"""The integer-exact model against LiteRT on real models (part of `make bench`).

For each model: the int8 flatbuffer run by LiteRT with XNNPACK (its default) and with the
builtin kernels only, and by `tfquant.integer_model` for each backend, on Fashion-MNIST
test images. Reports the share of output values that are bit-equal, argmax agreement,
and, for comparison, how far the float simulation (the Keras model) and the two LiteRT
backends are from each other. Writes the "Integer-exact evaluation" section of
BENCHMARKS.md.

Models: the demo CNN (QAT W8A8, the demo's recipe; W2A2 LSQ+PACT for 3 and 20 epochs
as benchmarks/accuracy_fashion_mnist.py trains it) and a briefly trained and so fragile
MobileNetV2 (alpha 0.35, 32×32, 2 epochs, PTQ W8A8).

Run: `.venv/bin/python benchmarks/integer_exact.py [--test 10000]`.
`--zoo MobileNetV2,ViT,...` instead checks the named models as benchmarks/model_zoo.py
trained and cached them in out/model_zoo/ (PTQ W8A8) and writes the section
"Integer-exact evaluation: the zoo's trained models"; `--brief NASNetMobile,ViT,...`
trains each named zoo model briefly (`--brief_train` images, `--brief_epochs`) and writes
"Integer-exact evaluation: briefly trained zoo models". Their rows are kept in
out/integer_exact/zoo.json and brief.json, so runs can be split up.
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
flags.DEFINE_string("zoo", "", "Only these models of benchmarks/model_zoo.py ('all': every "
                    "one), as it trained and cached them (PTQ W8A8); written to their own "
                    "BENCHMARKS.md section.")
flags.DEFINE_bool("write", True, "Write the BENCHMARKS.md section.")
flags.DEFINE_bool("skip_demo", False, "Leave out the demo CNN row.")
flags.DEFINE_string("w2a2_epochs", "3,20", "QAT epochs of the W2A2 demo CNN rows.")
flags.DEFINE_string("brief", "", "Only these zoo models, each briefly trained (--brief_train "
                    "images × --brief_epochs); written to their own BENCHMARKS.md section.")
flags.DEFINE_integer("brief_train", 10000, "Training images of a --brief model.")
flags.DEFINE_integer("brief_epochs", 1, "Epochs of a --brief model.")

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


def brief_application(name, data, epochs, train, alpha=None):
    """A zoo model (benchmarks/model_zoo.py) after a short training (MobileNetV2 α 0.35 after two
    epochs reaches ~69 %): many images sit near a decision boundary, so one LSB anywhere
    flips predictions. PTQ W8A8 on 256 training images."""
    import keras

    import model_zoo as zoo
    import tfquant

    (x_train, y_train), (x_test, y_test) = data
    _, kind = zoo.MODELS[name]
    size = _input_size(name)
    x_train, y_train = zoo.prepare(x_train[:train], kind, size), y_train[:train]
    x_test = zoo.prepare(x_test[:FLAGS.test], kind, size)
    keras.utils.set_random_seed(0)
    if alpha is None:
        model = zoo.MODELS[name][0]()
    else:
        model = getattr(keras.applications, name)(
            input_shape=(size, size, 3), alpha=alpha, weights=None, classes=10,
            classifier_activation=None)
    zoo.compile_model(model, 1e-3, epochs * (len(x_train) // 256))
    model.fit(x_train, y_train, epochs=epochs, batch_size=256, verbose=0)
    # keras.applications BN momentum (0.999) leaves the moving statistics far behind
    # after a short training: re-estimated, as benchmarks/model_zoo.py does.
    tfquant.reestimate_batch_norm(model, x_train, batch_size=500, max_batches=20)
    qmodel = tfquant.ptq.quantize(model, x_train[:256], verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x_train[:256])
    label = f"{name}{'' if alpha is None else f' α {alpha}'}, {len(x_train)}×{epochs}"
    return compare(f"{label}, PTQ W8A8", qmodel, report.flatbuffer, x_test, y_test[:FLAGS.test])


def _input_size(name):
    return 71 if name == "Xception" else 32  # Xception's smallest input


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
    size = _input_size(name)
    x_cal = zoo.prepare(x_train[:256], kind, size)
    x_test = zoo.prepare(x_test[:FLAGS.test], kind, size)
    model = keras.saving.load_model(max(cached, key=os.path.getmtime))  # the newest recipe
    tfquant.reestimate_batch_norm(model, zoo.prepare(x_train[:10000], kind, size), batch_size=500,
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


def _kept_rows(kind, new_rows):
    """The `kind` ("brief" or "zoo") rows of earlier runs (out/integer_exact/<kind>.json)
    updated with `new_rows` (name → row), in the zoo's order: runs can be split up."""
    import json

    import model_zoo as zoo

    path = os.path.join(ROOT, "out", "integer_exact", f"{kind}.json")
    kept = {}
    if os.path.exists(path):
        with open(path) as handle:
            kept = json.load(handle)
    kept.update(new_rows)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(kept, handle, indent=1)
    os.replace(path + ".tmp", path)
    return [kept[n] for n in zoo.MODELS if n in kept]


def main(argv):
    del argv
    from benchmark_report import write_section
    from datasets import load_fashion_mnist

    data = load_fashion_mnist()
    if FLAGS.brief:
        rows = _kept_rows("brief", {n: brief_application(n, data, FLAGS.brief_epochs,
                                                         FLAGS.brief_train)
                                    for n in FLAGS.brief.split(",") if n})
        section = "Integer-exact evaluation: briefly trained zoo models"
        command = (f"python benchmarks/integer_exact.py --brief {FLAGS.brief} --brief_train "
                   f"{FLAGS.brief_train} --brief_epochs {FLAGS.brief_epochs} --test {FLAGS.test}")
    elif FLAGS.zoo:
        import model_zoo as zoo

        names = list(zoo.MODELS) if FLAGS.zoo == "all" else FLAGS.zoo.split(",")
        checked = {n: zoo_model(n, data) for n in names if n}
        rows = _kept_rows("zoo", {n: row for n, row in checked.items() if row})
        section = "Integer-exact evaluation: the zoo's trained models"
        command = f"python benchmarks/integer_exact.py --zoo {FLAGS.zoo} --test {FLAGS.test}"
    else:
        rows = [] if FLAGS.skip_demo else [demo_cnn(data)]
        rows += [w2a2_demo(data, int(e)) for e in FLAGS.w2a2_epochs.split(",") if e]
        rows.append(brief_application("MobileNetV2", data, 2, 60000, alpha=0.35))
        section = "Integer-exact evaluation"
        command = "python benchmarks/integer_exact.py --test " + str(FLAGS.test)
    body = (f"{FLAGS.test} Fashion-MNIST test images per model. \"values bit-equal\": the "
            "share of output values where `tfquant.integer_model(flatbuffer, backend)` "
            "equals LiteRT run with that backend (XNNPACK: LiteRT's default; builtin: "
            "`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`); \"argmax agree\": the "
            "same for the predicted class. The next two columns show the gap the integer "
            "model closes: the float simulation against LiteRT, and LiteRT's two backends "
            "against each other.\n\n" + table(rows))
    print(body)
    if FLAGS.write:
        write_section(section, command, body)


if __name__ == "__main__":
    app.run(main)
