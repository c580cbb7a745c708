"""The checks of tests/test_concurrency.py and benchmarks/stress_concurrency.py.

Each check returns a list of failure strings (empty: passed), so the test asserts on it
and the stress script counts it. TensorFlow is imported only inside the op checks: the
LiteRT checks load the delegate's .so by path, so their child processes start in a
fraction of a second and a TensorFlow thread pool never hides a delegate problem.

Run as a script it is the child process of a check:
  python concurrency_checks.py ops <inter> <intra> <reference.npz> [write]
  python concurrency_checks.py delegate <folder>
  python concurrency_checks.py exit-<mode> <folder>     (see EXIT_MODES)
"""

import glob
import os
import subprocess
import sys
import threading

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
THREADS = 8
EXIT_MODES = ("normal", "thread-sys-exit", "daemon-invoking")


def run_threads(count, work):
    """work(i) on `count` threads released together; returns their results (an
    exception a thread raised is returned as its result, not lost)."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def body(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - reported by the caller
            results[i] = error

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def compare(name, got, want):
    """Failure strings where `got` (list of arrays) is not bit-identical to `want`."""
    if isinstance(got, BaseException):
        return [f"{name}: raised {type(got).__name__}: {got}"]
    failures = []
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape or not np.array_equal(g, w):
            diff = np.abs(g.astype(np.float64) - w).max() if g.shape == w.shape else "shape"
            failures.append(f"{name}[{i}]: not bit-identical (max |diff| {diff})")
    return failures


# ---- TensorFlow ops ---------------------------------------------------------------

def op_cases():
    """{name: function() -> list of tensors}: packed matmul at 4 and 2 bits, fake quant
    per tensor and per channel, forward and the gradients w.r.t. x, min and max. The
    tensors are large enough that the ops shard over TensorFlow's intra-op pool."""
    import tensorflow as tf

    import tfquant

    rng = np.random.default_rng(7)
    x_mm = tf.constant(rng.normal(size=(96, 512)).astype(np.float32))
    cases = {}
    for bits, group in ((4, 0), (2, 64)):
        w = rng.normal(size=(512, 160)).astype(np.float32)
        q, scales = tfquant.ops.packed.quantize_weights(w, bits, group)
        packed = tfquant.ops.pack_weights(q, bits)
        bias = tf.constant(rng.normal(size=160).astype(np.float32))
        cases[f"packed_matmul_w{bits}_g{group}"] = (
            lambda p=packed, s=scales, b=bias, bits=bits, g=group:
            [tfquant.ops.packed_matmul(x_mm, p, s, b, bits=bits, group_size=g)])
    x_fq = tf.constant(rng.normal(scale=2.0, size=(256, 1200)).astype(np.float32))
    ranges = {
        "per_tensor": (tf.constant(-2.5), tf.constant(3.0), None),
        "per_channel": (tf.constant(-rng.uniform(0.5, 3, 1200).astype(np.float32)),
                        tf.constant(rng.uniform(0.5, 3, 1200).astype(np.float32)), 1)}
    for kind, (lo, hi, axis) in ranges.items():
        for mode, bits, narrow in (("clipped", 8, False), ("learned", 4, True)):
            def forward_and_gradient(lo=lo, hi=hi, axis=axis, mode=mode, bits=bits, narrow=narrow):
                with tf.GradientTape() as tape:
                    tape.watch([x_fq, lo, hi])
                    y = tfquant.ops.fake_quant(x_fq, lo, hi, num_bits=bits, narrow_range=narrow,
                                               axis=axis, range_gradient=mode)
                    loss = tf.reduce_sum(y * y)  # non-uniform dy: the sums see every value
                return [y] + tape.gradient(loss, [x_fq, lo, hi])
            cases[f"fake_quant_{kind}_{mode}"] = forward_and_gradient
    return cases


def run_cases(cases):
    return {name: [t.numpy() for t in fn()] for name, fn in cases.items()}


def check_ops(reference, threads=THREADS, rounds=2):
    """Every case on `threads` threads at once, eagerly and through one shared
    tf.function per case (traced concurrently on first use), against `reference`
    ({name: arrays} from a single-threaded run)."""
    import tensorflow as tf

    cases = op_cases()
    graphs = {name: tf.function(fn) for name, fn in cases.items()}
    failures = []
    for label, table in (("eager", cases), ("tf.function", graphs)):
        def work(i, table=table):
            names = sorted(table)
            order = names[i % len(names):] + names[:i % len(names)]  # threads differ in order
            return [(n, [t.numpy() for t in table[n]()]) for _ in range(rounds) for n in order]
        for i, result in enumerate(run_threads(threads, work)):
            if isinstance(result, BaseException):
                failures.append(f"{label} thread {i}: raised {type(result).__name__}: {result}")
                continue
            for name, got in result:
                failures += compare(f"{label} thread {i} {name}", got, reference[name])
    return failures


def ops_child(inter, intra, reference_path, write):
    """In a fresh process (TensorFlow's thread settings take effect only before it
    initializes): writes the single-threaded reference, or checks against it."""
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(inter)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    if write:
        np.savez(reference_path, **{f"{n}__{i}": a for n, arrays in run_cases(op_cases()).items()
                                    for i, a in enumerate(arrays)})
        return []
    stored = np.load(reference_path)
    reference = {}
    for key in sorted(stored.files, key=lambda k: int(k.rsplit("__", 1)[1])):
        reference.setdefault(key.rsplit("__", 1)[0], []).append(stored[key])
    failures = []
    for name, got in run_cases(op_cases()).items():
        failures += compare(f"one thread {name}", got, reference[name])
    return failures + check_ops(reference)


# ---- LiteRT delegate --------------------------------------------------------------

def export_models(folder):
    """W4A8 and W2A8 (INT2 filters) exports of a QAT-trained MLP (as tests/test_delegate.py
    makes them) and their inputs, in `folder`; returns {"w4", "w2", "inputs"} paths."""
    import keras

    import tfquant

    rng = np.random.default_rng(3)
    x = rng.normal(size=(128, 64)).astype(np.float32)
    paths = {"inputs": os.path.join(folder, "x.npy")}
    np.save(paths["inputs"], x)
    for bits in (4, 2):
        keras.utils.set_random_seed(bits)
        inputs = keras.Input((64,))
        h = keras.layers.Dense(128, activation="relu")(inputs)
        h = keras.layers.Dense(96, activation="relu")(h)
        model = keras.Model(inputs, keras.layers.Dense(10)(h))
        qmodel = tfquant.quantize_model(
            model, tfquant.QuantConfig(weight_bits=bits, first_last_bits=None))
        qmodel.compile("adam", "mse")
        qmodel.fit(x, rng.normal(size=(len(x), 10)), epochs=1, batch_size=32, verbose=0)
        report = tfquant.export_tflite(qmodel, representative_data=x,
                                       int2_fully_connected=bits == 2)
        paths[f"w{bits}"] = os.path.join(folder, f"w{bits}.tflite")
        with open(paths[f"w{bits}"], "wb") as handle:
            handle.write(report.flatbuffer)
    return paths


def delegate_library():
    return sorted(glob.glob(os.path.join(ROOT, "tfquant", "_tfquant_delegate*.so")))[0]


def interpreter(model, delegate=None, num_threads=2):
    """A LiteRT interpreter for `model`, with tfquant's delegate (a new one unless given)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType, load_delegate

    if delegate is None:
        delegate = load_delegate(delegate_library(), {"num_threads": str(num_threads)})
    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    found = Interpreter(model_path=model, experimental_delegates=[delegate],
                        experimental_op_resolver_type=builtin)
    found.keep_delegate = delegate  # the delegate must outlive the interpreter
    return found


def invoke(found, x):
    detail = found.get_input_details()[0]
    found.resize_tensor_input(detail["index"], x.shape)
    found.allocate_tensors()
    found.set_tensor(detail["index"], x)
    found.invoke()
    return found.get_tensor(found.get_output_details()[0]["index"]).copy()


BATCHES = (1, 7, 64, 128)


def delegate_reference(folder):
    """{(model, batch): output} of the builtin kernels (no delegate), one thread."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    x = np.load(os.path.join(folder, "x.npy"))
    reference = {}
    for model in ("w4", "w2"):
        builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        stock = Interpreter(model_path=os.path.join(folder, f"{model}.tflite"),
                            experimental_op_resolver_type=builtin)
        for batch in BATCHES:
            reference[model, batch] = invoke(stock, x[:batch])
    return x, reference


def check_delegate(folder, threads=6, rounds=3):
    """Threads invoking their own delegate interpreters at once, then threads sharing
    one delegate (one task pool) between their interpreters, then interpreters created,
    invoked and destroyed repeatedly on several threads (pool start and shutdown)."""
    import gc

    from ai_edge_litert.interpreter import load_delegate

    x, reference = delegate_reference(folder)
    shared = load_delegate(delegate_library(), {"num_threads": "2"})
    failures = []

    def invoke_all(i, delegate):
        model = ("w4", "w2")[i % 2]
        found = interpreter(os.path.join(folder, f"{model}.tflite"), delegate)
        if not any(op["op_name"] == "DELEGATE" for op in found._get_ops_details()):
            raise AssertionError(f"the delegate claimed no node of {model}")
        return [(model, b, invoke(found, x[:b])) for _ in range(rounds) for b in BATCHES]

    def churn(i):
        outputs = []
        for round_ in range(4):
            model = ("w4", "w2")[(i + round_) % 2]
            found = interpreter(os.path.join(folder, f"{model}.tflite"), num_threads=1 + round_ % 3)
            outputs.append((model, 7, invoke(found, x[:7])))
            del found
            gc.collect()  # destroys the interpreter and its delegate's pool now
        return outputs

    for label, work in (("own delegate", lambda i: invoke_all(i, None)),
                        ("shared delegate", lambda i: invoke_all(i, shared)),
                        ("create/destroy", churn)):
        for i, result in enumerate(run_threads(threads, work)):
            if isinstance(result, BaseException):
                failures.append(f"{label} thread {i}: raised {type(result).__name__}: {result}")
                continue
            for model, batch, got in result:
                failures += compare(f"{label} thread {i} {model} batch {batch}", [got],
                                    [reference[model, batch]])
    return failures


def exit_child(mode, folder):
    """Leaves the process with delegate interpreters alive and their pools started:
    "normal" returns from main; "thread-sys-exit" has a thread call sys.exit() after
    invoking (it ends that thread only) and then returns; "daemon-invoking" returns
    while daemon threads are inside invoke()."""
    x = np.load(os.path.join(folder, "x.npy"))
    kept = [interpreter(os.path.join(folder, f"{m}.tflite"), num_threads=3) for m in ("w4", "w2")]
    for found in kept:
        invoke(found, x[:64])
    if mode == "thread-sys-exit":
        def leave():
            invoke(interpreter(os.path.join(folder, "w4.tflite")), x[:16])
            sys.exit(0)
        thread = threading.Thread(target=leave)
        thread.start()
        thread.join()
    elif mode == "daemon-invoking":
        started = threading.Barrier(3)

        def spin(found):
            started.wait()
            while True:
                invoke(found, x)
        for found in kept:
            threading.Thread(target=spin, args=(found,), daemon=True).start()
        started.wait()
    globals()["KEPT"] = kept  # alive until interpreter finalization


def run_child(args, timeout=120):
    """Runs this file as a child with `args`; (returncode or "timeout", stderr tail)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__)] + list(args),
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    return done.returncode, (done.stdout + done.stderr)[-3000:]


def check_exit(folder, mode, timeout=30):
    code, tail = run_child([f"exit-{mode}", folder], timeout)
    return [] if code == 0 else [f"exit-{mode}: exit code {code} (want 0)\n{tail}"]


def check_child(args, timeout=300):
    """A check run in a child process: it prints FAILURE lines and exits 1 on failure."""
    code, tail = run_child(args, timeout)
    if code == 0:
        return []
    return [ln for ln in tail.splitlines() if ln.startswith("FAILURE")] or [
        f"{' '.join(args)}: exit code {code}\n{tail}"]


def main(argv):
    what = argv[0]
    if what.startswith("exit-"):
        exit_child(what[len("exit-"):], argv[1])
        return 0
    if what == "ops":
        failures = ops_child(int(argv[1]), int(argv[2]), argv[3], len(argv) > 4)
    elif what == "delegate":
        failures = check_delegate(argv[1])
    else:
        raise SystemExit(f"unknown check {what!r}")
    for failure in failures:
        print("FAILURE " + failure.replace("\n", " | "))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
