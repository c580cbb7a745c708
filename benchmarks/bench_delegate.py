"""tfquant's LiteRT delegate (packed kernels) vs stock LiteRT on INT4 / INT2
FULLY_CONNECTED, side by side in one process.

Models (tfquant.export_tflite of 4- and 2-bit QAT models, W4A8 INT4 filters and W2A8
INT2 filters with `int2_fully_connected=True`), per-channel scales, int8 activations:
  FC 4096→4096     one Dense(4096, no bias) on 4096 inputs, batch 1 (GEMV; the
                   flatbuffer with a static batch of 1, as a phone's model has it) and
                   256 (a dynamic batch)
  MLP 4096→11008→4096  transformer-style MLP (ReLU, no biases), batch 1 and 16.
                   The converter cannot fold the weight FakeQuant of a Dense this large
                   (4096×8192 already fails: "FakeQuantWithMinMaxVarsPerChannel is neither
                   a custom op nor a flex op"), so the export of a 64→128→64 MLP of the
                   same structure is widened in the flatbuffer: random INT4/INT2 filters,
                   per-channel scales that keep the int8 activations in range
                   (mlp_flatbuffer).
  demo CNN         examples/demo_model.py at 4 bits everywhere (only its Dense(10)
                   head is a claimable FULLY_CONNECTED), batch 64
Interpreters, all with num_threads=THREADS, invoke() only, weights cache-resident
(one interpreter per variant):
  builtin          ai_edge_litert Interpreter, BUILTIN_WITHOUT_DEFAULT_DELEGATES: LiteRT's
                   own kernels (INT4/INT2 filters unpacked to int8 on every invoke)
  XNNPACK          the default resolver: XNNPACK applied (it takes the INT4 and INT2 FC too)
  delegate         builtin resolver + tfquant.export.load_packed_delegate(THREADS)
  delegate+XNNPACK default resolver + the delegate: ours claims the INT4/INT2 FC first,
                   XNNPACK the rest (how one would deploy it)
Every "delegate" run is checked bit-exact against the builtin run on the same input.
The variants take turns over ROUNDS rounds, each round on fresh interpreters (one
XNNPACK instance can run 1.3× slower than the next for its whole life, so a ratio of two
instances says little): a time is the median over the rounds of RUNS-invoke medians, a
ratio the median over the rounds of that round's ratio. Written to BENCHMARKS.md.
Run: `make bench` or `.venv/bin/python benchmarks/bench_delegate.py [--rounds R] [--runs N]`.
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
from benchmark_report import median_seconds, write_section  # noqa: E402

import tfquant  # noqa: E402
from tfquant.export import delegate_stats, load_packed_delegate  # noqa: E402
from tfquant.export.delegate import XNNPACK_INT4_MAX_ROWS, XNNPACK_INT4_MIN_WEIGHTS  # noqa: E402

THREADS = 2


def export(model, bits, x):
    """W{bits}A8 flatbuffer of `model` (INT2 filters at 2 bits, int8 at 8)."""
    qmodel = tfquant.quantize_model(model, tfquant.QuantConfig(weight_bits=bits,
                                                               first_last_bits=None))
    tfquant.freeze_batch_norm(qmodel)
    qmodel(x, training=True)  # sets the activation ranges
    report = tfquant.export_tflite(qmodel, representative_data=x[:8],
                                   int2_fully_connected=bits == 2)
    assert {2: "INT2", 4: "INT4", 8: "INT8"}[bits] in report.weight_dtypes.values()
    return report.flatbuffer


def dense_stack(widths):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((widths[0],))
    x = inputs
    for i, units in enumerate(widths[1:]):
        last = i == len(widths) - 2
        x = keras.layers.Dense(units, use_bias=len(widths) > 2,
                               activation=None if last else "relu")(x)
    return keras.Model(inputs, x)


def with_static_batch(flatbuffer, batch):
    """`flatbuffer` with every dynamic leading dimension (shape signature −1) fixed to
    `batch`, as a model exported with `keras.Input(batch_shape=(batch, ...))` has it."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for tensor in model.subgraphs[0].tensors:
        signature = tensor.shapeSignature
        if signature is not None and len(signature) and signature[0] == -1:
            tensor.shapeSignature = np.array([batch, *signature[1:]], np.int32)
            tensor.shape = np.array([batch, *tensor.shape[1:]], np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def mlp_flatbuffer(bits, widths=(4096, 11008, 4096), seed=0):
    """The exported 64→128→64 MLP widened to `widths` (see the module docstring)."""
    from tensorflow.lite.tools import flatbuffer_utils

    x = np.random.default_rng(seed).normal(size=(64, 64)).astype(np.float32)
    small = export(dense_stack([64, 128, 64]), bits, x)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(small))
    graph, rng = model.subgraphs[0], np.random.default_rng(seed)
    fcs = [op for op in graph.operators if len(op.inputs) >= 2]
    assert len(fcs) == 2 and all(op.inputs[2] < 0 for op in fcs), "two FCs without bias"
    for op, k, n in zip(fcs, widths[:-1], widths[1:]):
        x_t, w_t = (graph.tensors[i] for i in op.inputs[:2])
        y_t = graph.tensors[op.outputs[0]]
        for t, cols in ((x_t, k), (y_t, n)):
            t.shape = np.array([1, cols], np.int32)
            t.shapeSignature = np.array([-1, cols], np.int32)
        w_t.shape = np.array([n, k], np.int32)
        # Symmetric narrow-range levels, as a QAT weight quantizer gives; packed
        # low bits first (INT4: 2 per byte, INT2: 4 per byte).
        levels = 2 ** (bits - 1) - 1
        q = rng.integers(-levels, levels + 1, (n * k) // (8 // bits) * (8 // bits))
        fields = (q & (2 ** bits - 1)).astype(np.uint8).reshape(-1, 8 // bits)
        packed = np.zeros(len(fields), np.uint8)
        for j in range(8 // bits):
            packed |= fields[:, j] << (j * bits)
        model.buffers[w_t.buffer].data = packed
        # Output std ≈ 30 steps: std(acc) ≈ sqrt(K) · 40 (int8 x) · std(q).
        q_std = float(np.sqrt((levels * (levels + 1)) / 3))
        s_in, s_out = x_t.quantization.scale[0], y_t.quantization.scale[0]
        scale = 30 * s_out / (s_in * np.sqrt(k) * 40 * q_std)
        w_t.quantization.scale = (scale * rng.uniform(0.8, 1.2, n)).astype(np.float32).tolist()
        w_t.quantization.zeroPoint = [0] * n
    for t in (graph.tensors[i] for i in list(graph.inputs) + list(graph.outputs)):
        t.shape = np.array([1, widths[0] if t is graph.tensors[graph.inputs[0]] else widths[-1]],
                           np.int32)
        t.shapeSignature = np.array([-1, t.shape[1]], np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def interpreter_case(flatbuffer, x, variant, cell_bits=None):
    """(invoke, output getter, delegate or None) of one interpreter on input x;
    `cell_bits` (Cell Division) goes to the delegate."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": THREADS}
    delegate = None
    if "XNNPACK" not in variant:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if variant.startswith("delegate"):
        # As packed_interpreter does: with XNNPACK behind it, small INT4 layers stay there.
        xnnpack = "XNNPACK" in variant
        delegate = load_packed_delegate(
            num_threads=THREADS, cell_bits=cell_bits,
            min_int4_weights=XNNPACK_INT4_MIN_WEIGHTS if xnnpack else 0,
            max_int4_rows=XNNPACK_INT4_MAX_ROWS if xnnpack else 0)
        kwargs["experimental_delegates"] = [delegate]
    interpreter = Interpreter(model_content=flatbuffer, **kwargs)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    output = interpreter.get_output_details()[0]["index"]
    return interpreter.invoke, lambda: interpreter.get_tensor(output), delegate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    workloads = []  # (name, bits, flatbuffer, batch)
    x_fc = rng.normal(size=(64, 4096)).astype(np.float32)
    for bits in (4, 2):
        flatbuffer = export(dense_stack([4096, 4096]), bits, x_fc)
        workloads += [("FC 4096→4096, batch 1", bits, with_static_batch(flatbuffer, 1), 1),
                      ("FC 4096→4096, batch 256", bits, flatbuffer, 256)]
    for bits in (4, 2):
        flatbuffer = mlp_flatbuffer(bits)
        workloads += [(f"MLP 4096→11008→4096, batch {m}", bits, flatbuffer, m)
                      for m in (1, 16)]
    from demo_model import build_float_model

    x_cnn = rng.normal(size=(64, 28, 28, 1)).astype(np.float32)
    workloads.append(("demo CNN, batch 64", 4, export(build_float_model(), 4, x_cnn), 64))

    variants = ("builtin", "XNNPACK", "delegate", "delegate+XNNPACK")
    inputs, claimed, kernels = {}, {}, set()
    for name, bits, flatbuffer, m in workloads:
        shape = (m,) + ((28, 28, 1) if "CNN" in name else (4096,))
        inputs[(name, bits)] = x = rng.normal(size=shape).astype(np.float32)
        outputs = {}
        for variant in variants:
            _, output, delegate = interpreter_case(flatbuffer, x, variant)
            outputs[variant] = output()
            if delegate is not None:
                stats = delegate_stats(delegate)
                claimed[(name, bits, variant)] = stats["claimed_nodes"]
                kernels.add(stats["kernels"])
        assert np.array_equal(outputs["delegate"], outputs["builtin"]), (name, bits)

    rounds = {}  # (name, bits, variant) -> seconds per round
    for _ in range(args.rounds):
        for name, bits, flatbuffer, _ in workloads:
            runs = args.runs if name.endswith(("batch 1", "batch 16")) else max(5, args.runs // 4)
            for variant in variants:
                invoke = interpreter_case(flatbuffer, inputs[(name, bits)], variant)[0]
                rounds.setdefault((name, bits, variant), []).append(
                    median_seconds(invoke, runs=runs, warmup=2))
    best = {key: statistics.median(t) for key, t in rounds.items()}

    def ratio(name, bits, stock, ours):
        """Median over the rounds of stock time / ours."""
        return statistics.median(a / b for a, b in zip(rounds[(name, bits, stock)],
                                                        rounds[(name, bits, ours)]))

    body = [f"Delegate kernels: `{', '.join(sorted(kernels))}`; {THREADS} threads everywhere. "
            f"Times in ms (median over {args.rounds} rounds on fresh interpreters of "
            "invoke() medians); × builtin = builtin / delegate, × XNNPACK = XNNPACK / "
            "delegate+XNNPACK, each the median of the rounds' ratios. Delegate outputs are bit-exact with the builtin "
            "kernels on every row (checked by the script). With XNNPACK behind it the "
            "delegate leaves INT4 layers below XNNPACK_INT4_MIN_WEIGHTS "
            f"({XNNPACK_INT4_MIN_WEIGHTS / 2**20:.0f}M weights) to XNNPACK unless their "
            f"input is a static batch of at most XNNPACK_INT4_MAX_ROWS ({XNNPACK_INT4_MAX_ROWS}) "
            "rows, as `packed_interpreter` does (tfquant/export/delegate.py).", "",
            "| workload | weights | FC nodes claimed (alone / with XNNPACK) | builtin ms | delegate ms | × builtin "
            "| XNNPACK ms | delegate+XNNPACK ms | × XNNPACK |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    # (stock variant, delegate variant) pairs compared.
    pairs = (("builtin", "delegate"), ("XNNPACK", "delegate+XNNPACK"))
    for name, bits, _, _ in workloads:
        t = {v: best[(name, bits, v)] * 1e3 for v in variants}
        body.append(f"| {name} | {'INT4' if bits == 4 else 'INT2'} | "
                    f"{claimed[(name, bits, 'delegate')]} / "
                    f"{claimed[(name, bits, 'delegate+XNNPACK')]} "
                    f"| {t['builtin']:.3f} | {t['delegate']:.3f} | "
                    f"{ratio(name, bits, 'builtin', 'delegate'):.2f} | {t['XNNPACK']:.3f} | "
                    f"{t['delegate+XNNPACK']:.3f} | "
                    f"{ratio(name, bits, 'XNNPACK', 'delegate+XNNPACK'):.2f} |")
    body += ["", "| target | measured | met |", "|---|---:|---|"]
    for name, bits, _, _ in workloads:
        if not name.startswith("FC"):
            continue
        for stock, ours in pairs:
            r = ratio(name, bits, stock, ours)
            want = 3.0 if stock == "builtin" else 1.2 if bits == 4 and name.endswith(
                "batch 1") else 1.0
            body.append(f"| {'INT4' if bits == 4 else 'INT2'} {name}: {ours} ≥ {want:g}× "
                        f"{stock} | {r:.2f}× | {'yes' if r >= want else 'no'} |")
    worst = min(ratio(name, bits, "XNNPACK", "delegate+XNNPACK")
                for name, bits, _, _ in workloads)
    body.append(f"| every row: delegate+XNNPACK ≥ 1.0× XNNPACK | lowest {worst:.2f}× | "
                f"{'yes' if worst >= 1.0 else 'no'} |")
    text = "\n".join(body)
    print(text)
    command = f"python benchmarks/bench_delegate.py --rounds {args.rounds}"
    write_section("LiteRT delegate vs stock LiteRT", command, text)


if __name__ == "__main__":
    main()
