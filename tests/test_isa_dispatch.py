"""The one ISA dispatcher (cc_ops/kernels/isa_dispatch.h) that the fake-quant kernels,
the packed matmul kernels and the LiteRT delegate share.

TFQUANT_KERNELS=<level> caps the level of every kernel family; each family takes its
best table at or below it. A value that is not a level, or one this CPU/OS cannot run,
is ignored with one warning and never fails. TFQUANT_PACKED_KERNELS, the older name,
caps the packed kernels alone. The choice is made once, when a library is loaded, so
every case runs in a fresh subprocess that loads only the pybind module (no TensorFlow
import) unless it tests the TF op or the delegate.
"""

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tfquant import _native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(_native.__file__)
# In dispatch order (IsaLevel in isa_dispatch.h).
ALL_LEVELS = ["scalar", "neon", "avx2", "avx512", "avx512vnni"]
LEVELS = _native.isa_levels()
ENV_VARS = ("TFQUANT_KERNELS", "TFQUANT_PACKED_KERNELS")


def library(pattern):
    paths = sorted(glob.glob(os.path.join(PACKAGE, pattern)))
    assert paths, f"{pattern} not found in {PACKAGE}"
    return paths[0]


# Loads tfquant/_native*.so alone, prints what it chose and digests of results on
# fixed inputs (default variant: the dispatched one).
NATIVE_SCRIPT = textwrap.dedent("""
    import hashlib, importlib.util, json, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("_native", sys.argv[1])
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((37, 300)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    mn = -rng.uniform(0.5, 2, 300).astype(np.float32)
    mx = rng.uniform(0.5, 2, 300).astype(np.float32)
    q = rng.integers(-8, 8, (256, 40)).astype(np.int8)
    packed = m.pack_weights(q, 4)
    scales = rng.uniform(0.01, 0.1, (4, 40)).astype(np.float32)
    xm = rng.standard_normal((5, 256)).astype(np.float32)
    digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    info = m.build_info()
    print(json.dumps({
        "level": m.isa_level(), "levels": m.isa_levels(),
        "fake_quant": m.kernel_variant(), "packed": m.packed_kernel_variant(),
        "seer_conv": m.seer_conv_kernel_variant(),
        "warning": info["kernels_warning"], "requested": info["kernels_requested"],
        "y": digest(m.fake_quant_reference(x, mn, mx, 5, False, 1)),
        "y_tensor": digest(m.fake_quant_reference(x, -1.5, 2.0, 8, True, None)),
        "dx": digest(m.fake_quant_grad_reference(dy, x, mn, mx, 5, False, 1)[0]),
        "matmul": digest(m.packed_matmul(xm, packed, scales, None, 4, 40, 64)),
    }))
""")


def run_native(**env_values):
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(env_values)
    p = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT, library("_native*.so")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def best_at_most(variants, cap):
    """What a family with these variants runs under a cap (its best lower level)."""
    return [v for v in variants if ALL_LEVELS.index(v) <= ALL_LEVELS.index(cap)][-1]


@pytest.fixture(scope="module")
def default():
    return run_native()


def test_levels_are_a_prefix_of_the_architecture_and_the_default_is_the_best(default):
    chosen, stderr = default
    assert LEVELS[0] == "scalar" and all(level in ALL_LEVELS for level in LEVELS)
    assert LEVELS == sorted(LEVELS, key=ALL_LEVELS.index)
    assert chosen["level"] == LEVELS[-1] and chosen["warning"] == "" and "tfquant" not in stderr
    assert chosen["fake_quant"] == _native.kernel_variants()[-1]
    assert chosen["packed"] == _native.packed_kernel_variants()[-1]
    assert chosen["seer_conv"] == _native.seer_conv_kernel_variants()[-1]


def test_scalar_override_runs_the_reference_kernels_with_the_same_results(default):
    best, _ = default
    chosen, stderr = run_native(TFQUANT_KERNELS="scalar")
    assert (chosen["level"], chosen["fake_quant"], chosen["packed"]) == ("scalar",) * 3
    assert chosen["warning"] == "" and "tfquant: warning" not in stderr
    for key in ("y", "y_tensor", "dx", "matmul"):
        assert chosen[key] == best[key], key  # bit-identical to the best level's kernels


@pytest.mark.parametrize("level", LEVELS)
def test_every_family_takes_its_best_table_at_or_below_the_cap(level, default):
    chosen, stderr = run_native(TFQUANT_KERNELS=level)
    assert chosen["level"] == level and chosen["warning"] == "" and "warning" not in stderr
    assert chosen["fake_quant"] == best_at_most(_native.kernel_variants(), level)
    assert chosen["packed"] == best_at_most(_native.packed_kernel_variants(), level)
    assert chosen["seer_conv"] == best_at_most(_native.seer_conv_kernel_variants(), level)
    for key in ("y", "y_tensor", "dx", "matmul"):
        assert chosen[key] == default[0][key], key


OTHER_ARCH = "neon" if "neon" not in LEVELS else "avx2"


UNKNOWN = "is not an ISA level (known: " + ", ".join(ALL_LEVELS) + ", auto)"


@pytest.mark.parametrize("value,reason", [
    ("sse9", UNKNOWN),
    ("AVX2", UNKNOWN),  # names are exact
    (OTHER_ARCH, "is not supported by this CPU/OS"),
])
def test_a_value_it_cannot_use_gives_one_warning_and_the_best_level(value, reason, default):
    chosen, stderr = run_native(TFQUANT_KERNELS=value)
    assert chosen["warning"] == (f"TFQUANT_KERNELS={value} {reason}; supported here: "
                                 f"{', '.join(LEVELS)}. Using {LEVELS[-1]}.")
    assert stderr.count("tfquant: warning: ") == 1  # one library loaded, one warning
    assert f"tfquant: warning: {chosen['warning']}" in stderr
    assert chosen["requested"] == value
    # Ignored, not an error: the kernels are those of an unset variable.
    assert {k: chosen[k] for k in default[0] if k not in ("warning", "requested")} == {
        k: default[0][k] for k in default[0] if k not in ("warning", "requested")}


@pytest.mark.parametrize("value", ["", "auto"])
def test_empty_and_auto_mean_unset(value, default):
    chosen, stderr = run_native(TFQUANT_KERNELS=value)
    assert chosen["level"] == LEVELS[-1] and chosen["warning"] == "" and "warning" not in stderr


def test_the_older_packed_variable_caps_only_the_packed_kernels_and_wins_there():
    chosen, _ = run_native(TFQUANT_PACKED_KERNELS="scalar")
    assert chosen["packed"] == "scalar" and chosen["fake_quant"] == _native.kernel_variants()[-1]
    chosen, _ = run_native(TFQUANT_KERNELS="scalar", TFQUANT_PACKED_KERNELS=LEVELS[-1])
    assert chosen["fake_quant"] == chosen["seer_conv"] == "scalar"
    assert chosen["packed"] == _native.packed_kernel_variants()[-1]
    chosen, stderr = run_native(TFQUANT_PACKED_KERNELS="sse9")
    assert "tfquant: warning: TFQUANT_PACKED_KERNELS=sse9 is not an ISA level" in stderr
    assert chosen["packed"] == _native.packed_kernel_variants()[-1]
    assert chosen["seer_conv"] == _native.seer_conv_kernel_variants()[-1]


# The TF op library and the delegate link their own copy of the dispatcher.
OP_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from tfquant import _native
    from tfquant.ops import _library
    ops = _library.load_op_library()
    rng = np.random.default_rng(11)
    q = rng.integers(-2, 2, (128, 48)).astype(np.int8)
    packed = _native.pack_weights(q, 2)
    scales = rng.uniform(0.01, 0.1, (1, 48)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    x = rng.standard_normal((70, 128)).astype(np.float32)
    y = ops.tfquant_packed_matmul(x, packed, scales, bias, bits=2, n=48, has_bias=True)
    for variant in _native.packed_kernel_variants():
        assert y.numpy().tobytes() == _native.packed_matmul(
            x, packed, scales, bias, 2, 48, 0, variant=variant).tobytes(), variant
    print("packed", _native.packed_kernel_variant())
""")


def test_tf_packed_matmul_op_under_the_scalar_override():
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(TFQUANT_KERNELS="scalar", TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "-c", OP_SCRIPT], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "packed scalar"


DELEGATE_SCRIPT = textwrap.dedent("""
    import ctypes, sys
    lib = ctypes.CDLL(sys.argv[1])
    lib.tflite_plugin_create_delegate.restype = ctypes.c_void_p
    lib.tflite_plugin_create_delegate.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.tfquant_delegate_kernels.restype = ctypes.c_char_p
    lib.tfquant_delegate_kernels.argtypes = [ctypes.c_void_p]
    lib.tflite_plugin_destroy_delegate.argtypes = [ctypes.c_void_p]
    delegate = lib.tflite_plugin_create_delegate(None, None, 0, None)
    print(lib.tfquant_delegate_kernels(delegate).decode())
    lib.tflite_plugin_destroy_delegate(delegate)
""")


@pytest.mark.parametrize("env_values,expected", [
    ({}, _native.packed_kernel_variants()[-1]),
    ({"TFQUANT_KERNELS": "scalar"}, "scalar"),
    ({"TFQUANT_KERNELS": "sse9"}, _native.packed_kernel_variants()[-1]),
])
def test_delegate_default_kernels_follow_the_same_dispatcher(env_values, expected):
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(env_values)
    p = subprocess.run([sys.executable, "-c", DELEGATE_SCRIPT, library("_tfquant_delegate*.so")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == expected
    assert ("tfquant: warning: TFQUANT_KERNELS=sse9" in p.stderr) == ("sse9" in env_values.values())
