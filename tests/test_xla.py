"""XLA: inside a function XLA compiles, `tfquant.ops.fake_quant` is composed of TF ops
(tfquant/ops/fake_quant_xla.py) that give the C++ op's forward and input gradient bit for
bit; a quantized model trains with `compile(jit_compile=True)`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfquant
from tfquant.ops import fake_quant

SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)


def random_case(rng, trial):
    bits = int(rng.integers(2, 17))
    shape = tuple(int(d) for d in rng.integers(1, 7, size=3))
    x = (rng.normal(size=shape) * rng.choice([0.01, 1.0, 100.0])).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size, 2)] = rng.choice(SPECIAL, 2)
    if trial % 2:
        axis = int(rng.integers(0, 3))
        low = -np.abs(rng.normal(size=shape[axis])).astype(np.float32)
        high = np.abs(rng.normal(size=shape[axis])).astype(np.float32)
        low[0] = high[0] = 0.0  # a zero range among the channels
    else:
        axis, low, high = None, np.float32(-abs(rng.normal())), np.float32(abs(rng.normal()))
    return dict(x=x, low=low, high=high, num_bits=bits, axis=axis,
                dy=rng.normal(size=shape).astype(np.float32),
                narrow_range=bool(trial % 3 == 0),
                range_gradient=("clipped", "learned")[trial % 4 // 2])


def forward_and_gradients(case):
    def run(x, low, high):
        with tf.GradientTape() as tape:
            tape.watch([x, low, high])
            y = fake_quant(x, low, high, num_bits=case["num_bits"], axis=case["axis"],
                           narrow_range=case["narrow_range"],
                           range_gradient=case["range_gradient"])
            loss = tf.reduce_sum(y * case["dy"])
        return (y, *tape.gradient(loss, [x, low, high]))
    return run


@pytest.mark.parametrize("trial", range(24))
def test_xla_fake_quant_equals_the_cpp_op_bit_for_bit(trial):
    case = random_case(np.random.default_rng(trial), trial)
    args = [tf.constant(case[k]) for k in ("x", "low", "high")]
    run = forward_and_gradients(case)
    y_xla, dx_xla, dmin_xla, dmax_xla = tf.function(run, jit_compile=True)(*args)
    y, dx, dmin, dmax = tf.function(run)(*args)
    np.testing.assert_array_equal(y_xla.numpy(), y.numpy())
    np.testing.assert_array_equal(dx_xla.numpy(), dx.numpy())
    # The range gradients are sums: float32 in XLA, double in the C++ op.
    for got, want in ((dmin_xla, dmin), (dmax_xla, dmax)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def qat_model(config):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 1))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3)(inputs)))
    x = layers.ReLU()(layers.DepthwiseConv2D(3)(x))
    outputs = layers.Dense(3)(layers.Flatten()(x))
    return tfquant.quantize_model(keras.Model(inputs, outputs), config)


@pytest.mark.parametrize("config", [
    None,
    tfquant.QuantConfig(weight_quantizer="LSQQuantizer", activation_quantizer="PACTQuantizer",
                        weight_bits=4, activation_bits=4),
], ids=["minmax_w8a8", "lsq_pact_w4a4"])
def test_a_quantized_model_trains_with_jit_compile(config):
    rng = np.random.default_rng(0)
    x = rng.random((64, 10, 10, 1), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    qmodel = qat_model(config)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   jit_compile=True)
    before = [w.copy() for w in qmodel.get_weights()]
    history = qmodel.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights()))
    # The convolutions are XLA's own (another summation order); the quantizers are the
    # same bits, so the logits agree to float rounding and the predictions exactly.
    compiled = tf.function(lambda v: qmodel(v, training=False), jit_compile=True)(x).numpy()
    plain = qmodel(x, training=False).numpy()
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-5)
    assert np.array_equal(compiled.argmax(1), plain.argmax(1))
