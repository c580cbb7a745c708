"""Folded BN before the freeze: batch statistics from the quantized convolution.

Since issue 17 a folded BN takes its batch statistics from the convolution a training
step runs anyway, `conv(x, q(w·γ/σ_mv))`, divided by the fold factor γ/σ_mv, instead of
from a second, float convolution. This measures what that costs:

- drift: per folded layer, how far those statistics lie from the float convolution's
  (`|μ_q − μ_f| / σ_f` and `|σ_q / σ_f − 1|`, largest over the channels, on 2000 training
  images), on the float model right after `quantize_model` and after QAT;
- accuracy: QAT rows of `accuracy_fashion_mnist.py` (same recipe), to set beside that
  table's rows, which the two-convolution fold trained.

Run: `.venv/bin/python benchmarks/bn_batch_statistics.py [--rows "uniform W8A8,LSQ W4A4"]`
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import accuracy_fashion_mnist  # noqa: E402  (its flags: --epochs, --batch_size, ...)

FLAGS = flags.FLAGS
flags.DEFINE_string("rows", "uniform W8A8,LSQ W4A4,LSQ+PACT W2A2",
                    "Rows of accuracy_fashion_mnist.METHODS, as 'name WxAy'.")

def statistics_drift(qmodel, x):
    """{layer: (largest |μ_q − μ_f|/σ_f, largest |σ_q/σ_f − 1|)} over the folded layers."""
    import keras
    import numpy as np

    from tfquant.keras.batch_norm import folded_batch_norm_layers

    drift = {}
    for layer in folded_batch_norm_layers(qmodel):
        inputs = keras.Model(qmodel.inputs, layer.input).predict(x, batch_size=500, verbose=0)
        float_out = np.asarray(layer.layer(inputs), np.float64)
        name = layer.folded_kernel_name()
        kernels = {k: getattr(layer.layer, k) for k in layer.kernel_names()}
        deployed, _ = layer.deployed_kernels()[name]
        factor = np.asarray(layer.fold_factor())
        if layer.kind == "depthwise":
            deployed = deployed.reshape(tuple(kernels[name].shape))
            factor = factor.reshape(tuple(kernels[name].shape[-2:]))
        kernels[name] = deployed / factor
        quantized = np.asarray(layer.convolve(inputs, kernels, False, False), np.float64)
        if layer.layer_bias() is not None:
            quantized = quantized + np.asarray(layer.layer_bias())
        axes = tuple(range(float_out.ndim - 1))
        mean_f, std_f = float_out.mean(axes), float_out.std(axes) + 1e-12
        mean_q, std_q = quantized.mean(axes), quantized.std(axes)
        drift[layer.name] = (float(np.max(np.abs(mean_q - mean_f) / std_f)),
                             float(np.max(np.abs(std_q / std_f - 1))))
    return drift


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import keras

    import tfquant
    from benchmark_report import write_section
    from datasets import load_fashion_mnist

    keras.utils.set_random_seed(0)
    data = load_fashion_mnist()
    (x_train, y_train), (x_test, y_test) = data
    model = accuracy_fashion_mnist.float_model(x_train, y_train)
    model.compile(metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    float_accuracy = model.evaluate(x_test, y_test, batch_size=500, verbose=0)[1]
    methods = {f"{m[0]} W{m[1]}A{m[2]}": m for m in accuracy_fashion_mnist.METHODS}
    rows = {}
    for row in [r.strip() for r in FLAGS.rows.split(",") if r.strip()]:
        method = methods[row]
        keras.utils.set_random_seed(0)
        config = tfquant.QuantConfig(weight_quantizer=method[3], activation_quantizer=method[4],
                                     activation_bits=method[2], weight_bits=method[1],
                                     **method[5])
        start = statistics_drift(tfquant.quantize_model(model, config), x_train[:2000])
        keras.utils.set_random_seed(0)
        accuracy, litert, _, _, minutes, qmodel = accuracy_fashion_mnist.run_method(
            model, method, data)
        rows[row] = {"keras": accuracy, "litert": litert, "minutes": minutes,
                     "drift_start": start,
                     "drift_trained": statistics_drift(qmodel, x_train[:2000])}
        print(row, rows[row], flush=True)
    write_section("Folded BN: batch statistics from the quantized convolution",
                  "python benchmarks/bn_batch_statistics.py",
                  section_body(float_accuracy, rows))


def section_body(float_accuracy, rows):
    lines = [
        "Before the BN freeze a folded BN takes its batch statistics from the one "
        "convolution the step runs, with the folded, quantized kernel divided by the fold "
        "factor γ/σ_mv (ARCHITECTURE.md §3); before, from a second, float "
        "convolution. Demo CNN, float "
        f"{float_accuracy * 100:.2f} %, the QAT recipe of \"QAT methods on Fashion-MNIST\" "
        f"({FLAGS.epochs} epochs, BN frozen for the last). Drift: largest over the folded "
        "layers and their channels of |μ_q − μ_f|/σ_f and |σ_q/σ_f − 1|, on 2000 training "
        "images, at the start of QAT and after it. The rows of \"QAT methods on Fashion-MNIST\" "
        "were trained with the two-convolution fold (and before integer_bias).",
        "",
        "| method | Keras acc % | LiteRT acc % | mean drift start / trained | "
        "σ drift start / trained | minutes |",
        "|---|---:|---:|---|---|---:|"]
    for row, value in rows.items():
        start = value["drift_start"].values()
        trained = value["drift_trained"].values()
        lines.append(
            f"| {row} | {value['keras'] * 100:.2f} | {value['litert']} | "
            f"{max(d[0] for d in start):.4f} / {max(d[0] for d in trained):.4f} | "
            f"{max(d[1] for d in start):.4f} / {max(d[1] for d in trained):.4f} | "
            f"{value['minutes']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
