"""TfquantMovingAverageRange (`tfquant.ops.moving_average_range`) against the composed TF
ops of `MovingAverageQuantizer._composed_range`: the same float32 bits on random, NaN/Inf,
one-signed, zero and empty batches, symmetric or not, first batch, frozen, any decay;
bad scalar shapes fail with an error; a quantized model trains to the same range
variables with the op and with the composed version."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.ops import moving_average_range
from tfquant.quantizers import uniform
from tfquant.quantizers.uniform import CappedRangeQuantizer, MovingAverageQuantizer

NAN, INF = float("nan"), float("inf")
DECAYS = (0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0 / 3.0)


def bits(value):
    return np.asarray(value, np.float32).view(np.uint32)


QUANTIZERS = {}


def quantizer_for(decay, symmetric):
    """One quantizer per setting, so composed_in_graph traces once for each."""
    key = (decay, symmetric)
    if key not in QUANTIZERS:
        QUANTIZERS[key] = MovingAverageQuantizer(ema_decay=decay, symmetric=symmetric)
    return QUANTIZERS[key]


@tf.function(reduce_retracing=True)
def composed_in_graph(quantizer, x, old_min, old_max, observed, frozen):
    return quantizer._composed_range(x, {"min": old_min, "max": old_max,
                                         "observed": observed, "frozen": frozen})


def assert_same_bits(x, old_min=-6.0, old_max=6.0, observed=1.0, frozen=0.0,
                     decay=0.99, symmetric=False):
    """The op's (min, max) has the composed version's bits; if x holds zeros of both
    signs, only its values (the sign of a zero reduce_min/max depends on the order
    of the reduction, in Eigen as in the op)."""
    x = np.asarray(x, np.float32)
    both_zeros = np.any((x == 0) & np.signbit(x)) and np.any((x == 0) & ~np.signbit(x))
    compare = np.testing.assert_array_equal if both_zeros else (
        lambda a, b, err_msg: np.testing.assert_array_equal(bits(a), bits(b), err_msg))
    x = tf.constant(x)
    scalars = [tf.constant(v, tf.float32) for v in (old_min, old_max, observed, frozen)]
    quantizer = quantizer_for(decay, symmetric)
    got = moving_average_range(x, *scalars, decay=decay, symmetric=symmetric)
    eager = quantizer._composed_range(x, dict(zip(("min", "max", "observed", "frozen"),
                                                  scalars)))
    graph = composed_in_graph(quantizer, x, *scalars)
    for expected in (eager, graph):
        compare(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                err_msg=f"x={x.numpy().ravel()[:8]} old=({old_min}, {old_max}) "
                        f"observed={observed} frozen={frozen} decay={decay} "
                        f"symmetric={symmetric}")
    return np.asarray(got, np.float32)


def batches():
    rng = np.random.default_rng(3)
    normal = rng.normal(0.0, 2.0, size=(4, 7, 5)).astype(np.float32)
    with_nan = normal.copy()
    with_nan[2, 3, 1] = NAN
    with_inf = normal.copy()
    with_inf[0, 0, 0] = INF
    with_neg_inf = normal.copy()
    with_neg_inf[3, 6, 4] = -INF
    both_inf = np.array([-INF, 1.0, INF], np.float32)
    nan_and_inf = np.array([INF, NAN, -INF], np.float32)
    return {
        "normal": normal,
        "tiny": rng.normal(0.0, 1e-30, size=(33,)).astype(np.float32),
        "huge": rng.normal(0.0, 1e37, size=(17,)).astype(np.float32),
        "nan": with_nan, "all_nan": np.full((3, 2), NAN, np.float32),
        "inf": with_inf, "neg_inf": with_neg_inf, "both_inf": both_inf,
        "nan_and_inf": nan_and_inf,
        "all_negative": -np.abs(normal) - 0.5, "all_positive": np.abs(normal) + 0.5,
        "zeros": np.zeros((5, 3), np.float32),
        "negative_zeros": -np.zeros((5, 3), np.float32),
        "mixed_zeros": np.array([0.0, -0.0, 0.0, -0.0], np.float32),
        "scalar": np.float32(-2.5),
        "empty": np.zeros((0,), np.float32), "empty_3d": np.zeros((3, 0, 2), np.float32),
    }


@pytest.mark.parametrize("name", sorted(batches()))
@pytest.mark.parametrize("symmetric", [False, True])
def test_op_matches_the_composed_version_bit_for_bit(name, symmetric):
    x = batches()[name]
    states = [(-6.0, 6.0), (-0.25, 3.0), (0.0, 0.0), (-0.0, 0.0), (-3e38, 3e38),
              (NAN, 1.0)]
    for (old_min, old_max), observed, frozen, decay in itertools.product(
            states, (0.0, 1.0), (0.0, 1.0), DECAYS):
        assert_same_bits(x, old_min, old_max, observed, frozen, decay, symmetric)


def test_the_documented_results():
    x = np.array([[-1.0, 2.0], [0.5, 4.0]], np.float32)
    # First batch: the batch range itself; then the moving average; frozen: kept.
    np.testing.assert_array_equal(assert_same_bits(x, observed=0.0), [-1.0, 4.0])
    np.testing.assert_array_equal(assert_same_bits(x, -3.0, 2.0, decay=0.5), [-2.0, 3.0])
    np.testing.assert_array_equal(assert_same_bits(x, -3.0, 2.0, decay=0.0), [-1.0, 4.0])
    np.testing.assert_array_equal(assert_same_bits(x, -3.0, 2.0, frozen=1.0), [-3.0, 2.0])
    # Frozen before any observation: the first batch still sets the range.
    np.testing.assert_array_equal(assert_same_bits(x, frozen=1.0, observed=0.0), [-1.0, 4.0])
    np.testing.assert_array_equal(assert_same_bits(x, observed=0.0, symmetric=True),
                                  [-4.0, 4.0])
    # All positive: the range still holds 0.
    np.testing.assert_array_equal(assert_same_bits(x + 2.0, observed=0.0), [0.0, 6.0])
    # A NaN or Inf in the batch keeps the old range, even for the first batch.
    x_nan = x.copy()
    x_nan[1, 0] = NAN
    np.testing.assert_array_equal(assert_same_bits(x_nan, -3.0, 2.0, observed=0.0),
                                  [-3.0, 2.0])
    x_inf = x.copy()
    x_inf[0, 1] = INF
    np.testing.assert_array_equal(assert_same_bits(x_inf, -3.0, 2.0), [-3.0, 2.0])
    # Empty: the batch range is [0, 0], as reduce_min/max (+Inf/−Inf) clipped at 0 give.
    np.testing.assert_array_equal(assert_same_bits(np.zeros((0, 4)), observed=0.0), [0, 0])
    np.testing.assert_array_equal(assert_same_bits(np.zeros((0, 4)), -2.0, 2.0, decay=0.5),
                                  [-1.0, 1.0])
    # Symmetric all-zero batch: TF's maximum(−0.0, +0.0) is its first argument, −0.0.
    got = assert_same_bits(np.zeros(3), observed=0.0, symmetric=True)
    assert not np.signbit(got[0]) and np.signbit(got[1])
    got = assert_same_bits(-np.zeros(3), observed=0.0)
    assert np.signbit(got[0]) and np.signbit(got[1])


@pytest.mark.parametrize("n", [32767, 32768, 32769, 200_003])
def test_large_batches_over_several_tiles(n):
    rng = np.random.default_rng(n)
    x = rng.normal(0.0, 1.0, size=n).astype(np.float32)
    x[n // 3] = 40.0
    x[n - 1] = -50.0
    for symmetric, decay in itertools.product((False, True), (0.0, 0.99)):
        assert_same_bits(x, decay=decay, symmetric=symmetric)
    x[n - 2] = NAN  # in the last tile only
    np.testing.assert_array_equal(assert_same_bits(x, -1.0, 1.0), [-1.0, 1.0])


def test_random_batches_and_states():
    rng = np.random.default_rng(11)
    for _ in range(200):
        size = int(rng.integers(0, 300))
        x = rng.normal(rng.normal(0, 3), rng.uniform(0.01, 10), size=size).astype(np.float32)
        if size and rng.uniform() < 0.2:
            x[rng.integers(0, size)] = rng.choice([NAN, INF, -INF])
        old_min, old_max = sorted(rng.normal(0, 5, size=2))
        assert_same_bits(x, old_min, old_max, float(rng.uniform() < 0.8),
                         float(rng.uniform() < 0.2), float(rng.uniform(0, 0.9999)),
                         bool(rng.uniform() < 0.5))


def test_bad_scalar_shapes_raise_and_do_not_crash():
    x = tf.constant([1.0, -1.0])
    ops = moving_average_range.__globals__["_ops"]
    good = [tf.constant(v) for v in (-6.0, 6.0, 1.0, 0.0)]
    for index in range(4):
        args = list(good)
        args[index] = tf.constant([1.0, 2.0])
        with pytest.raises(ValueError, match="must be a scalar"):
            moving_average_range(x, *args)
        # The op itself, eagerly and in a graph whose shapes are not known statically.
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be a scalar"):
            ops.tfquant_moving_average_range(x, *args, decay=0.9, one_minus_decay=0.1)
        unknown = tf.function(
            lambda *a: ops.tfquant_moving_average_range(*a, decay=0.9, one_minus_decay=0.1),
            input_signature=[tf.TensorSpec(None, tf.float32)] * 5)
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be a scalar"):
            unknown(x, *args)
    with pytest.raises(ValueError, match="decay"):
        moving_average_range(x, *good, decay=1.0)


def test_no_gradient_flows_through_the_op():
    x = tf.constant([1.0, -3.0, 2.0])
    old_min = tf.Variable(-1.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        new_min, new_max = moving_average_range(x, old_min, 1.0, 1.0)
        total = new_min + new_max
    assert tape.gradient(total, x) is None
    assert tape.gradient(total, old_min) is None


def _observe(quantizer, x, use_op, jit_compile=False):
    host = keras.layers.Layer()
    weights = quantizer.build((None, x.shape[-1]), "t", host)
    previous, uniform.USE_RANGE_OP = uniform.USE_RANGE_OP, use_op
    try:
        step = tf.function(lambda x: quantizer._observe(x, weights), jit_compile=jit_compile)
        graph = step.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
        op_types = {op.type for op in graph.get_operations()}
        results = [step(tf.constant(x * scale)) for scale in (1.0, 3.0, 0.5)]
    finally:
        uniform.USE_RANGE_OP = previous
    states = [np.float32(weights[k].numpy()) for k in ("min", "max", "observed")]
    return np.asarray(results, np.float32), np.asarray(states), op_types


@pytest.mark.parametrize("quantizer", [MovingAverageQuantizer(),
                                       MovingAverageQuantizer(symmetric=True, ema_decay=0.9),
                                       CappedRangeQuantizer(2.0, ema_decay=0.5)],
                         ids=["default", "symmetric", "capped"])
def test_observe_with_the_op_matches_composed_and_xla(quantizer):
    x = np.random.default_rng(5).normal(0.0, 3.0, size=(16, 8)).astype(np.float32)
    with_op, op_states, op_types = _observe(quantizer, x, True)
    composed, composed_states, composed_types = _observe(quantizer, x, False)
    xla, xla_states, xla_types = _observe(quantizer, x, True, jit_compile=True)
    assert "TfquantMovingAverageRange" in op_types
    assert "TfquantMovingAverageRange" not in composed_types | xla_types
    assert len(op_types) < len(composed_types)
    np.testing.assert_array_equal(bits(with_op), bits(composed))
    np.testing.assert_array_equal(bits(op_states), bits(composed_states))
    # XLA compiles the composed version its own way (the moving average can round
    # differently by an ulp), as it did before the op.
    np.testing.assert_allclose(xla, with_op, rtol=1e-6)
    np.testing.assert_allclose(xla_states, op_states, rtol=1e-6)
    if isinstance(quantizer, CappedRangeQuantizer):
        assert with_op.min() >= -2.0 and with_op.max() <= 2.0
        assert op_states[1] > 2.0  # the variables keep the uncapped range


def _train(use_op, steps=4):
    keras.utils.set_random_seed(21)
    inputs = keras.Input((12, 6))
    x = keras.layers.Dense(16, activation="relu")(inputs)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.MultiHeadAttention(2, 8)(x, x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = tfquant.quantize_model(keras.Model(inputs, keras.layers.Dense(3)(x)))
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(8)
    x = rng.normal(0.0, 1.0, size=(16, 12, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    previous, uniform.USE_RANGE_OP = uniform.USE_RANGE_OP, use_op
    try:
        for _ in range(steps):
            model.train_on_batch(x, y)
    finally:
        uniform.USE_RANGE_OP = previous
    # Layer names differ between the two models (keras numbers them): keep the order.
    return [(v.path, np.array(v.numpy(), np.float32)) for v in model.variables]


def test_training_steps_give_the_same_variables_with_the_op_and_composed():
    with_op, composed = _train(True), _train(False)
    assert len(with_op) == len(composed)
    ranges = [value for path, value in with_op if path.endswith(("_min", "_max"))]
    assert len(ranges) >= 8
    for (path, value), (other_path, other) in zip(with_op, composed):
        assert path.rsplit("/", 1)[-1].rstrip("_0123456789") == \
            other_path.rsplit("/", 1)[-1].rstrip("_0123456789")
        np.testing.assert_array_equal(bits(value), bits(other), err_msg=path)
    assert not all(value in (-6.0, 6.0) for value in ranges)
