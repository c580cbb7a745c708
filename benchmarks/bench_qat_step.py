"""Training-step time: float vs tfquant QAT vs TFMOT QAT on the reference CNN (below).

Reference CNN: input 32×32×3; three stages of [Conv2D(f,3)-BN-ReLU → DepthwiseConv2D(3)-
BN-ReLU → Conv2D(f,1)-BN → Add → ReLU → MaxPool] with f = 32, 64, 128 (no conv biases);
GlobalAveragePooling2D; Dense(10). Batch 64, random data, SGD. Each variant runs in its
own process (TFMOT needs tf_keras, `TF_USE_LEGACY_KERAS=1`); the ratios to the float step
of the same flavor are written to BENCHMARKS.md.

Also the ViT of the model zoo and an LSTM, float vs tfquant QAT on the same Keras, and
gradient-ℓ1 (`tfquant.regularizers.GradientL1`, by double backprop and by a finite
difference) on the QAT reference CNN against the plain QAT step.

Run: `make bench` or `.venv/bin/python benchmarks/bench_qat_step.py [--rounds 3]
[--models cnn,vit,lstm] [--no-xla]`.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 30
WARMUP = 5
XLA_STEPS = 8  # the XLA QAT step takes seconds (see BENCHMARKS.md)
XLA_WARMUP = 2
BATCH = 64


def build_reference_cnn(layers, keras_input, model_class):
    inputs = keras_input((32, 32, 3))
    x = inputs
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.Conv2D(filters, 1, use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        x = layers.ReLU()(layers.Add()([x, y]))
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return model_class(inputs, layers.Dense(10)(x))


def time_steps(model, np, shape, steps, warmup):
    """Median seconds of one training step (train_on_batch) on a fixed random batch."""
    import time

    x = np.random.rand(BATCH, *shape).astype("float32")
    y = np.random.randint(0, 10, BATCH)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def build_lstm(keras):
    """The LSTM of benchmarks/bench_recurrent.py: 28 rows of 28 pixels → LSTM(64) → Dense(10)."""
    inputs = keras.Input((28, 28))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.LSTM(64)(inputs)))


# model → (builder of the Keras 3 model, input shape without the batch)
def keras_models():
    import keras

    sys.path.insert(0, HERE)
    from model_zoo import vit

    return {"cnn": (lambda: build_reference_cnn(keras.layers, keras.Input, keras.Model),
                    (32, 32, 3)),
            "vit": (vit, (28, 28, 1)),
            "lstm": (lambda: build_lstm(keras), (28, 28))}


def run_variant(model_name, flavor):
    """Runs in a child process; prints a JSON line with the step time."""
    import numpy as np

    xla = flavor.endswith("_xla")
    steps, warmup = (XLA_STEPS, XLA_WARMUP) if xla else (STEPS, WARMUP)
    shape = (32, 32, 3)
    if flavor.startswith("tfmot"):
        import tf_keras
        import tensorflow_model_optimization as tfmot

        model = build_reference_cnn(tf_keras.layers, tf_keras.Input, tf_keras.Model)
        if flavor == "tfmot_qat":
            model = tfmot.quantization.keras.quantize_model(model)
        model.compile(optimizer="sgd", loss=tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
    else:
        import keras

        import tfquant

        build, shape = keras_models()[model_name]
        model = build()
        if not flavor.startswith("float"):
            model = tfquant.quantize_model(model)
            if flavor == "tfquant_frozen_bn":
                tfquant.freeze_batch_norm(model)
            if flavor.startswith("tfquant_qat_gradient_l1"):
                from tfquant.keras.train_step import with_hooks
                from tfquant.regularizers import GradientL1

                method = "finite_difference" if flavor.endswith("_fd") else "double_backprop"
                model = with_hooks(model, [GradientL1(1e-3, method=method)])
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), jit_compile=xla)
    seconds = time_steps(model, np, shape, steps, warmup)
    print(json.dumps({"variant": f"{model_name}:{flavor}", "seconds": seconds}), flush=True)


# (model, flavor) → label. Each flavor is compared with the float flavor of its own Keras
# and XLA setting on the same model.
VARIANTS = {
    ("cnn", "float"): "reference CNN, Keras 3 float",
    ("cnn", "tfquant_qat"): "reference CNN, tfquant QAT, default config (BN folded, batch "
                            "statistics)",
    ("cnn", "tfquant_frozen_bn"): "reference CNN, tfquant QAT, default config, BN frozen",
    ("cnn", "tfquant_qat_gradient_l1"): "reference CNN, tfquant QAT + gradient-ℓ1 (λ = 1e-3, "
                                        "double backprop), ÷ the tfquant QAT step",
    ("cnn", "tfquant_qat_gradient_l1_fd"): "reference CNN, tfquant QAT + gradient-ℓ1 (λ = 1e-3, "
                                           "finite difference), ÷ the tfquant QAT step",
    ("cnn", "tfmot_float"): "reference CNN, tf_keras float",
    ("cnn", "tfmot_qat"): "reference CNN, TFMOT QAT (tf_keras)",
    ("vit", "float"): "ViT (model zoo), Keras 3 float",
    ("vit", "tfquant_qat"): "ViT (model zoo), tfquant QAT W8A8, default config",
    ("lstm", "float"): "LSTM(64), Keras 3 float",
    ("lstm", "tfquant_qat"): "LSTM(64), tfquant QAT W8A8, default config",
    ("cnn", "float_xla"): "reference CNN, Keras 3 float, jit_compile=True",
    ("cnn", "tfquant_qat_xla"): "reference CNN, tfquant QAT, default config, jit_compile=True",
}


def baseline(model_name, flavor):
    if flavor.startswith("tfquant_qat_gradient_l1"):
        return (model_name, "tfquant_qat")
    if flavor.startswith("tfmot"):
        return (model_name, "tfmot_float")
    return (model_name, "float_xla" if flavor.endswith("_xla") else "float")


def measure(variant):
    model_name, flavor = variant
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if flavor.startswith("tfmot"):
        env["TF_USE_LEGACY_KERAS"] = "1"
    output = subprocess.run([sys.executable, __file__, "--variant", f"{model_name}:{flavor}"],
                            env=env, capture_output=True, text=True)
    lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
    if output.returncode != 0 or not lines:
        print(output.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"variant {model_name}:{flavor} failed")
    return json.loads(lines[-1])["seconds"]


def main():
    import argparse
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which every variant takes its turn (XLA: one round)")
    parser.add_argument("--models", default="cnn,vit,lstm", help="comma-separated: cnn, vit, lstm")
    parser.add_argument("--no-xla", action="store_true", help="leave out the jit_compile rows")
    args = parser.parse_args()
    models = set(args.models.split(","))
    chosen = [v for v in VARIANTS if v[0] in models and not (args.no_xla and v[1].endswith("_xla"))]
    times = {v: [] for v in chosen}
    for round_index in range(args.rounds):
        for variant in chosen:
            if variant[1].endswith("_xla") and round_index > 0:
                continue
            times[variant].append(measure(variant))
            print(f"round {round_index + 1}: {VARIANTS[variant]:75s} "
                  f"{times[variant][-1] * 1e3:8.1f} ms/step", flush=True)

    sys.path.insert(0, HERE)
    from benchmark_report import write_section

    median = {v: statistics.median(t) for v, t in times.items()}
    rows = ["| variant | ms/step (median of rounds) | ÷ float step of the same model and Keras "
            "(same XLA setting; gradient-ℓ1: ÷ QAT step), median of the rounds' ratios "
            "| rounds' ratios |",
            "|---|---|---|---|"]
    for variant in chosen:
        base = baseline(*variant)
        ratios = [t / b for t, b in zip(times[variant], times[base])]
        rows.append(f"| {VARIANTS[variant]} | {median[variant] * 1e3:.1f} | "
                    f"{statistics.median(ratios):.2f}× | "
                    f"{', '.join(f'{r:.2f}' for r in ratios)} |")
    body = (f"Batch {BATCH}, SGD, random data. Each variant in its own process; median of "
            f"{STEPS} steps after {WARMUP} warm-up steps ({XLA_STEPS} after {XLA_WARMUP} with "
            f"XLA, one round); {args.rounds} rounds in which the variants take turns, so a "
            "ratio compares neighbours in time. Reference CNN: see "
            "benchmarks/bench_qat_step.py; ViT: benchmarks/model_zoo.py `vit()` (49 patches, "
            "dim 64, 2 blocks); LSTM: benchmarks/bench_recurrent.py's.\n\n" + "\n".join(rows))
    write_section("QAT step time", f"python benchmarks/bench_qat_step.py --rounds {args.rounds}",
                  body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        run_variant(*sys.argv[2].split(":"))
    else:
        main()
