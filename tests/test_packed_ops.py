"""Packed 2/4-bit weights (cc_ops/kernels/packed.h): pack/unpack, the packed matmul
against a float reference, every SIMD variant against the scalar one (bit-identical,
in one process through tfquant._native), and the TF ops' argument errors."""

import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant import _native
from tfquant.ops import packed as packed_ops

VARIANTS = [v for v in _native.packed_kernel_variants() if v != "scalar"]
RNG = np.random.default_rng(1234)


def random_q(k, n, bits, rng=RNG):
    lo = -(1 << (bits - 1))
    return rng.integers(lo, -lo, (k, n)).astype(np.int8)


def test_variants_follow_the_cpu():
    variants = _native.packed_kernel_variants()
    assert variants[0] == "scalar"
    flags = open("/proc/cpuinfo").read()
    if " avx512_vnni" in flags and " avx512bw" in flags:
        assert "avx512vnni" in variants
        assert _native.packed_kernel_variant() == "avx512vnni"
    if " avx2" in flags:
        assert "avx2" in variants


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("k, n", [(1, 1), (7, 3), (8, 16), (33, 17), (64, 50), (100, 129)])
def test_unpack_inverts_pack_in_native_and_tf_ops(bits, k, n):
    q = random_q(k, n, bits)
    packed = _native.pack_weights(q, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_ops.packed_size(k, n, bits)
    np.testing.assert_array_equal(_native.unpack_weights(packed, bits, k, n), q)
    packed_tf = tfquant.ops.pack_weights(q, bits)
    np.testing.assert_array_equal(packed_tf.numpy(), packed)
    np.testing.assert_array_equal(tfquant.ops.unpack_weights(packed_tf, bits, k, n).numpy(), q)


def test_layout_is_the_documented_one():
    # 4-bit: byte j of tile 0 holds u[k=j%4, n=j//4] (low nibble) and u[k=4+j%4, n=j//4].
    q = np.zeros((8, 16), np.int8)
    q[1, 2] = 3   # byte 2*4+1 low nibble: 3+8 = 11
    q[5, 2] = -8  # same byte, high nibble: 0
    q[0, 0] = 7   # byte 0 low nibble 15
    packed = _native.pack_weights(q, 4)
    assert packed.size == 64
    assert packed[9] == 11 and packed[0] == (8 << 4) | 15 and packed[1] == 0x88
    q2 = np.zeros((16, 16), np.int8)
    q2[13, 1] = 1  # 2-bit: field 3 (k // 4) of byte 1*4 + 1: u = 3
    packed2 = _native.pack_weights(q2, 2)
    assert packed2[5] == (3 << 6) | 0b101010


def reference(x, q, scales, bias, group_size):
    k, n = q.shape
    groups = scales.reshape(-1, n).shape[0]
    w = (q.astype(np.float64).reshape(groups, k // groups, n)
         * scales.reshape(groups, 1, n)).reshape(k, n)
    y = x.astype(np.float64) @ w
    return y + bias if bias is not None else y, w


CASES = [  # m, k, n, group_size
    (1, 64, 16, 0), (1, 4096, 48, 0), (2, 5, 3, 0), (3, 77, 33, 0), (4, 96, 40, 32),
    (5, 256, 50, 32), (6, 256, 64, 64), (9, 256, 40, 128), (13, 130, 31, 0), (1, 128, 17, 128),
]


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("m, k, n, group_size", CASES)
def test_matmul_matches_float_reference_and_every_variant_is_bit_identical(bits, m, k, n,
                                                                           group_size):
    rng = np.random.default_rng(m * 1000 + k + n + bits)
    q = random_q(k, n, bits, rng)
    groups = 1 if group_size == 0 else k // group_size
    scales = rng.uniform(0.01, 0.1, (groups, n)).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    x = rng.normal(size=(m, k)).astype(np.float32)
    x[0, 0] = 5.0  # an outlier sets the row scale
    packed = _native.pack_weights(q, bits)
    y0 = _native.packed_matmul(x, packed, scales, bias, bits, n, group_size, variant="scalar")
    ref, w = reference(x, q, scales, bias, group_size)
    # Dynamic int8 activations: |error| <= 0.5 * s_row * sum_k |w[k, n]| (+ float rounding).
    s_row = np.abs(x).max(1, keepdims=True) / 127
    bound = 0.5 * s_row * np.abs(w).sum(0, keepdims=True) + 1e-4 * (1 + np.abs(ref))
    assert np.all(np.abs(y0 - ref) <= bound)
    for variant in VARIANTS:
        y = _native.packed_matmul(x, packed, scales, bias, bits, n, group_size, variant=variant)
        assert y.tobytes() == y0.tobytes(), (variant, np.abs(y - y0).max())
    # The TF op (threaded) gives the same bits; no bias too.
    y_tf = tfquant.ops.packed_matmul(x, packed, scales, bias, bits=bits, n=n,
                                     group_size=group_size).numpy()
    assert y_tf.tobytes() == y0.tobytes()
    y_nb = tfquant.ops.packed_matmul(x, packed, scales, bits=bits, group_size=group_size).numpy()
    np.testing.assert_array_equal(y_nb + bias, y0)


# Row counts around the AVX-512 register block (4 rows) and the op's 64-row tasks, column
# counts around its 4-block micro-kernel, K past the GEMV's overflow flush (2048 tiles:
# 16384 k at 4 bits, 32768 at 2 bits), groups.
PATH_CASES = [  # m, k, n, group_size
    (1, 16400, 20, 0), (1, 33000, 20, 0), (3, 16400, 17, 0), (1, 512, 80, 64),
    (2, 128, 65, 32), (4, 64, 64, 0), (5, 96, 70, 32), (7, 40, 33, 0), (8, 256, 129, 128),
    (63, 64, 40, 0), (65, 96, 50, 32),
]


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("m, k, n, group_size", PATH_CASES)
def test_every_kernel_path_is_bit_identical_to_scalar(bits, m, k, n, group_size):
    rng = np.random.default_rng(m * 7 + k + n + bits)
    q = random_q(k, n, bits, rng)
    groups = 1 if group_size == 0 else k // group_size
    scales = rng.uniform(-0.1, 0.1, (groups, n)).astype(np.float32)
    x = rng.normal(size=(m, k)).astype(np.float32)
    packed = _native.pack_weights(q, bits)
    y0 = _native.packed_matmul(x, packed, scales, None, bits, n, group_size, variant="scalar")
    for variant in VARIANTS:
        y = _native.packed_matmul(x, packed, scales, None, bits, n, group_size, variant=variant)
        assert y.tobytes() == y0.tobytes(), variant
    y_tf = tfquant.ops.packed_matmul(x, packed, scales, bits=bits, group_size=group_size)
    assert y_tf.numpy().tobytes() == y0.tobytes()


def test_activation_quantization_of_special_values_is_the_same_in_every_variant():
    # Row scale from NaN / inf / zero rows, exact .5 ties (round half to even), values that
    # clip at ±127, and a K with a SIMD tail. With q = identity, y[m, n] = xq[m, n] * xs[m],
    # so any difference in xq or xs shows.
    k = n = 37
    x = np.random.default_rng(3).normal(size=(6, k)).astype(np.float32)
    x[0, 3], x[0, 5] = np.nan, 4.0
    x[1, 2] = np.inf
    x[2] = 0.0
    x[3] = np.concatenate([[127.0], np.arange(-18, 18) + 0.5])  # scale 1, all ties
    x[4, :] = -1e30
    x[4, 0] = 2e30
    x[5, 1:] = np.nan
    q = np.eye(k, dtype=np.int8)
    packed = _native.pack_weights(q, 4)
    scales = np.ones((1, n), np.float32)
    y0 = _native.packed_matmul(x, packed, scales, None, 4, n, 0, variant="scalar")
    assert np.isfinite(y0).all()
    assert y0[2].tolist() == [0.0] * n
    for variant in VARIANTS:
        y = _native.packed_matmul(x, packed, scales, None, 4, n, 0, variant=variant)
        assert y.tobytes() == y0.tobytes(), variant
    np.testing.assert_array_equal(y0[3], np.round(x[3]))  # numpy rounds half to even
    y_tf = tfquant.ops.packed_matmul(x, packed, scales).numpy()
    assert y_tf.tobytes() == y0.tobytes()


def test_large_threaded_gemm_matches_scalar_and_batch_dims_work():
    rng = np.random.default_rng(5)
    m, k, n = 70, 512, 300
    q = random_q(k, n, 4, rng)
    scales = rng.uniform(0.01, 0.1, (k // 64, n)).astype(np.float32)
    x = rng.normal(size=(m, k)).astype(np.float32)
    packed = _native.pack_weights(q, 4)
    y0 = _native.packed_matmul(x, packed, scales, None, 4, n, 64, variant="scalar")
    y = tfquant.ops.packed_matmul(x.reshape(7, 10, k), packed, scales, group_size=64).numpy()
    assert y.shape == (7, 10, n)
    assert y.reshape(m, n).tobytes() == y0.tobytes()
    # Enough rows that the op quantizes them on several threads, in 64-row tasks.
    x2 = rng.normal(size=(200, k)).astype(np.float32)
    y0 = _native.packed_matmul(x2, packed, scales, None, 4, n, 64, variant="scalar")
    y = tfquant.ops.packed_matmul(x2, packed, scales, group_size=64).numpy()
    assert y.tobytes() == y0.tobytes()


def test_threaded_gemv_in_graph_mode_and_in_a_forked_child():
    # A GEMV wide enough to be split over the op's worker threads (TaskPool), run
    # eagerly, inside tf.function, and in a child forked after the pool started: the
    # child has none of the parent's threads and must start its own, not wait forever.
    rng = np.random.default_rng(6)
    k, n = 256, 1024
    packed = _native.pack_weights(random_q(k, n, 4, rng), 4)
    scales = rng.uniform(0.01, 0.1, (1, n)).astype(np.float32)
    x = rng.normal(size=(1, k)).astype(np.float32)
    y0 = _native.packed_matmul(x, packed, scales, None, 4, n, 0, variant="scalar")
    assert tfquant.ops.packed_matmul(x, packed, scales).numpy().tobytes() == y0.tobytes()
    graph = tf.function(lambda v: tfquant.ops.packed_matmul(v, packed, scales))
    assert graph(x).numpy().tobytes() == y0.tobytes()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        signal.alarm(60)
        same = tfquant.ops.packed_matmul(x, packed, scales).numpy().tobytes() == y0.tobytes()
        os._exit(0 if same else 3)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("packed_matmul hung in a forked child")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_zero_inputs_give_zeros_and_an_empty_batch_an_empty_output():
    q = random_q(32, 16, 4)
    packed = _native.pack_weights(q, 4)
    scales = np.ones((1, 16), np.float32)
    y = tfquant.ops.packed_matmul(np.zeros((2, 32), np.float32), packed, scales).numpy()
    np.testing.assert_array_equal(y, 0)
    assert tfquant.ops.packed_matmul(np.zeros((0, 32), np.float32), packed, scales).shape == (0, 16)


def test_bad_arguments_raise_clear_errors():
    q4 = random_q(32, 16, 4)
    packed = _native.pack_weights(q4, 4)
    scales = np.ones((1, 16), np.float32)
    x = np.ones((2, 32), np.float32)
    with pytest.raises(ValueError, match=r"value 8 at \[0, 0\] does not fit in 4 bits"):
        _native.pack_weights(np.full((2, 2), 8), 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not fit in 2 bits"):
        tfquant.ops.pack_weights(np.full((2, 2), 2), 2)
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        _native.pack_weights(q4, 3)
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        tfquant.ops.pack_weights(q4, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="q must be 2-D"):
        tfquant.ops.pack_weights(np.zeros((2, 2, 2), np.int32), 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"packed has shape \[256\]"):
        tfquant.ops.unpack_weights(packed, 4, 64, 16)
    with pytest.raises(ValueError, match="packed has 256 bytes"):
        _native.unpack_weights(packed, 2, 32, 16)
    # packed for 4 bits read as 2 bits: size mismatch
    with pytest.raises(tf.errors.InvalidArgumentError, match="packed weights have 256 bytes"):
        tfquant.ops.packed_matmul(x, packed, scales, bits=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="last dimension of x"):
        tfquant.ops.packed_matmul(np.ones((2, 40), np.float32), packed, scales)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"scales has shape \[1, 15\]"):
        tfquant.ops.packed_matmul(x, packed, np.ones((1, 15), np.float32), n=16)
    packed64 = _native.pack_weights(random_q(64, 16, 4), 4)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"scales has shape \[1, 16\] but must be \[2, 16\]"):
        tfquant.ops.packed_matmul(np.ones((2, 64), np.float32), packed64, scales, group_size=32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias has 3 elements"):
        tfquant.ops.packed_matmul(x, packed, scales, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="group_size=16 is not supported"):
        tfquant.ops.packed_matmul(x, packed, scales, group_size=16)
    with pytest.raises(ValueError, match="group_size=32"):
        _native.packed_matmul(np.ones((1, 48), np.float32), _native.pack_weights(
            random_q(48, 16, 4), 4), scales, None, 4, 16, 32)
    with pytest.raises(ValueError, match="packed kernel variant 'sse9'"):
        _native.packed_matmul(x, packed, scales, None, 4, 16, 0, variant="sse9")
