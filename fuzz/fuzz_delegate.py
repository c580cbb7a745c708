"""tfquant's sanitized LiteRT delegate on valid and mutated models (a fuzz child).

    python fuzz/fuzz_delegate.py --models build/fuzz/models/models.json --start 0 --count 500

Case i (seeded by --seed and i, so a case can be replayed alone) runs a seed model
unmutated (every --valid-every-th case: the delegate must claim its FULLY_CONNECTED
nodes and match the builtin kernels bit for bit, at a random batch size; hybrid seeds
within TOLERANCE) or mutated by fuzz/mutate.py (a clean error or a run, but where the
delegate claimed nodes of an integer seed and both interpreters ran, the outputs must
still be equal).
Before each interpreter a line `CASE i <phase>` goes to stdout, so fuzz/run.py can tell
which case and which interpreter a crash belongs to; after each case `DONE {json}`.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fuzz import mutate, regressions, sanitized  # noqa: E402

MAX_INPUT_ELEMENTS = 1 << 22  # larger (mutated) inputs are not filled nor invoked
# Hybrid seeds: outputs within this fraction of max |builtin| (tfquant.export.dynamic's
# TOLERANCE; not imported, so the child needs no TensorFlow).
TOLERANCE = 0.03
KERNELS = ("auto", "scalar", "avx2", "avx512vnni")


def load_delegates():
    """One sanitized delegate per (threads, kernels) this CPU runs, all with Cell Division
    (4- or 2-bit cells in turn, so the int8 seed is claimed too)."""
    from ai_edge_litert.interpreter import load_delegate
    delegates = []
    for i, kernels in enumerate(KERNELS):
        try:
            delegates.append(load_delegate(sanitized.delegate_path(),
                                           {"num_threads": 1 + i % 3, "kernels": kernels,
                                            "cell_bits": 4 if i % 2 else 2}))
        except ValueError:
            pass  # a variant this CPU cannot run
    return delegates


def inputs_for(interpreter, rng):
    values = []
    for detail in interpreter.get_input_details():
        shape = [int(d) for d in detail["shape"]]
        if any(d < 0 for d in shape) or np.prod(shape, dtype=np.int64) > MAX_INPUT_ELEMENTS:
            return None
        if np.issubdtype(detail["dtype"], np.floating):
            values.append(rng.normal(size=shape).astype(detail["dtype"]) * 3)
        elif np.issubdtype(detail["dtype"], np.integer):
            info = np.iinfo(detail["dtype"])
            values.append(rng.integers(max(info.min, -128), min(info.max, 127) + 1,
                                       size=shape).astype(detail["dtype"]))
        else:
            return None
    return values


def run(data, delegate, batch, seed):
    """(outcome, outputs, claimed): outcome is 'ran', 'load_error', 'error' or 'too_large'."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    before = sanitized.claimed_nodes(delegate) if delegate is not None else 0
    try:
        interpreter = Interpreter(
            model_content=data, experimental_delegates=[delegate] if delegate else None,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError):
        return "load_error", None, 0
    claimed = sanitized.claimed_nodes(delegate) - before if delegate is not None else 0
    try:
        for detail in interpreter.get_input_details():
            if batch is not None and len(detail["shape"]) >= 1:
                interpreter.resize_tensor_input(detail["index"],
                                                [batch] + list(detail["shape"][1:]))
        interpreter.allocate_tensors()
        values = inputs_for(interpreter, np.random.default_rng(seed))
        if values is None:
            return "too_large", None, claimed
        for detail, value in zip(interpreter.get_input_details(), values):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        return "ran", [interpreter.get_tensor(d["index"]).copy()
                       for d in interpreter.get_output_details()], claimed
    except (ValueError, RuntimeError, IndexError, TypeError, MemoryError, OverflowError):
        return "error", None, claimed


def same(a, b, tolerance=0.0):
    """Equal outputs; with `tolerance`, float outputs within tolerance · max |b| where
    finite (a hybrid model: the delegate's activation rounding is not LiteRT's)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return False
    for x, y in zip(a, b):
        if not tolerance or not np.issubdtype(y.dtype, np.floating):
            if not np.array_equal(x, y, equal_nan=True):
                return False
            continue
        finite = np.isfinite(y)
        if not np.array_equal(finite, np.isfinite(x)):
            return False
        if finite.any() and np.abs(x[finite] - y[finite]).max() > tolerance * np.abs(
                y[finite]).max():
            return False
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid-every", type=int, default=10)
    parser.add_argument("--regressions", action="store_true",
                        help="cases --start.. of regression_cases() instead of random ones")
    parser.add_argument("--builtin-only", action="store_true",
                        help="the same cases without the delegate (does LiteRT crash alone?)")
    args = parser.parse_args()
    with open(args.models) as handle:
        paths = json.load(handle)
    seeds = []
    for name in sorted(paths):
        with open(paths[name], "rb") as handle:
            blob = handle.read()
        seeds.append((name, blob, mutate.targets(blob)))
    delegates = load_delegates()
    if args.regressions:
        cases = regression_cases(seeds, delegates)
        for i in range(args.start, min(args.start + args.count, len(cases))):
            print("DONE " + json.dumps(run_regression(i, *cases[i])), flush=True)
        return
    for i in range(args.start, args.start + args.count):
        print("DONE " + json.dumps(run_case(i, args, seeds, delegates)), flush=True)


def regression_cases(seeds, delegates):
    """(name, model, data, delegate): every regression on every RELU6 seed with int8
    activations (the regressions edit their quantization) and every delegate."""
    return [(name, model, regressions.apply(name, blob), delegate)
            for name in regressions.NAMES for model, blob, _ in seeds
            if "mlp" in model and "hybrid" not in model for delegate in delegates]


def run_regression(i, name, model, data, delegate):
    print(f"CASE {i} delegate", flush=True)
    outcome, outputs, claimed = run(data, delegate, None, i)  # the model's own shapes
    record = {"case": i, "model": model, "valid": False, "changed": [name], "regression": name,
              "outcome": outcome, "claimed": claimed}
    return compare_with_builtin(record, data, outputs, None) if outcome == "ran" else record


def run_case(i, args, seeds, delegates):
    """One case; returns its record (fuzz/run.py adds them up)."""
    rng = np.random.default_rng([args.seed, i])
    name, blob, found = seeds[int(rng.integers(len(seeds)))]
    delegate = delegates[int(rng.integers(len(delegates)))]
    delegate = None if args.builtin_only else delegate
    valid = i % args.valid_every == 0
    batch = int(rng.choice([1, 2, 3, 7, 64, 300, int(rng.integers(1, 301))]))
    batch = batch if rng.random() < 0.7 else None  # None: the model's own shapes
    data, changed = (blob, []) if valid else mutate.mutate(blob, found, rng)
    record = {"case": i, "model": name, "valid": valid, "changed": changed}
    print(f"CASE {i} delegate", flush=True)
    outcome, outputs, claimed = run(data, delegate, batch, i)
    record.update(outcome=outcome, claimed=claimed)
    if outcome != "ran":
        if valid:
            record["mismatch"] = f"valid model: {outcome}"
        return record
    return compare_with_builtin(record, data, outputs, batch)


def compare_with_builtin(record, data, outputs, batch):
    """The delegate's outputs must be the builtin kernels' wherever it claimed nodes (and a
    valid model must be claimed and run by both)."""
    i, claimed = record["case"], record["claimed"]
    print(f"CASE {i} builtin", flush=True)
    b_outcome, b_outputs, _ = run(data, None, batch, i)
    tolerance = TOLERANCE if "hybrid" in record["model"] else 0.0
    differs = b_outcome == "ran" and not same(outputs, b_outputs, tolerance)
    if record["valid"] and (claimed == 0 or b_outcome != "ran" or differs):
        record["mismatch"] = (f"valid model: claimed {claimed} nodes, builtin {b_outcome}, "
                              f"outputs differ: {differs}")
    # Hybrid kernels round differently from LiteRT's, so on a mutated hybrid model (an
    # inf input row, a scale of 1e37) the two may part beyond any tolerance: there only
    # crashes and sanitizer reports count.
    elif claimed and differs and tolerance == 0.0:
        record["mismatch"] = "delegate outputs differ from the builtin kernels"
    return record


if __name__ == "__main__":
    main()
