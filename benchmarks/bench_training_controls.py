"""Evidence for the training controls: gradient-ℓ1 and periodic regularizers, FreezeBatchNorm,
progressive bit reduction and distillation, on Fashion-MNIST with the demo CNN.

    python benchmarks/bench_training_controls.py            # full run, writes BENCHMARKS.md
    python benchmarks/bench_training_controls.py --quick    # smoke run (small, no write)
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfquant  # noqa: E402
from benchmark_report import write_section  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402
from demo_model import build_float_model  # noqa: E402
from tfquant import callbacks as cb  # noqa: E402
from tfquant.keras.distillation import Distillation  # noqa: E402
from tfquant.keras.train_step import with_hooks  # noqa: E402
from tfquant.regularizers import GradientL1, Periodic, kernel_views  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), -1) == y))


def compile_model(model, lr=1e-3):
    model.compile(keras.optimizers.Adam(lr), LOSS)
    return model


def ptq(float_model, bits, x_cal):
    """quantize_model at `bits` weights (8-bit activations) + one calibration pass."""
    qmodel = tfquant.quantize_model(float_model, tfquant.QuantConfig(
        weight_bits=bits, first_last_bits=8, activation_ema_decay=0.0))
    tfquant.freeze_batch_norm(qmodel)
    qmodel(x_cal, training=True)
    return qmodel


def train_float(hooks, data, epochs, batch):
    (x, y), _ = data
    keras.utils.set_random_seed(7)
    model = build_float_model()
    trained = compile_model(with_hooks(model, hooks) if hooks else model)
    trained.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    return model


def step_times(models, x, y, batch, steps, rounds=3):
    """Median seconds per training step of each model, measured in alternation."""
    for model in models:
        compile_model(model)
        model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=1, verbose=0)
    times = [[] for _ in models]
    for _ in range(rounds):
        for model, record in zip(models, times):
            start = time.perf_counter()
            model.fit(x[:batch * steps], y[:batch * steps], batch_size=batch, epochs=1,
                      verbose=0)
            record.append((time.perf_counter() - start) / steps)
    return [statistics.median(t) for t in times]


def near_grid_fraction(model, bits):
    inside, total = 0, 0
    for view in kernel_views(model, bits):
        w = view.seen()
        delta = view.step(w).numpy()
        w = w.numpy()
        distance = np.abs(w / delta - np.round(w / delta))
        inside += int(np.sum(distance <= 0.1))
        total += w.size
    return inside / total


def run(args):
    data = load_fashion_mnist()
    (x_train, y_train), (x_test, y_test) = data
    n, n_test = (3000, 1000) if args.quick else (60000, 10000)
    data = ((x_train[:n], y_train[:n]), (x_test[:n_test], y_test[:n_test]))
    (x, y), (xt, yt) = data
    epochs = 1 if args.quick else args.epochs
    batch = 64
    x_cal = x[:256]
    rows = []

    # 1. Gradient ℓ1: float training with λ = 0 / λ > 0, then PTQ without fine-tuning.
    base = train_float([], data, epochs, batch)
    grad = train_float([GradientL1(args.grad_l1)], data, epochs, batch)
    lines = ["| model | float | W6 PTQ | W4 PTQ |", "|---|---|---|---|"]
    for name, model in (("λ = 0", base), (f"gradient-ℓ1 λ = {args.grad_l1}", grad)):
        accs = [accuracy(model, xt, yt)] + [accuracy(ptq(model, b, x_cal), xt, yt)
                                           for b in (6, 4)]
        lines.append(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
    rows.append("### Gradient ℓ1 (float training, then PTQ: quantize_model + one calibration "
                "pass, frozen BN; 8-bit activations, first/last layers 8-bit)\n\n"
                + "\n".join(lines))

    steps = 20 if args.quick else 40
    plain, double = step_times([build_float_model(), with_hooks(
        build_float_model(), [GradientL1(args.grad_l1)])], x, y, batch, steps)
    rows.append(f"### Double-backprop cost\n\nfloat train step, batch {batch}: "
                f"{plain * 1e3:.1f} ms plain, {double * 1e3:.1f} ms with gradient-ℓ1 "
                f"(**{double / plain:.2f}×**)")

    # 2. Periodic regularizer (4-bit grid of each kernel), float training, direct rounding.
    periodic = train_float([Periodic(args.periodic, num_bits=4)], data, epochs, batch)
    lines = ["| model | weights within 0.1·Δ of the 4-bit grid | W4 PTQ accuracy |",
             "|---|---|---|"]
    for name, model in (("no regularizer", base), (f"periodic λ = {args.periodic}", periodic)):
        lines.append(f"| {name} | {near_grid_fraction(model, 4):.3f} | "
                     f"{accuracy(ptq(model, 4, x_cal), xt, yt):.4f} |")
    rows.append("### Periodic regularizer (grid of the raw float kernels; PTQ folds BN)\n\n"
                + "\n".join(lines))

    # 3. QAT from the float model: FreezeBatchNorm, progressive bits, distillation.
    qat_epochs = 1 if args.quick else args.qat_epochs
    steps_per_epoch = int(np.ceil(len(x) / batch))

    def qat(config, hooks=(), callbacks=(), seed=11):
        keras.utils.set_random_seed(seed)
        qmodel = tfquant.quantize_model(base, config)
        model = compile_model(with_hooks(qmodel, list(hooks)) if hooks else qmodel, 5e-4)
        losses = []

        class Losses(keras.callbacks.Callback):
            def on_train_batch_end(self, b, logs=None):
                losses.append(float(logs["loss"]))

        model.fit(x, y, batch_size=batch, epochs=qat_epochs, verbose=0,
                  callbacks=list(callbacks) + [Losses()])
        tail = losses[len(losses) // 2:]
        return accuracy(qmodel, xt, yt), float(np.var(np.diff(tail))) if len(tail) > 2 else 0.0

    w4 = tfquant.QuantConfig(weight_bits=4, activation_bits=4)
    without = qat(w4)
    freeze_at = max(1, steps_per_epoch * qat_epochs // 2)
    with_freeze = qat(w4, callbacks=[cb.FreezeBatchNorm(after_steps=freeze_at)])
    rows.append("### FreezeBatchNorm (W4A4 QAT)\n\n| run | accuracy | variance of step-to-step "
                "loss change (2nd half) |\n|---|---|---|\n"
                f"| batch statistics throughout | {without[0]:.4f} | {without[1]:.3g} |\n"
                f"| frozen after {freeze_at} steps | {with_freeze[0]:.4f} | "
                f"{with_freeze[1]:.3g} |")

    w2 = tfquant.QuantConfig(weight_quantizer="LSQQuantizer", weight_bits=2,
                             activation_bits=2)
    direct = qat(w2)
    third = max(1, qat_epochs // 3)
    progressive = qat(tfquant.QuantConfig(weight_quantizer="LSQQuantizer", weight_bits=8,
                                          activation_bits=2),
                      callbacks=[cb.BitWidthSchedule({0: 8, third: 4, 2 * third: 2},
                                                     exclude=("conv1", "logits"))])
    distilled = qat(w2, hooks=[Distillation(base, temperature=4.0, alpha=1.0,
                                            name="distillation")])
    rows.append("### Guided low-bit training (LSQ weights, W2A2; first/last layers 8-bit)\n\n"
                "| run | accuracy |\n|---|---|\n"
                f"| direct 2-bit | {direct[0]:.4f} |\n"
                f"| progressive 8→4→2 (per {third} epochs) | {progressive[0]:.4f} |\n"
                f"| distillation from the float model (T = 4) | {distilled[0]:.4f} |")

    header = (f"Fashion-MNIST, demo CNN, {n} training / {n_test} test images, float "
              f"{epochs} epochs, QAT {qat_epochs} epochs, batch {batch}.")
    body = header + "\n\n" + "\n\n".join(rows)
    print(body)
    if not args.quick:
        write_section("Training controls", "python benchmarks/bench_training_controls.py",
                      body)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke run, no report")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--qat-epochs", type=int, default=6)
    parser.add_argument("--grad-l1", type=float, default=0.05)
    parser.add_argument("--periodic", type=float, default=1e-5)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
