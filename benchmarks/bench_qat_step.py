"""Training-step time: float vs tfquant QAT vs TFMOT QAT on the reference CNN (below).

Reference CNN: input 32×32×3; three stages of [Conv2D(f,3)-BN-ReLU → DepthwiseConv2D(3)-
BN-ReLU → Conv2D(f,1)-BN → Add → ReLU → MaxPool] with f = 32, 64, 128 (no conv biases);
GlobalAveragePooling2D; Dense(10). Batch 64, random data, SGD. Each variant runs in its
own process (TFMOT needs tf_keras, `TF_USE_LEGACY_KERAS=1`); the ratios to the float step
of the same flavor are written to BENCHMARKS.md.

Run: `make bench` or `.venv/bin/python benchmarks/bench_qat_step.py`.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 30
WARMUP = 5
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


def time_steps(model, np):
    """Median seconds of one training step (train_on_batch) on a fixed random batch."""
    import time

    x = np.random.rand(BATCH, 32, 32, 3).astype("float32")
    y = np.random.randint(0, 10, BATCH)
    for _ in range(WARMUP):
        model.train_on_batch(x, y)
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def run_variant(variant):
    """Runs in a child process; prints a JSON line with the step time."""
    import numpy as np

    if variant.startswith("tfmot"):
        import tf_keras
        import tensorflow_model_optimization as tfmot

        model = build_reference_cnn(tf_keras.layers, tf_keras.Input, tf_keras.Model)
        if variant == "tfmot_qat":
            model = tfmot.quantization.keras.quantize_model(model)
        model.compile(optimizer="sgd", loss=tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
    else:
        import keras

        import tfquant

        model = build_reference_cnn(keras.layers, keras.Input, keras.Model)
        if not variant.startswith("float"):
            model = tfquant.quantize_model(model)
            if variant == "tfquant_frozen_bn":
                tfquant.freeze_batch_norm(model)
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), jit_compile=variant.endswith("_xla"))
    print(json.dumps({"variant": variant, "seconds": time_steps(model, np)}), flush=True)


VARIANTS = {
    "float": "Keras 3 float",
    "tfquant_qat": "tfquant QAT, default config (BN folded, batch statistics)",
    "tfquant_frozen_bn": "tfquant QAT, default config, BN frozen",
    "float_xla": "Keras 3 float, jit_compile=True",
    "tfquant_qat_xla": "tfquant QAT, default config, jit_compile=True",
    "tfmot_float": "tf_keras float",
    "tfmot_qat": "TFMOT QAT (tf_keras)",
}


def main():
    results = {}
    for variant in VARIANTS:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if variant.startswith("tfmot"):
            env["TF_USE_LEGACY_KERAS"] = "1"
        output = subprocess.run([sys.executable, __file__, "--variant", variant], env=env,
                                capture_output=True, text=True)
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        if output.returncode != 0 or not lines:
            print(output.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"variant {variant} failed")
        results[variant] = json.loads(lines[-1])["seconds"]
        print(f"{VARIANTS[variant]:60s} {results[variant] * 1e3:8.1f} ms/step", flush=True)

    sys.path.insert(0, HERE)
    from benchmark_report import write_section

    rows = ["| variant | ms/step | ÷ float step of the same Keras (same XLA setting) |",
            "|---|---|---|"]
    for variant, label in VARIANTS.items():
        base = results["tfmot_float" if variant.startswith("tfmot") else
                       "float_xla" if variant.endswith("_xla") else "float"]
        rows.append(f"| {label} | {results[variant] * 1e3:.1f} | {results[variant] / base:.2f}× |")
    body = (f"Reference CNN, batch {BATCH}, SGD, median of {STEPS} steps after "
            f"{WARMUP} warm-up steps, each variant in its own process.\n\n" + "\n".join(rows))
    write_section("QAT step time", "python benchmarks/bench_qat_step.py", body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        run_variant(sys.argv[2])
    else:
        main()
