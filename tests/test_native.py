"""tfquant._native (CPU features, build info, numpy kernels) and the loader's
build check."""

import platform

import numpy as np
import pytest
import tensorflow as tf

from tfquant import _native
from tfquant.ops import _library
from tfquant.ops import fake_quant

FEATURE_KEYS = {"sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512dq", "avx512_vnni", "avx_vnni", "neon"}
X86_KEYS = FEATURE_KEYS - {"neon"}


def cpuinfo_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


def test_cpu_features_has_the_known_keys_with_bool_values():
    features = _native.cpu_features()
    assert set(features) == FEATURE_KEYS
    assert all(isinstance(v, bool) for v in features.values())


def test_cpu_features_agree_with_proc_cpuinfo():
    # The kernel lists a flag only if the CPU has it and the OS enabled its
    # register state, which is what cpu_features() checks too.
    features = _native.cpu_features()
    flags = cpuinfo_flags()
    if platform.machine() in ("x86_64", "AMD64", "i686"):
        for key in X86_KEYS:
            assert features[key] == (key in flags), key
        assert not features["neon"]
    else:
        assert not any(features[k] for k in X86_KEYS)
        if platform.machine() == "aarch64":
            assert features["neon"]


def test_this_machine_reports_avx2_and_avx512f_as_cpuinfo_does():
    flags = cpuinfo_flags()
    features = _native.cpu_features()
    assert features["avx2"] == ("avx2" in flags)
    assert features["avx512f"] == ("avx512f" in flags)


def test_build_info_reports_the_tf_abi_flags_and_kernels_in_use():
    info = _native.build_info()
    assert info["tf_version"] == tf.__version__
    assert info["compiler"] and info["compiler"] != "unknown"
    tf_abi = [f for f in tf.sysconfig.get_compile_flags() if f.startswith("-D_GLIBCXX_USE_CXX11_ABI=")]
    assert info["glibcxx_use_cxx11_abi"] == int(tf_abi[0].split("=")[1])
    assert info["cxx_standard"] >= 201703
    for flag in ("-O3", "-ffp-contract=off", "-fPIC", "-std=c++17"):
        assert flag in info["flags"].split()
    assert info["kernels"] == _native.kernel_variant()
    assert info["kernels"] in info["kernel_variants"] == _native.kernel_variants()


# ---------------------------------------------------------------- numpy kernels

REFERENCE_CASES = [
    ((5, 7), None, 8, False),
    ((3, 4, 5), 0, 4, True),
    ((3, 4, 5), 1, 16, False),
    ((3, 4, 5), -1, 2, True),
    ((2, 3, 1, 6), 2, 7, False),
    ((50_000,), None, 8, True),
    ((40_000, 3), 1, 8, False),
]


def make_case(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    if axis is None:
        return x, np.float32(-1.1), np.float32(1.7)
    c = shape[axis]
    mn = -rng.uniform(0.1, 2, c).astype(np.float32)
    mx = rng.uniform(0.1, 2, c).astype(np.float32)
    mn[0] = mx[0] = 0.0
    return x, mn, mx


@pytest.mark.parametrize("shape,axis,num_bits,narrow", REFERENCE_CASES)
def test_fake_quant_reference_equals_tf_op(shape, axis, num_bits, narrow):
    x, mn, mx = make_case(shape, axis)
    ref = _native.fake_quant_reference(x, mn, mx, num_bits, narrow, axis)
    assert ref.dtype == np.float32 and ref.shape == x.shape
    ours = fake_quant(x, mn, mx, num_bits=num_bits, narrow_range=narrow, axis=axis).numpy()
    assert ref.tobytes() == ours.tobytes()
    if axis is None:
        tf_ref = tf.quantization.fake_quant_with_min_max_vars(x, mn, mx, num_bits, narrow)
    else:
        tf_ref = np.moveaxis(tf.quantization.fake_quant_with_min_max_vars_per_channel(
            np.moveaxis(x, axis, -1), mn, mx, num_bits, narrow).numpy(), -1, axis)
    assert ref.tobytes() == np.asarray(tf_ref).tobytes()


@pytest.mark.parametrize("range_gradient", ["clipped", "learned"])
@pytest.mark.parametrize("shape,axis,num_bits,narrow", REFERENCE_CASES)
def test_grad_reference_equals_tf_op_bitwise(shape, axis, num_bits, narrow, range_gradient):
    # Same tiles, same reduction order: serial numpy == thread-pool op.
    x, mn, mx = make_case(shape, axis)
    dy = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = _native.fake_quant_grad_reference(dy, x, mn, mx, num_bits, narrow, axis,
                                            range_gradient=range_gradient)
    ops = _library.load_op_library()
    ours = ops.tfquant_fake_quant_grad(dy, x, mn, mx, num_bits=num_bits, narrow_range=narrow,
                                       axis=-1 if axis is None else axis,
                                       range_gradient=range_gradient)
    for r, o in zip(ref, ours):
        assert r.shape == o.shape
        assert r.tobytes() == o.numpy().tobytes()


def test_reference_accepts_other_dtypes_and_layouts():
    x = np.asfortranarray(np.linspace(-2, 2, 12).reshape(3, 4))  # float64, F order
    y = _native.fake_quant_reference(x, -1.0, 1.0)
    expected = tf.quantization.fake_quant_with_min_max_vars(x.astype(np.float32), -1.0, 1.0)
    np.testing.assert_array_equal(y, expected.numpy())


@pytest.mark.parametrize("args,kwargs,match", [
    ((-1.0, 1.0), dict(num_bits=1), r"num_bits = 1 .*2\.\.16"),
    ((1.0, -1.0), {}, r"min = 1 is greater than max = -1"),
    ((np.nan, 1.0), {}, r"min = nan is not finite"),
    ((np.zeros(4), np.ones(4)), dict(axis=3), r"axis = 3 is out of range .*-2\.\.1"),
    ((np.zeros(5), np.ones(5)), dict(axis=1), r"min has 5 elements"),
    ((np.zeros(4), np.ones(4)), {}, r"axis=None means per-tensor"),
    ((-1.0, 1.0), dict(axis=0), r"axis=0 means per-channel"),
])
def test_reference_raises_value_error_naming_the_value(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _native.fake_quant_reference(np.zeros((3, 4), np.float32), *args, **kwargs)


# ---------------------------------------------------------------- loader

def test_check_build_accepts_only_the_installed_version():
    _library.check_build("2.21.0", "2.21.0")  # raises nothing
    for built_for in ("2.20.0", "2.21.1", None, ""):
        with pytest.raises(ImportError, match="Rebuild"):
            _library.check_build(built_for, "2.21.0")


def test_check_build_message_for_other_version():
    with pytest.raises(ImportError) as info:
        _library.check_build("2.20.0", "2.21.0")
    msg = str(info.value)
    assert "built for TensorFlow 2.20.0" in msg
    assert "TensorFlow 2.21.0 is installed" in msg
    assert "pip install --no-build-isolation -e ." in msg
    assert "make test" in msg and "make demo" in msg


def test_check_build_message_for_unknown_version():
    with pytest.raises(ImportError, match=r"built for an unknown TensorFlow version, but TensorFlow 2\.21\.0"):
        _library.check_build(None, "2.21.0")


def test_installed_build_matches_and_library_is_cached():
    _library.check_build(_native.build_info()["tf_version"], tf.__version__)
    assert _library.load_op_library() is _library.load_op_library()


def test_grad_reference_rejects_unknown_range_gradient():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"range_gradient = 'lsq' .*'clipped' and 'learned'"):
        _native.fake_quant_grad_reference(x, x, -1.0, 1.0, range_gradient="lsq")
