"""Every fake-quant kernel variant this machine runs (avx2, avx512, neon) against
the scalar one, in one process through tfquant._native's `variant=` argument,
plus the TFQUANT_KERNELS override in subprocesses.

Contract (cc_ops/kernels/fake_quant.h): y and dx bit-identical, NaN/Inf included;
dmin/dmax are sums of the same float terms in double, in another order, so they
agree to ~1 ulp of float (NaN where the scalar kernel gives NaN).
"""

import glob
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfquant import _native
from fake_quant_inputs import random_inputs, unit_range

# Every variant this machine runs, scalar included (scalar vs scalar is a trivial check,
# so a scalar-only machine still runs every test).
VARIANTS = list(_native.kernel_variants())
MODES = ["clipped", "learned"]


def cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_supported_variants_follow_the_cpu():
    variants = _native.kernel_variants()
    assert variants[0] == "scalar"
    flags = cpuinfo_flags()
    if "avx2" in flags and "fma" in flags:
        assert "avx2" in variants
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        assert "avx512" in variants
        # The best one is used unless TFQUANT_KERNELS says otherwise.
        if not os.environ.get("TFQUANT_KERNELS"):
            assert _native.kernel_variant() == "avx512"
    assert _native.kernel_variant() in variants


def test_unsupported_variant_is_a_value_error():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"kernel variant 'sse9' is not supported here; supported: scalar"):
        _native.fake_quant_reference(x, -1.0, 1.0, variant="sse9")
    with pytest.raises(ValueError, match=r"supported: scalar"):
        _native.fake_quant_grad_reference(x, x, -1.0, 1.0, variant="sse9")


# ---------------------------------------------------------------- comparisons

def run(variant, dy, x, mn, mx, num_bits, narrow, axis, mode):
    y = _native.fake_quant_reference(x, mn, mx, num_bits, narrow, axis, variant=variant)
    g = _native.fake_quant_grad_reference(dy, x, mn, mx, num_bits, narrow, axis,
                                          range_gradient=mode, variant=variant)
    return (y,) + tuple(g)


def channel_abs_sum(dy, axis, shape_of_min):
    a = np.abs(dy.astype(np.float64))
    if axis is None:
        return np.sum(a).reshape(shape_of_min)
    return np.sum(np.moveaxis(a, axis, 0).reshape(dy.shape[axis], -1), axis=1)


def assert_variant_matches_scalar(variant, dy, x, mn, mx, num_bits, narrow, axis, mode, ctx=""):
    y, dx, dmin, dmax = run(variant, dy, x, mn, mx, num_bits, narrow, axis, mode)
    y0, dx0, dmin0, dmax0 = run("scalar", dy, x, mn, mx, num_bits, narrow, axis, mode)
    ctx = f"[{variant} {mode} shape {x.shape} bits {num_bits} narrow {narrow} axis {axis}] {ctx}"
    for name, a, b in (("y", y, y0), ("dx", dx, dx0)):
        if a.tobytes() != b.tobytes():
            bad = np.flatnonzero(a.view(np.uint32) != b.view(np.uint32))
            i = np.unravel_index(bad[0], a.shape)
            raise AssertionError(f"{name} differs at {len(bad)} elements, first {i}: "
                                 f"{a[i]!r} vs scalar {b[i]!r} (x={x[i]!r}) {ctx}")
    # The same float terms summed in double in another order.
    with np.errstate(invalid="ignore"):
        atol = 1e-9 * channel_abs_sum(dy, axis, np.shape(mn))
    for name, a, b in (("dmin", dmin, dmin0), ("dmax", dmax, dmax0)):
        assert a.shape == b.shape, ctx
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name} NaN positions {ctx}"
        with np.errstate(invalid="ignore"):  # inf - inf
            ok = np.isnan(b) | (a == b) | (np.abs(a - b) <= atol + 2e-7 * np.abs(b))
        assert ok.all(), f"{name}: {a[~ok]} vs scalar {b[~ok]} {ctx}"


def grid_inputs(rng, shape, lo, hi, num_bits):
    """Uniform around [lo, hi] and many values on rounding ties and range ends."""
    return random_inputs(rng, shape, lo, hi, num_bits, ties=0.3, ends=True)


def random_ranges(rng, n):
    lo = -rng.uniform(0.0, 3.0, n)
    hi = rng.uniform(0.0, 3.0, n)
    kind = rng.random(n)
    lo = np.where(kind < 0.1, 0.0, lo)                  # zero at the low end
    hi = np.where((kind > 0.1) & (kind < 0.2), 0.0, hi)  # zero at the high end
    positive = (kind > 0.2) & (kind < 0.3)              # range not containing 0
    shift = rng.uniform(3.1, 5.0, n)
    lo, hi = np.where(positive, lo + shift, lo), np.where(positive, hi + shift, hi)
    zero = kind > 0.92                                   # min == max == 0
    lo, hi = np.where(zero, 0.0, lo), np.where(zero, 0.0, hi)
    return lo.astype(np.float32), hi.astype(np.float32)


# Lengths around the vector widths (4, 8, 16) and the unroll (2x).
TAIL_DIMS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 64, 65]


def random_case(rng):
    rank = int(rng.integers(1, 5))
    shape = tuple(int(rng.choice(TAIL_DIMS)) if rng.random() < 0.7 else int(rng.integers(1, 40))
                  for _ in range(rank))
    num_bits = int(rng.integers(2, 17))
    narrow = bool(rng.random() < 0.5)
    if rng.random() < 0.35:
        axis = None
        mn, mx = (a[0] for a in random_ranges(rng, 1))
        mn, mx = np.float32(mn), np.float32(mx)
        lo, hi = mn, mx
    else:
        # Channels last half the time: the strided kernels.
        axis = -1 if rng.random() < 0.5 else int(rng.integers(-rank, rank))
        mn, mx = random_ranges(rng, shape[axis])
        bshape = [1] * rank
        bshape[axis] = shape[axis]
        lo, hi = mn.reshape(bshape), mx.reshape(bshape)
    x = grid_inputs(rng, shape, lo, hi, num_bits)
    dy = rng.standard_normal(shape).astype(np.float32)
    return dy, x, mn, mx, num_bits, narrow, axis


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_random_shapes_match_scalar(variant, mode, seed):
    rng = np.random.default_rng(seed * 7919 + len(variant) + len(mode))
    for case in range(250):
        dy, x, mn, mx, num_bits, narrow, axis = random_case(rng)
        assert_variant_matches_scalar(variant, dy, x, mn, mx, num_bits, narrow, axis, mode,
                                      f"case {case}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_bits", [2, 3, 4, 7, 8, 12, 16])
@pytest.mark.parametrize("narrow", [False, True])
def test_every_bit_width_matches_scalar(variant, mode, num_bits, narrow):
    rng = np.random.default_rng(num_bits)
    for shape, axis in (((1001,), None), ((13, 37), -1), ((6, 5, 19), 1)):
        if axis is None:
            mn, mx = np.float32(-0.7), np.float32(1.9)
            lo, hi = mn, mx
        else:
            mn, mx = random_ranges(rng, shape[axis])
            bshape = [1] * len(shape)
            bshape[axis] = shape[axis]
            lo, hi = mn.reshape(bshape), mx.reshape(bshape)
        x = grid_inputs(rng, shape, lo, hi, num_bits)
        dy = rng.standard_normal(shape).astype(np.float32)
        assert_variant_matches_scalar(variant, dy, x, mn, mx, num_bits, narrow, axis, mode)


@pytest.mark.parametrize("variant", VARIANTS)
def test_per_tensor_division_matches_scalar_at_every_scale(variant):
    # The SIMD per-tensor forward divides by the scale with multiply-adds (exact for
    # scales in [2^-60, 2^60], a real division outside): same bits as the scalar
    # division, also at rounding midpoints and at both ends of that interval.
    rng = np.random.default_rng(5)
    for exponent in [-75, -61, -60, -59, -40, -12, -1, 0, 3, 20, 59, 60, 61, 70]:
        for num_bits in (2, 8, 16):
            width = np.float32(2.0 ** exponent * rng.uniform(1.0, 2.0) * (2 ** num_bits - 1))
            lo = np.float32(-width * rng.uniform(0.0, 1.0))
            hi = np.float32(lo + width)
            x = grid_inputs(rng, (4099,), lo, hi, num_bits)
            step = rng.choice([-np.inf, np.nan, np.inf], x.shape)  # nan: stay on the tie
            x = np.where(np.isnan(step), x, np.nextafter(x, step)).astype(np.float32)
            got = _native.fake_quant_reference(x, lo, hi, num_bits=num_bits, variant=variant)
            want = _native.fake_quant_reference(x, lo, hi, num_bits=num_bits,
                                                variant="scalar")
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32),
                                          err_msg=f"2^{exponent}, {num_bits} bits")


@pytest.mark.parametrize("variant", VARIANTS)
def test_clipped_range_gradient_sees_a_single_outlier_or_non_finite_dy(variant):
    # The clipped gradient skips vectors whose range-gradient terms are all zero;
    # one element outside the range, or one NaN/Inf dy, anywhere, must still count.
    n = 1001
    for position in (0, 15, 16, 31, 500, 999, 1000):
        for x_value, dy_value in ((-3.0, 0.5), (3.0, -2.0), (0.25, np.nan),
                                  (0.25, np.inf), (np.nan, 1.0)):
            x = np.linspace(-0.9, 0.9, n).astype(np.float32)
            dy = np.ones(n, np.float32)
            x[position], dy[position] = x_value, dy_value
            assert_variant_matches_scalar(variant, dy, x, np.float32(-1), np.float32(1), 8,
                                          False, None, "clipped", f"at {position}")


SPECIALS = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1e30, -1e30, 1e-40, -1e-40,
                     3.4e38, -3.4e38], np.float32)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,axis", [((53,), None), ((9, 23), -1), ((9, 23), 0),
                                        ((4, 17, 3), 1), ((200, 33), -1)])
def test_non_finite_inputs_and_gradients_match_scalar(variant, mode, shape, axis):
    rng = np.random.default_rng(17)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    flat = x.reshape(-1)
    pos = rng.choice(flat.size, size=min(flat.size, 3 * len(SPECIALS)), replace=False)
    flat[pos] = np.resize(SPECIALS, len(pos))
    if axis is None:
        mn, mx = np.float32(-1.5), np.float32(1.0)
    else:
        mn, mx = random_ranges(rng, shape[axis])
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_variant_matches_scalar(variant, dy, x, mn, mx, 8, False, axis, mode, "finite dy")
    # NaN/Inf in dy: dx bits and NaN range gradients must match too.
    dflat = dy.reshape(-1)
    dpos = rng.choice(dflat.size, size=min(dflat.size, 4), replace=False)
    dflat[dpos] = np.resize(np.array([np.nan, np.inf, -np.inf, -0.0], np.float32), len(dpos))
    assert_variant_matches_scalar(variant, dy, x, mn, mx, 8, False, axis, mode, "non-finite dy")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_zero_and_degenerate_ranges_match_scalar(variant, mode):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((21, 40)) * 2).astype(np.float32)
    x[0, :6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    mn = np.zeros(40, np.float32)
    mx = np.zeros(40, np.float32)
    mx[1::3] = 1.0   # ranges starting at zero
    mn[2::3] = 1.0   # min == max != 0: scale 0, NaN as in TF
    mx[2::3] = 1.0
    for axis in (-1,):
        assert_variant_matches_scalar(variant, dy, x, mn, mx, 8, False, axis, mode)
    assert_variant_matches_scalar(variant, dy.T.copy(), x.T.copy(), mn, mx, 8, True, 0, mode)
    for lo, hi in ((0.0, 0.0), (1.0, 1.0), (0.0, 1e-38), (-1e-30, 1e-30)):
        assert_variant_matches_scalar(variant, dy, x, np.float32(lo), np.float32(hi), 8, False,
                                      None, mode, f"range [{lo}, {hi}]")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape,axis", [((0,), None), ((3, 0), None), ((3, 0), -1),
                                        ((0, 5), -1), ((0, 5), 0), ((2, 0, 7), 1)])
def test_empty_tensors_give_empty_outputs_and_zero_range_gradients(variant, shape, axis):
    x = np.zeros(shape, np.float32)
    mn, mx = unit_range(shape, axis)
    for mode in MODES:
        y, dx, dmin, dmax = run(variant, x, x, mn, mx, 8, False, axis, mode)
        assert y.shape == dx.shape == shape
        assert not dmin.any() and not dmax.any()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,axis", [((3, 100_000), -1), ((2, 100_000, 3), 1),
                                        ((100_000, 2), 0)])
def test_huge_channel_counts_match_scalar(variant, mode, shape, axis):
    rng = np.random.default_rng(23)
    mn, mx = random_ranges(rng, shape[axis])
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    x = grid_inputs(rng, shape, mn.reshape(bshape), mx.reshape(bshape), 4)
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_variant_matches_scalar(variant, dy, x, mn, mx, 4, True, axis, mode)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,axis", [((70_001,), None), ((6, 33_000), None), ((3, 40_000), 0),
                                        ((40_000, 3), 1), ((2, 9, 9, 700), -1), ((64, 9, 65), 1)])
def test_multi_tile_tensors_match_scalar(variant, mode, shape, axis):
    rng = np.random.default_rng(29)
    if axis is None:
        mn, mx, lo, hi = np.float32(-1.3), np.float32(2.1), np.float32(-1.3), np.float32(2.1)
    else:
        mn, mx = random_ranges(rng, shape[axis])
        bshape = [1] * len(shape)
        bshape[axis] = shape[axis]
        lo, hi = mn.reshape(bshape), mx.reshape(bshape)
    x = grid_inputs(rng, shape, lo, hi, 8)
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_variant_matches_scalar(variant, dy, x, mn, mx, 8, False, axis, mode)


# ---------------------------------------------------------------- TFQUANT_KERNELS

def native_module_path():
    paths = glob.glob(os.path.join(os.path.dirname(_native.__file__), "_native*.so"))
    assert paths, "tfquant/_native*.so not found"
    return paths[0]


# Loads only the pybind module (no TensorFlow import), prints what it chose.
CHOICE_SCRIPT = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("_native", sys.argv[1])
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    info = m.build_info()
    print(m.kernel_variant(), "|", info["kernels_warning"])
""")


def kernel_choice(value):
    env = dict(os.environ)
    env.pop("TFQUANT_KERNELS", None)
    if value is not None:
        env["TFQUANT_KERNELS"] = value
    p = subprocess.run([sys.executable, "-c", CHOICE_SCRIPT, native_module_path()],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    chosen, warning = (s.strip() for s in p.stdout.strip().split("|", 1))
    return chosen, warning, p.stderr


def test_env_var_unset_picks_the_best():
    chosen, warning, stderr = kernel_choice(None)
    assert chosen == _native.kernel_variants()[-1] and warning == "" and "tfquant" not in stderr


@pytest.mark.parametrize("variant", _native.kernel_variants())
def test_env_var_forces_a_supported_variant(variant):
    chosen, warning, stderr = kernel_choice(variant)
    assert chosen == variant and warning == "" and "tfquant: warning" not in stderr


OTHER_ISA = "neon" if platform.machine().lower() in ("x86_64", "amd64") else "avx2"


@pytest.mark.parametrize("value,match", [("sse9", "is not an ISA level"),
                                         (OTHER_ISA, "is not supported by this CPU/OS")])
def test_env_var_unsupported_variant_warns_and_says_which_are(value, match):
    # The warning speaks of ISA levels (cc_ops/kernels/isa_dispatch.h), shared by
    # every kernel family; the fake-quant kernels then take their best variant.
    assert value not in _native.isa_levels()  # the premise of this test
    chosen, warning, stderr = kernel_choice(value)
    assert chosen == _native.kernel_variants()[-1]
    levels = _native.isa_levels()
    assert match in warning and f"supported here: {', '.join(levels)}. Using {levels[-1]}." in warning
    assert f"tfquant: warning: TFQUANT_KERNELS={value} is" in stderr


OP_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from tfquant import _native
    from tfquant.ops import fake_quant, _library
    assert _native.kernel_variant() == sys.argv[1], _native.kernel_variant()
    ops = _library.load_op_library()
    rng = np.random.default_rng(3)
    for shape, axis in (((64, 9, 9, 67), -1), ((5, 67, 41), 1), ((100_003,), None)):
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        c = 1 if axis is None else shape[axis]
        mn = -rng.uniform(0.1, 2, c).astype(np.float32)
        mx = rng.uniform(0.1, 2, c).astype(np.float32)
        if axis is None:
            mn, mx = mn[0], mx[0]
        y = fake_quant(x, mn, mx, num_bits=5, axis=axis).numpy()
        assert y.tobytes() == _native.fake_quant_reference(
            x, mn, mx, 5, False, axis, variant="scalar").tobytes()
        for mode in ("clipped", "learned"):
            got = ops.tfquant_fake_quant_grad(dy, x, mn, mx, num_bits=5,
                                              axis=-1 if axis is None else axis,
                                              range_gradient=mode)
            # The op's pool and the serial numpy path use the same tiles: same bits.
            ref = _native.fake_quant_grad_reference(dy, x, mn, mx, 5, False, axis, mode)
            for g, r in zip(got, ref):
                assert g.numpy().tobytes() == r.tobytes()
    print("ok")
""")


@pytest.mark.parametrize("variant", _native.kernel_variants())
def test_tf_op_runs_the_forced_variant(variant):
    env = dict(os.environ, TFQUANT_KERNELS=variant, TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "-c", OP_SCRIPT, variant], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]
