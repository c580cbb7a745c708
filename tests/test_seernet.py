"""SeerNet (Cao et al. 2019): the predicted-sparsity convolution op, its kernel variants,
and the `tfquant.ptq.seernet` model transformation.

Contract (cc_ops/kernels/seer_conv.h): where the op computes an output it equals the
dense float Conv2D + bias + ReLU (to float rounding); where the low-bit predictor says
"not positive" (or "not this window's maximum") it is 0; with a predictor that is exact
(integer weights on the 4-bit grid, inputs on the int8 grid) the op equals the dense
layer.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant import _native
from tfquant.ops.seer_conv import seer_conv2d, seer_predictor

VARIANTS = list(_native.seer_conv_kernel_variants())


def dense(x, kernel, bias, strides=1, padding="same", pool=1):
    y = tf.nn.relu(tf.nn.conv2d(x, kernel, strides, padding.upper()) + bias)
    return (tf.nn.max_pool2d(y, 2, 2, "VALID") if pool == 2 else y).numpy()


def random_layer(rng, batch=2, h=9, w=11, cin=20, cout=21, k=3):
    x = np.maximum(rng.standard_normal((batch, h, w, cin)), 0).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) * 0.2).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    return x, kernel, bias


def grid_layer(rng, batch=2, h=8, w=10, cin=5, cout=18, k=3):
    """A layer whose predictor is exact: x = xq · s with max|xq| = 127 per image, kernel
    = q · scale with q in [-7, 7] and max|q| = 7 per channel; every sum is an integer
    times s·scale, exact in float32."""
    xq = rng.integers(0, 128, (batch, h, w, cin))
    xq[:, 0, 0, 0] = 127
    q = rng.integers(-7, 8, (k, k, cin, cout))
    q[0, 0, 0, :] = 7
    s, scale = 0.25, 0.5
    bias = (rng.integers(-40, 40, cout) * s * scale + s * scale / 2).astype(np.float32)
    return (xq * s).astype(np.float32), (q * scale).astype(np.float32), bias


@pytest.mark.parametrize("strides,padding,k", [(1, "same", 3), (2, "same", 3),
                                               (1, "valid", 3), (2, "valid", 5),
                                               (1, "same", 1)])
def test_computing_everything_equals_the_dense_layer(strides, padding, k):
    x, kernel, bias = random_layer(np.random.default_rng(k + strides), k=k)
    packed, scales = seer_predictor(kernel)
    y, computed = seer_conv2d(x, kernel, bias, packed, scales, strides, padding,
                              threshold=-np.inf)
    want = dense(x, kernel, bias, strides, padding)
    assert y.shape == want.shape
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5)
    assert int(computed) == want.size


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_an_exact_predictor_gives_the_dense_layer(pool, padding):
    x, kernel, bias = grid_layer(np.random.default_rng(pool))
    packed, scales = seer_predictor(kernel)
    y, computed = seer_conv2d(x, kernel, bias, packed, scales, 1, padding, pool=pool)
    np.testing.assert_allclose(y.numpy(), dense(x, kernel, bias, 1, padding, pool),
                               rtol=1e-6, atol=1e-6)
    conv = dense(x, kernel, bias, 1, padding)
    if pool == 1:
        # Only the positive outputs were computed (none is exactly 0: the bias is off-grid).
        assert int(computed) == int(np.sum(conv > 0))
    else:
        windows = conv[:, :conv.shape[1] // 2 * 2, :conv.shape[2] // 2 * 2]
        assert int(computed) <= windows.size // 4


def test_outputs_are_dense_or_zero_and_the_pool_picks_a_window_value():
    x, kernel, bias = random_layer(np.random.default_rng(3), cout=40)
    packed, scales = seer_predictor(kernel)
    conv = dense(x, kernel, bias)
    y, computed = seer_conv2d(x, kernel, bias, packed, scales)
    y = y.numpy()
    computed_mask = y != 0
    np.testing.assert_allclose(y[computed_mask], conv[computed_mask], rtol=1e-5, atol=1e-5)
    # A 4-bit predictor misses few signs of a random layer.
    assert np.mean((y > 0) != (conv > 0)) < 0.05
    assert int(computed) >= np.sum(computed_mask)

    yp, computed = seer_conv2d(x, kernel, bias, packed, scales, pool=2)
    yp = yp.numpy()
    h, w = yp.shape[1] * 2, yp.shape[2] * 2
    windows = conv[:, :h, :w].reshape(conv.shape[0], h // 2, 2, w // 2, 2, -1)
    candidates = windows.transpose(0, 1, 3, 5, 2, 4).reshape(*yp.shape, 4)
    close = np.isclose(candidates, yp[..., None], rtol=1e-5, atol=1e-5)
    assert np.all(close.any(-1) | (yp == 0))
    assert np.all(yp <= candidates.max(-1) + 1e-5)
    assert int(computed) <= yp.size


def test_a_higher_threshold_computes_less():
    x, kernel, bias = random_layer(np.random.default_rng(4))
    packed, scales = seer_predictor(kernel)
    counts = [int(seer_conv2d(x, kernel, bias, packed, scales, threshold=t)[1])
              for t in (-np.inf, -0.5, 0.0, 0.5, np.inf)]
    assert counts[0] == x.shape[0] * x.shape[1] * x.shape[2] * kernel.shape[-1]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0
    assert counts[1] > counts[2] > counts[3]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pool", [1, 2])
def test_kernel_variants_agree_with_the_scalar_one_and_the_op(variant, pool):
    x, kernel, bias = random_layer(np.random.default_rng(5), batch=3, h=13, w=70, cin=33,
                                   cout=37)  # 70 columns: bands wider than 64 pixels
    packed, scales = seer_predictor(kernel)
    ref, ref_count = _native.seer_conv2d(x, kernel, bias, packed, scales, pool=pool,
                                         variant="scalar")
    y, count = _native.seer_conv2d(x, kernel, bias, packed, scales, pool=pool,
                                   variant=variant)
    # The same selection (the predictor is integer-exact), sums in another order.
    assert count == ref_count
    np.testing.assert_array_equal(y == 0, ref == 0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    op, op_count = seer_conv2d(x, kernel, bias, packed, scales, pool=pool)
    assert int(op_count) == ref_count
    np.testing.assert_allclose(op.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_empty_batch_and_nan_inputs():
    x, kernel, bias = random_layer(np.random.default_rng(6))
    packed, scales = seer_predictor(kernel)
    y, computed = seer_conv2d(x[:0], kernel, bias, packed, scales)
    assert y.shape == (0, 9, 11, 21) and int(computed) == 0
    x[0, 4, 5, 3] = np.nan
    y, _ = seer_conv2d(x, kernel, bias, packed, scales)
    assert np.all(np.isfinite(y.numpy()[1]))  # the other image is untouched


def test_bad_arguments_get_clear_errors():
    x, kernel, bias = random_layer(np.random.default_rng(7))
    packed, scales = seer_predictor(kernel)
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        seer_predictor(kernel, bits=3)
    with pytest.raises(ValueError, match="pool=3 is not supported"):
        seer_conv2d(x, kernel, bias, packed, scales, pool=3)
    with pytest.raises(ValueError, match="padding='full' is not supported"):
        seer_conv2d(x, kernel, bias, packed, scales, padding="full")
    with pytest.raises(ValueError, match="threshold=nan"):
        seer_conv2d(x, kernel, bias, packed, scales, threshold=float("nan"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input channels but x has"):
        seer_conv2d(x[..., :5], kernel, bias, packed, scales)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bytes|packed"):
        seer_conv2d(x, kernel, bias, packed[:-1], scales)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must be"):
        seer_conv2d(x, kernel, bias[:3], packed, scales)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must fit in the input"):
        seer_conv2d(x[:, :2], kernel, bias, packed, scales, padding="valid")
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="4-D"):
        seer_conv2d(x[0], kernel, bias, packed, scales)
    with pytest.raises(ValueError, match="variant 'sse9'"):
        _native.seer_conv2d(x, kernel, bias, packed, scales, variant="sse9")
    with pytest.raises(ValueError, match="2x2 pool needs"):
        _native.seer_conv2d(x[:, :1], kernel[:1], bias, seer_predictor(kernel[:1])[0],
                            scales, padding="VALID", pool=2)


def small_cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="tanh")(x)  # not eligible
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    bn = model.layers[4]
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 16), rng.normal(0, 0.1, 16),
                    rng.normal(0, 0.1, 16), rng.uniform(0.5, 1.5, 16)])
    return model


def test_seernet_replaces_conv_relu_pool_chains_and_saves(tmp_path):
    model = small_cnn()
    x = np.random.default_rng(1).random((8, 16, 16, 3)).astype(np.float32)
    fast = tfquant.ptq.seernet(model, threshold=-np.inf, min_input_channels=1)
    kinds = [type(layer).__name__
             for layer in tfquant.ptq.seernet(model, min_input_channels=4).layers]
    assert kinds[1:3] == ["Conv2D", "MaxPooling2D"]  # 3 input channels: left dense
    kinds = [type(layer).__name__ for layer in fast.layers]
    assert kinds == ["InputLayer", "SeerNetConv2D", "SeerNetConv2D", "Conv2D",
                     "GlobalAveragePooling2D", "Dense"]
    assert fast.layers[1].pool == 2 and fast.layers[2].pool == 1
    want = model.predict(x, verbose=0)
    got = fast.predict(x, verbose=0)
    # Everything computed: only the first pool's predicted maxima can differ.
    np.testing.assert_allclose(got, want, atol=0.05)
    no_pool = keras.Model(model.input, model.layers[1].output)
    np.testing.assert_allclose(
        tfquant.ptq.seernet(no_pool, threshold=-np.inf, layers=[model.layers[1].name])
        .predict(x, verbose=0),
        no_pool.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    path = os.path.join(tmp_path, "seernet.keras")
    fast.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path).predict(x, verbose=0), got)


def test_seernet_refuses_clearly():
    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, activation="sigmoid")(inputs))
    with pytest.raises(ValueError, match=r"no Conv2D followed by a ReLU.*no ReLU follows it"):
        tfquant.ptq.seernet(model, min_input_channels=1)
    with pytest.raises(ValueError, match=r"2 input channels < min_input_channels=16"):
        tfquant.ptq.seernet(model)
    with pytest.raises(ValueError, match="no layer named"):
        tfquant.ptq.seernet(small_cnn(), layers=["nope"])
    with pytest.raises(ValueError, match="bits=8 is not supported"):
        tfquant.ptq.seernet(small_cnn(), bits=8)
    with pytest.raises(ValueError, match="pool=4 is not supported"):
        tfquant.ptq.SeerNetConv2D(4, 3, pool=4)


def test_the_2_bit_predictor_is_ternary_with_twns_threshold_and_scale():
    from tfquant.ptq.seernet import predictor_weights

    kernel = np.random.default_rng(8).standard_normal((3, 3, 5, 7)).astype(np.float32)
    packed, scales = predictor_weights(kernel, 2)
    w = kernel.reshape(45, 7)
    q = _native.unpack_weights(packed, 2, 45, 7)
    above = np.abs(w) > 0.7 * np.mean(np.abs(w), axis=0)
    np.testing.assert_array_equal(q, np.sign(w) * above)
    np.testing.assert_allclose(scales, np.sum(np.abs(w) * above, 0) / above.sum(0), rtol=1e-6)
    packed4, scales4 = predictor_weights(kernel, 4)
    np.testing.assert_allclose(scales4, np.abs(w).max(0) / 7, rtol=1e-6)
