"""tfquant's LiteRT external delegate (cc_ops/delegate, tfquant.export.delegate) in the
real ai_edge_litert interpreter: it claims the INT4/INT2 FULLY_CONNECTED nodes of exported
W4A8/W2A8 models and gives the builtin kernels' outputs bit for bit. Every interpreter
with the delegate runs in a subprocess, so a crash in native code fails a test instead
of taking pytest down."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers
from tensorflow.lite.tools import flatbuffer_utils

import tfquant
from tfquant import _native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the subprocess: argv[1] is a JSON job, stdout the JSON result.
RUNNER = r"""
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tfquant.export.delegate import delegate_stats, load_packed_delegate, packed_interpreter

job = json.loads(sys.argv[1])
sys.path.insert(0, job["tests"])
from litert_helpers import run_interpreter as run

BUILTIN = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES

result = {"runs": [], "errors": {}}
x_all = np.load(job["inputs"])
for model in job["models"]:
    for kernels in job["kernels"]:
        # One interpreter through all batch sizes: the delegate kernels re-prepare
        # (resize their outputs) on every resize.
        interpreter = packed_interpreter(model, num_threads=job["threads"], kernels=kernels,
                                         cell_bits=job.get("cell_bits"),
                                         experimental_op_resolver_type=BUILTIN)
        for i, batch in enumerate(job["batches"]):
            x = x_all[:batch]
            stock = run(Interpreter(model_path=model, experimental_op_resolver_type=BUILTIN), x)
            got = run(interpreter, x)
            result["runs"].append({
                "model": model, "batch": batch, "kernels": kernels, "runs_so_far": i + 1,
                "equal": bool(np.array_equal(got, stock)), "shape": list(got.shape),
                "max_abs_diff": float(np.abs(got - stock).max()),
                "unsaturated": float(np.mean(np.abs(got) < np.abs(stock).max())),
                "stats": delegate_stats(interpreter.packed_delegate),
                "ops": [op["op_name"] for op in interpreter._get_ops_details()]})
for name, options in job.get("bad_options", {}).items():
    try:
        load_packed_delegate(**options)
        result["errors"][name] = None
    except ValueError as error:
        result["errors"][name] = str(error)
print("RESULT" + json.dumps(result))
"""


def run_job(job):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    job = dict(job, tests=os.path.join(ROOT, "tests"))  # where RUNNER finds litert_helpers
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(job)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}"
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def mlp(seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    x = layers.Dense(128, activation="relu", name="d0")(inputs)
    x = layers.Dense(96, activation="relu", name="d1")(x)
    return keras.Model(inputs, layers.Dense(10, name="out")(x))


def sequence_model(seed=2):
    """Dense on [batch, 4, 16] inputs: FULLY_CONNECTED on a 3-D tensor."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 16))
    x = layers.Dense(32, activation="relu", name="per_step")(inputs)
    return keras.Model(inputs, layers.Dense(10, name="out")(layers.Flatten()(x)))


def wide_model(seed=3):
    """K = 16400 inputs: beyond the delegate's exact-accumulation limit at 4 bits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16400,))
    return keras.Model(inputs, layers.Dense(16, name="wide")(inputs))


def export(model, bits, x, path, int2=False):
    rng = np.random.default_rng(bits)
    qmodel = tfquant.quantize_model(
        model, tfquant.QuantConfig(weight_bits=bits, first_last_bits=None))
    qmodel.compile("adam", "mse")
    qmodel.fit(x, rng.normal(size=(len(x),) + tuple(qmodel.output_shape[1:])), epochs=1,
               batch_size=32, verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x, int2_fully_connected=int2)
    with open(path, "wb") as handle:
        handle.write(report.flatbuffer)
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """W4A8, W2A8 (INT2 filters) and W8A8 exports of one QAT-trained MLP, a W4A8
    sequence model and a W4A8 model too wide for the delegate, with their inputs."""
    folder = tmp_path_factory.mktemp("delegate")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    np.save(folder / "x.npy", x)
    paths = {bits: export(mlp(), bits, x, folder / f"w{bits}.tflite", int2=bits == 2)
             for bits in (4, 2, 8)}
    paths["inputs"] = str(folder / "x.npy")
    x_seq = rng.normal(size=(64, 4, 16)).astype(np.float32)
    np.save(folder / "x_seq.npy", x_seq)
    paths["sequence"] = export(sequence_model(), 4, x_seq, folder / "seq.tflite")
    paths["sequence_inputs"] = str(folder / "x_seq.npy")
    x_wide = rng.normal(size=(32, 16400)).astype(np.float32)
    np.save(folder / "x_wide.npy", x_wide)
    paths["wide"] = export(wide_model(), 4, x_wide, folder / "wide.tflite")
    paths["wide_inputs"] = str(folder / "x_wide.npy")
    return paths


def with_tied_rounding(path):
    """The model with its last FULLY_CONNECTED (no activation) rescaled so that
    input_scale * filter_scale / output_scale = 1/8 exactly: the quantized multiplier is
    2^30 and every odd accumulator meets a rounding tie, in both rounding steps, on
    positive and negative outputs. Which way the builtin kernel breaks ties is what the
    delegate must reproduce."""
    model = flatbuffer_utils.read_model(path)
    graph = model.subgraphs[0]
    last = graph.operators[-2]  # ..., FULLY_CONNECTED, DEQUANTIZE
    filter_q = graph.tensors[last.inputs[1]].quantization
    filter_q.scale = [2.0 ** -6] * len(filter_q.scale)
    input_scale = np.float32(graph.tensors[last.inputs[0]].quantization.scale[0])
    graph.tensors[last.outputs[0]].quantization.scale = [float(input_scale / np.float32(8))]
    tied = path.replace(".tflite", "_tied.tflite")
    flatbuffer_utils.write_model(model, tied)
    return tied


def with_static_batch(path, batch):
    """The model with every dynamic leading dimension (shape signature -1) fixed to
    `batch`, as an export of `keras.Input(batch_shape=(batch, ...))` has it."""
    model = flatbuffer_utils.read_model(path)
    for tensor in model.subgraphs[0].tensors:
        signature = tensor.shapeSignature
        if signature is not None and len(signature) and signature[0] == -1:
            signature[0] = tensor.shape[0] = batch
    fixed = path.replace(".tflite", f"_batch{batch}.tflite")
    flatbuffer_utils.write_model(model, fixed)
    return fixed


def with_per_tensor_scales(path):
    """The model with one scale per filter (the mean of its per-channel scales), the
    int32 biases' scales to match: LiteRT's per-tensor FULLY_CONNECTED path."""
    model = flatbuffer_utils.read_model(path)
    graph = model.subgraphs[0]
    for op in graph.operators:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        filter_q = graph.tensors[op.inputs[1]].quantization
        filter_q.scale, filter_q.zeroPoint = [float(np.mean(filter_q.scale))], [0]
        input_scale = np.float32(graph.tensors[op.inputs[0]].quantization.scale[0])
        bias_q = graph.tensors[op.inputs[2]].quantization
        bias_q.scale = [float(input_scale * np.float32(filter_q.scale[0]))]
        bias_q.zeroPoint = [0]
    per_tensor = path.replace(".tflite", "_per_tensor.tflite")
    flatbuffer_utils.write_model(model, per_tensor)
    return per_tensor


def with_int8_filters(path):
    """The model with its INT4/INT2 filters stored as int8 holding the same values: the
    builtin int8 kernel, and a delegate that packs int8 filters whose values fit."""
    from tensorflow.lite.python import schema_py_generated as schema

    from tfquant.export.int2 import INT2, unpack_int2, unpack_int4

    model = flatbuffer_utils.read_model(path)
    for tensor in model.subgraphs[0].tensors:
        if tensor.type in (schema.TensorType.INT4, INT2):
            count = int(np.prod(tensor.shape))
            raw = model.buffers[tensor.buffer].data
            values = unpack_int4(raw, count) if tensor.type == schema.TensorType.INT4 else (
                unpack_int2(raw, count))
            model.buffers[tensor.buffer].data = values.astype(np.int8).view(np.uint8)
            tensor.type = schema.TensorType.INT8
    as_int8 = path.replace(".tflite", "_int8.tflite")
    flatbuffer_utils.write_model(model, as_int8)
    return as_int8


@pytest.mark.parametrize("bits", [4, 2])
def test_delegate_claims_low_bit_fully_connected_and_matches_builtin_bit_for_bit(exported, bits):
    models = [exported[bits], with_per_tensor_scales(exported[bits]),
              with_int8_filters(exported[bits])]
    if bits == 4:
        models.append(with_tied_rounding(exported[4]))
    kernels = ["auto"] + _native.packed_kernel_variants()
    result = run_job({"models": models, "inputs": exported["inputs"], "batches": [1, 37, 256],
                      "kernels": kernels, "threads": 2})
    assert len(result["runs"]) == len(models) * len(kernels) * 3
    for run in result["runs"]:
        where = f"{os.path.basename(run['model'])} batch {run['batch']} kernels {run['kernels']}"
        assert run["equal"], f"{where}: max |diff| {run['max_abs_diff']}"
        assert run["shape"] == [run["batch"], 10], where
        # All three FULLY_CONNECTED nodes became delegate nodes and ran once per invoke.
        assert run["stats"]["claimed_nodes"] == 3, where
        assert run["stats"]["invocations"] == 3 * run["runs_so_far"], where
        assert run["ops"].count("DELEGATE") == 3, where
        assert run["unsaturated"] > 0.5, where  # the ties model is not clipped flat
    assert {run["stats"]["kernels"] for run in result["runs"]} == set(
        _native.packed_kernel_variants())


@pytest.mark.parametrize("cell_bits, values, cells, offset", [
    (4, range(-128, 128), 2, 8), (2, range(-128, 128), 4, 42), (2, range(-32, 32), 3, 10),
    (4, range(-32, 32), 2, 8)])
def test_cell_division_splits_int8_values_into_cells_that_sum_exactly(cell_bits, values,
                                                                      cells, offset):
    q = np.array(list(values), np.int8).reshape(-1, 8)
    parts, got_offset = _native.divide_into_cells(q, cell_bits)
    assert parts.shape == (cells,) + q.shape and parts.dtype == np.int8
    assert got_offset == offset
    half = 2 ** (cell_bits - 1)
    assert parts.min() == -half and parts.max() == half - 1  # every digit is used
    total = sum(parts[i].astype(np.int32) << (cell_bits * i) for i in range(cells))
    np.testing.assert_array_equal(total + offset, q)


def test_cell_division_rejects_what_it_cannot_divide():
    q = np.array([-128, 127], np.int8)
    with pytest.raises(ValueError, match="q must be an int8 array; got dtype int32"):
        _native.divide_into_cells(q.astype(np.int32))
    with pytest.raises(ValueError, match="value -128 at 0 does not fit in 3 cells of 2 bits"):
        _native.divide_into_cells(q, 2, cells=3)
    with pytest.raises(ValueError, match="cells=3 of 4 bits is not allowed; 1..2"):
        _native.divide_into_cells(q, 4, cells=3)
    with pytest.raises(ValueError, match="bits"):
        _native.divide_into_cells(q, 3)


@pytest.mark.parametrize("cell_bits", [4, 2])
def test_cell_division_runs_int8_filters_on_low_bit_kernels_bit_for_bit(exported, cell_bits):
    """W8A8 filters (values far beyond 4 bits) claimed with cell_bits, each run as two INT4
    or four INT2 cells, equal the builtin int8 kernel on every kernel variant, per-channel
    and per-tensor scales and rounding ties."""
    model = flatbuffer_utils.read_model(exported[8])
    graph = model.subgraphs[0]
    filters = [model.buffers[graph.tensors[op.inputs[1]].buffer].data.view(np.int8)
               for op in graph.operators if len(op.inputs) >= 2 and
               graph.tensors[op.inputs[1]].type == 9]  # INT8
    assert len(filters) == 3 and min(np.abs(f.astype(int)).max() for f in filters) > 64
    models = [exported[8], with_per_tensor_scales(exported[8]), with_tied_rounding(exported[8])]
    kernels = ["auto"] + _native.packed_kernel_variants()
    result = run_job({"models": models, "inputs": exported["inputs"], "batches": [1, 37, 256],
                      "kernels": kernels, "threads": 2, "cell_bits": cell_bits})
    assert len(result["runs"]) == len(models) * len(kernels) * 3
    for run in result["runs"]:
        where = f"{os.path.basename(run['model'])} batch {run['batch']} kernels {run['kernels']}"
        assert run["equal"], f"{where}: max |diff| {run['max_abs_diff']}"
        assert run["stats"]["claimed_nodes"] == 3, where
        assert run["ops"].count("DELEGATE") == 3, where
        # Not clipped flat (int8 filters reach 16× further than INT4 ones, so at the
        # ties' scales more outputs clip); 10 outputs at batch 1 are too few to judge.
        if run["batch"] > 1:
            assert run["unsaturated"] > 0.3, where


def test_fully_connected_on_a_3d_input_matches_builtin(exported):
    """The FC on [batch, 4, 16] (flattened to [batch * 4, 16] rows) and the head."""
    result = run_job({"models": [exported["sequence"]], "inputs": exported["sequence_inputs"],
                      "batches": [3, 64], "kernels": ["auto"], "threads": 2})
    for run in result["runs"]:
        assert run["equal"] and run["shape"] == [run["batch"], 10], run["max_abs_diff"]
        assert run["stats"]["claimed_nodes"] == 2


def test_models_without_claimable_nodes_run_unchanged_and_bad_options_are_errors(exported):
    bad = {"threads_zero": {"num_threads": 0}, "threads_text": {"num_threads": "2"},
           "kernels_unknown": {"kernels": "avx9"}, "cells_three": {"cell_bits": 3}}
    result = run_job({"models": [exported[8]], "inputs": exported["inputs"], "batches": [5],
                      "kernels": ["auto"], "threads": 1, "bad_options": bad})
    wide = run_job({"models": [exported["wide"]], "inputs": exported["wide_inputs"],
                    "batches": [2], "kernels": ["auto"], "threads": 1})
    # W8A8 has int8 filters; the wide INT4 FC has K = 16400 > 16384, beyond exact
    # accumulation through the packed kernels' float epilogue: both stay builtin.
    for run in result["runs"] + wide["runs"]:
        assert run["equal"] and run["stats"]["claimed_nodes"] == 0, run["model"]
        assert run["stats"]["invocations"] == 0 and "DELEGATE" not in run["ops"]
    errors = result["errors"]
    assert "num_threads=0" in errors["threads_zero"] and "1..256" in errors["threads_zero"]
    assert "num_threads='2'" in errors["threads_text"]
    assert "avx9" in errors["kernels_unknown"] and "avx512vnni" in errors["kernels_unknown"]
    assert "cell_bits=3 is not allowed; allowed: None (off), 4, 2" in errors["cells_three"]


def test_native_option_errors_reach_python_without_a_crash():
    """The C entry point itself rejects what the Python helper would have caught."""
    script = (
        "from ai_edge_litert.interpreter import load_delegate\n"
        "from tfquant.export.delegate import delegate_path\n"
        "for options in ({'num_threads': 'many'}, {'threads': 2}, {'cell_bits': 3},\n"
        "                {'kernels': 'avx9'}, {'max_int4_rows': '-3'}):\n"
        "    try:\n"
        "        load_delegate(delegate_path(), options)\n"
        "        print('LOADED', options)\n"
        "    except ValueError as error:\n"
        "        print('ERROR', str(error).splitlines()[-1])\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("ERROR", "LOADED"))]
    assert lines == [
        "ERROR tfquant packed delegate: num_threads='many' is not allowed; give an integer 1..256",
        "ERROR tfquant packed delegate: unknown option 'threads'; allowed: num_threads, kernels, "
        "min_int4_weights, max_int4_rows, cell_bits",
        "ERROR tfquant packed delegate: cell_bits='3' is not allowed; give 0 (off), 2 or 4",
        "ERROR tfquant packed delegate: kernels='avx9' cannot run here; allowed: auto, "
        + ", ".join(_native.packed_kernel_variants()),
        "ERROR tfquant packed delegate: max_int4_rows='-3' is not allowed; give an integer >= 0",
    ]


def test_python_helpers_reject_what_they_cannot_use():
    """Checked in Python before any native call."""
    from tfquant.export import delegate_stats, load_packed_delegate, packed_interpreter

    with pytest.raises(TypeError, match="path or flatbuffer bytes, got int"):
        packed_interpreter(123)
    with pytest.raises(TypeError, match="load_packed_delegate, got object"):
        delegate_stats(object())
    with pytest.raises(ValueError, match=r"num_threads=True .* 1\.\.256"):
        load_packed_delegate(num_threads=True)
    with pytest.raises(ValueError, match=r"max_int4_rows=-1 is not allowed"):
        load_packed_delegate(max_int4_rows=-1)
    assert os.path.exists(tfquant.export.delegate.delegate_path())


XNNPACK_RUNNER = r"""
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from tfquant.export.delegate import delegate_stats, load_packed_delegate, packed_interpreter

job = json.loads(sys.argv[1])
sys.path.insert(0, job["tests"])
from litert_helpers import run_interpreter as run

x = np.load(job["inputs"])[:8]
result = {}
for name, model in job["models"].items():
    interpreter = packed_interpreter(model, num_threads=2)  # XNNPACK behind the delegate
    got = run(interpreter, x)
    xnnpack = run(Interpreter(model_path=model), x)
    result[name] = {"claimed": delegate_stats(interpreter.packed_delegate)["claimed_nodes"],
                    "equal": bool(np.array_equal(got, xnnpack)),
                    "max_diff": float(np.abs(got - xnnpack).max()),
                    "max_abs": float(np.abs(xnnpack).max())}
try:
    load_packed_delegate(min_int4_weights=-1)
except ValueError as error:
    result["error"] = str(error)
print("RESULT" + json.dumps(result))
"""


def test_with_xnnpack_small_int4_layers_stay_with_xnnpack_and_int2_ones_are_claimed(exported):
    # XNNPACK's INT4 kernel beats the delegate's below XNNPACK_INT4_MIN_WEIGHTS (the MLP's
    # layers are far below) unless the batch is static and small; it has no INT2 kernel,
    # so INT2 layers are always claimed.
    job = {"models": {"int4": exported[4], "int2": exported[2],
                      "int4_batch8": with_static_batch(exported[4], 8),
                      "int4_batch64": with_static_batch(exported[4], 64)},
           "inputs": exported["inputs"], "tests": os.path.join(ROOT, "tests")}
    done = subprocess.run([sys.executable, "-c", XNNPACK_RUNNER, json.dumps(job)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    # Unclaimed: XNNPACK's outputs. Claimed: the builtin FC's integers (bit-exact, tested
    # above) with XNNPACK's QUANTIZE around them: a few output steps from XNNPACK's.
    assert result["int4"]["claimed"] == 0 and result["int4"]["equal"]
    assert result["int4_batch64"]["claimed"] == 0 and result["int4_batch64"]["equal"]
    assert result["int4_batch8"]["claimed"] == 3  # within XNNPACK_INT4_MAX_ROWS
    batch8 = result["int4_batch8"]
    assert batch8["max_diff"] <= 0.02 * batch8["max_abs"], batch8
    assert result["int2"]["claimed"] == 3
    assert "min_int4_weights=-1 is not allowed" in result["error"]


# Runs in the subprocess: the delegate and LiteRT's builtin hybrid kernel on the
# weight-only models of job["models"]; outputs saved to job["out"].
HYBRID_RUNNER = r"""
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tfquant.export.delegate import delegate_stats, packed_interpreter

job = json.loads(sys.argv[1])
sys.path.insert(0, job["tests"])
from litert_helpers import run_interpreter as run

BUILTIN = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
x_all, saved, stats = np.load(job["inputs"]), {}, {}
for name, model in job["models"].items():
    interpreter = packed_interpreter(model, num_threads=2, experimental_op_resolver_type=BUILTIN)
    for batch in (1, 37):
        saved[f"{name} ours {batch}"] = run(interpreter, x_all[:batch])
        stock = Interpreter(model_path=model, experimental_op_resolver_type=BUILTIN)
        saved[f"{name} litert {batch}"] = run(stock, x_all[:batch])
    stats[name] = delegate_stats(interpreter.packed_delegate)
    stats[name]["ops"] = [op["op_name"] for op in interpreter._get_ops_details()]
np.savez(job["out"], **saved)
print("RESULT" + json.dumps(stats))
"""


def test_delegate_runs_hybrid_int4_fully_connected_within_the_dynamic_quantization_bound(
        tmp_path):
    """Weight-only INT4 exports (float activations): the delegate claims the hybrid
    FULLY_CONNECTED nodes, each output is within 0.5 · xs · Σ_k |w[k, n]| of the float
    product with the flatbuffer's weights (xs = max |x_row| / 127), and the model stays
    within the documented dynamic-quantization tolerance of LiteRT's own hybrid kernel."""
    from tensorflow.lite.python import schema_py_generated as schema

    from tfquant.export.dynamic import TOLERANCE
    from tfquant.export.int2 import unpack_int4

    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    keras.utils.set_random_seed(5)
    inputs = keras.Input((64,))
    single = keras.Model(inputs, layers.Dense(40, name="single")(inputs))
    config = tfquant.QuantConfig(activation_quantizer=None, weight_bits=4, first_last_bits=None)
    models = {}
    for name, model in (("single", single), ("mlp", mlp())):
        qmodel = tfquant.ptq.quantize(model, x, config, verbose=0)
        path = str(tmp_path / f"{name}.tflite")
        tfquant.export_tflite(qmodel, path, representative_data=x, activations="dynamic")
        models[name] = path
    done = subprocess.run(
        [sys.executable, "-c", HYBRID_RUNNER, json.dumps(
            {"models": models, "inputs": str(tmp_path / "x.npy"), "tests": os.path.join(
                ROOT, "tests"), "out": str(tmp_path / "out.npz")})],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    out = np.load(tmp_path / "out.npz")
    assert stats["single"]["claimed_nodes"] == 1 and stats["mlp"]["claimed_nodes"] == 3
    assert stats["mlp"]["ops"].count("DELEGATE") == 3

    # The single layer against its float product, from the flatbuffer's INT4 filter.
    model = flatbuffer_utils.read_model(models["single"])
    graph = model.subgraphs[0]
    fc = [op for op in graph.operators if len(op.inputs) >= 2][0]
    w_t = graph.tensors[fc.inputs[1]]
    assert w_t.type == schema.TensorType.INT4
    q = unpack_int4(model.buffers[w_t.buffer].data, 40 * 64).reshape(40, 64).astype(np.float64)
    w = (q * np.asarray(w_t.quantization.scale, np.float64)[:, None]).T  # [K, N]
    bias = np.zeros(40)
    if len(fc.inputs) > 2 and fc.inputs[2] >= 0:
        bias = model.buffers[graph.tensors[fc.inputs[2]].buffer].data.view(np.float32)
    for batch in (1, 37):
        xb = x[:batch].astype(np.float64)
        exact = xb @ w + bias
        bound = 0.5 * (np.abs(xb).max(1, keepdims=True) / 127) * np.abs(w).sum(0)
        err = np.abs(out[f"single ours {batch}"] - exact)
        assert np.all(err <= bound * 1.001 + 1e-5), float((err - bound).max())
    for batch in (1, 37):
        ours, litert = out[f"mlp ours {batch}"], out[f"mlp litert {batch}"]
        assert np.abs(ours - litert).max() <= TOLERANCE * np.abs(litert).max()
        assert not np.array_equal(ours, np.zeros_like(ours))
