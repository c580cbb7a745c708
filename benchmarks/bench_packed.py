"""Packed 2/4-bit matmul (tfquant.ops.packed_matmul) vs TF fp32 tf.matmul and LiteRT's
stock int8 / INT4 FULLY_CONNECTED, side by side in one process.

Shapes: GEMV 1×4096 · 4096×4096 and GEMM 256×4096 · 4096×4096, per-channel scales,
no bias, 2 intra-op threads everywhere.
  TF fp32      tf.matmul (eager), weights rotating through 512 MB of matrices (DRAM)
  packed DRAM  TfquantPackedMatmul (eager, the raw op), weights rotating through
               512 MB of packed matrices (64 at 4 bits, 128 at 2 bits)
  packed hot   the same op on one matrix (8 MB at 4 bits, 4 MB at 2 bits: L3-resident)
"DRAM" rotates through 16× the 32 MB L3 everywhere: with 128 MB, lines that
survived in the (victim) L3 made 4-bit GEMV read at 57 GB/s, above the ~40 GB/s
a plain read loop reaches here.
  LiteRT       ai_edge_litert Interpreter (stock resolver, XNNPACK on), one Dense(4096)
               model converted three ways: dynamic-range int8 weights (hybrid FC),
               full int8 (W8A8), and W4A8 INT4 weights (tfquant.export_tflite of a
               4-bit QAT model); invoke() only. "hot": one interpreter (weights
               cache-resident); "DRAM" (GEMV): W8A8 and INT4 invoked in turn on 512 MB
               of interpreters, each holding its own copy of the weights.
GB/s = weight bytes read per call / time: a GEMV streams its weights once, so from DRAM
every variant is bounded by the same read bandwidth and the fp32/packed speed-up by the
byte ratio (8× at 4 bits, 16× at 2 bits) times the ratio of the bandwidths reached.
Each figure is the median of RUNS runs; the variants take turns in 3 rounds and the best
median counts. Ratios are "how many times faster than"; written to BENCHMARKS.md.
Run: `make bench` or `.venv/bin/python benchmarks/bench_packed.py [--runs N]`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_report import median_seconds, write_section  # noqa: E402

import tfquant  # noqa: E402
from tfquant import _native  # noqa: E402
from tfquant.ops import packed as packed_ops  # noqa: E402

K = N = 4096
GEMM_M = 256
THREADS = 2
DRAM_BYTES = 512 << 20  # weights a "DRAM" variant rotates through


def copies_for(weight_bytes):
    return DRAM_BYTES // weight_bytes


def litert_models(rng):
    """{name: flatbuffer} for a Dense(4096, no bias) on 4096 inputs."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((K,)), keras.layers.Dense(N, use_bias=False)])
    x = rng.normal(size=(64, K)).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    models = {"LiteRT int8 dynamic-range FC": converter.convert()}
    for bits, name in ((8, "LiteRT int8 W8A8 FC"), (4, "LiteRT INT4 W4A8 FC")):
        qmodel = tfquant.quantize_model(
            model, tfquant.QuantConfig(weight_bits=bits, first_last_bits=None))
        tfquant.freeze_batch_norm(qmodel)
        qmodel(x, training=True)
        report = tfquant.export_tflite(qmodel, representative_data=x[:8])
        models[name] = report.flatbuffer
        assert ("INT4" if bits == 4 else "INT8") in report.weight_dtypes.values()
    return models


def litert_runners(flatbuffer, m, rng, copies=1):
    """invoke() of `copies` interpreters of one model, called in turn."""
    from ai_edge_litert.interpreter import Interpreter

    x = rng.normal(size=(m, K)).astype(np.float32)
    invokes = []
    for _ in range(copies):
        interpreter = Interpreter(model_content=flatbuffer, num_threads=THREADS)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], (m, K))
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        invokes.append(interpreter.invoke)
    return rotating(lambda invoke: invoke(), invokes)


def rotating(fn, items):
    """A call of fn on the next item of items (round robin)."""
    state = [0]

    def call():
        state[0] = (state[0] + 1) % len(items)
        fn(items[state[0]])
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    rng = np.random.default_rng(0)
    ops = packed_ops._ops

    xs = {1: tf.constant(rng.normal(size=(1, K)).astype(np.float32)),
          GEMM_M: tf.constant(rng.normal(size=(GEMM_M, K)).astype(np.float32))}
    fp32 = [tf.constant(rng.normal(size=(K, N)).astype(np.float32))
            for _ in range(copies_for(4 * K * N))]
    scales = tf.constant(rng.uniform(0.001, 0.01, (1, N)).astype(np.float32))
    empty = tf.zeros([0], tf.float32)
    # Any byte is a valid packed value, so random bytes are random weights.
    packed = {bits: [tf.constant(rng.integers(0, 256, packed_ops.packed_size(K, N, bits),
                                              dtype=np.uint8))
                     for _ in range(copies_for(K * N * bits // 8))]
              for bits in (4, 2)}

    cases = {}
    for m in (1, GEMM_M):
        x = xs[m]
        cases[(m, "TF fp32 tf.matmul (DRAM)")] = rotating(lambda w, x=x: tf.matmul(x, w), fp32)
        for bits in (4, 2):
            def op(p, x=x, bits=bits):
                return ops.tfquant_packed_matmul(x, p, scales, empty, bits=bits, n=N)
            cases[(m, f"packed {bits}-bit (DRAM)")] = rotating(op, packed[bits])
            cases[(m, f"packed {bits}-bit (hot)")] = lambda op=op, p=packed[bits][0]: op(p)
    models = litert_models(rng)
    for m in (1, GEMM_M):
        for name, flatbuffer in models.items():
            cases[(m, name)] = litert_runners(flatbuffer, m, rng)
    for name, nbytes in (("LiteRT int8 W8A8 FC", K * N), ("LiteRT INT4 W4A8 FC", K * N // 2)):
        cases[(1, name + " (DRAM)")] = litert_runners(models[name], 1, rng, copies_for(nbytes))
    weight_bytes = {"TF fp32": 4 * K * N, "packed 4-bit": K * N // 2,
                    "packed 2-bit": K * N // 4, "LiteRT int8": K * N, "LiteRT INT4": K * N // 2}

    best = {}
    for _ in range(3):
        for key, fn in cases.items():
            runs = args.runs if key[0] == 1 else max(5, args.runs // 5)
            t = median_seconds(fn, runs=runs, warmup=2)
            best[key] = min(best.get(key, t), t)

    def ms(m, name):
        return best[(m, name)] * 1e3

    body = [f"Kernel variant: `{_native.packed_kernel_variant()}`; {THREADS} threads. "
            "Times in ms (median); ratio = TF fp32 (DRAM) time / this time, and "
            "LiteRT int8 W8A8 (hot) time / this time; GB/s = weight bytes / time.", "",
            "| shape | variant | ms | GB/s | × TF fp32 | × LiteRT int8 W8A8 |",
            "|---|---|---:|---:|---:|---:|"]
    for m in (1, GEMM_M):
        shape = f"{m}×{K}·{K}×{N}"
        ref = ms(m, "TF fp32 tf.matmul (DRAM)")
        lite = ms(m, "LiteRT int8 W8A8 FC")
        for key in [k for k in best if k[0] == m]:
            t = ms(*key)
            # GB/s only where the weights are read once (GEMV).
            nbytes = next(v for prefix, v in weight_bytes.items() if key[1].startswith(prefix))
            gbs = f"{nbytes / t / 1e6:.1f}" if m == 1 else "—"
            body.append(f"| {shape} | {key[1]} | {t:.3f} | {gbs} | {ref / t:.2f} | {lite / t:.2f} |")
    fp32_dram = ms(1, "TF fp32 tf.matmul (DRAM)")
    targets = [
        ("GEMV 4-bit (DRAM) ≥ 10× TF fp32 (DRAM)", fp32_dram / ms(1, "packed 4-bit (DRAM)"), 10),
        ("GEMV 2-bit (DRAM) ≥ 16× TF fp32 (DRAM)", fp32_dram / ms(1, "packed 2-bit (DRAM)"), 16),
        ("GEMV 4-bit (hot) ≥ 2× LiteRT int8 W8A8 FC (hot)",
         ms(1, "LiteRT int8 W8A8 FC") / ms(1, "packed 4-bit (hot)"), 2),
        ("GEMV 4-bit (DRAM) ≥ 2× LiteRT int8 W8A8 FC (DRAM)",
         ms(1, "LiteRT int8 W8A8 FC (DRAM)") / ms(1, "packed 4-bit (DRAM)"), 2),
        ("GEMM 4-bit ≥ 3× TF fp32", ms(GEMM_M, "TF fp32 tf.matmul (DRAM)") / ms(GEMM_M, "packed 4-bit (DRAM)"), 3),
    ]
    body += ["", "| target | measured | met |", "|---|---:|---|"]
    for name, value, goal in targets:
        body.append(f"| {name} | {value:.2f}× | {'yes' if value >= goal else 'no'} |")
    # From DRAM a GEMV cannot beat the byte ratio times the bandwidth ratio.
    fp32_gbs = weight_bytes["TF fp32"] / fp32_dram / 1e6
    body += ["", f"TF fp32 GEMV reads its weights at {fp32_gbs:.1f} GB/s; at that bandwidth the "
             "DRAM-bound packed GEMV would be 8× (4-bit) and 16× (2-bit) faster."]
    text = "\n".join(body)
    print(text)
    write_section("Packed 2/4-bit matmul vs TF and LiteRT", "python benchmarks/bench_packed.py",
                  text)


if __name__ == "__main__":
    main()
