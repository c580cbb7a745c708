import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfquant
from tfquant.keras.train_step import with_hooks
from tfquant.regularizers import GradientL1, LearnableMSQE, Periodic, ProxQuant, kernel_views

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def dense_model():
    inputs = keras.Input((5,))
    x = layers.Dense(4, activation="tanh", name="hidden")(inputs)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


def gradient_l1_by_hand(model, x, y, kernels, strength, lr):
    """GradientL1's term λ·Σ‖∂L/∂W‖₁, the total L + term and the weights one SGD step on
    the total gives `model`'s trainable weights, computed by hand with nested tapes."""
    trainable = model.trainable_weights
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = LOSS(y, model(x, training=True))
        grads = inner.gradient(loss, kernels)
        term = strength * tf.add_n([tf.reduce_sum(tf.abs(g)) for g in grads])
        total = loss + term
    expected = [v.numpy() - lr * g.numpy()
                for v, g in zip(trainable, outer.gradient(total, trainable))]
    return term, total, expected


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(16, 5)).astype(np.float32), rng.integers(0, 3, 16)


def test_gradient_l1_term_and_update_match_nested_tapes(data):
    x, y = data
    model = dense_model()
    kernels = [model.get_layer("hidden").kernel, model.get_layer("logits").kernel]
    start = [v.numpy().copy() for v in model.trainable_weights]
    strength, lr = 0.3, 0.1
    # By hand: L + λ·Σ‖∂L/∂W‖₁ and its gradient, with nested tapes.
    term, total, expected = gradient_l1_by_hand(model, x, y, kernels, strength, lr)
    hooked = with_hooks(model, [GradientL1(strength, name="gradient_l1")])
    hooked.compile(keras.optimizers.SGD(lr), LOSS)
    logs = hooked.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    np.testing.assert_allclose(logs["gradient_l1"][0], float(term), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"][0], float(total), rtol=1e-5)
    for variable, want in zip(model.trainable_weights, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-7)
    # The second-order part matters: plain SGD on L alone lands elsewhere.
    assert not np.allclose(expected[0], start[0] - lr * inner_gradient(start, x, y)[0])


def inner_gradient(weights, x, y):
    model = dense_model()
    model.set_weights(weights)
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


def conv_model():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("tanh", name="tanh")(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("weight_quantizer", ["MinMaxWeightQuantizer", "LSQQuantizer"])
def test_gradient_l1_on_quantized_model_matches_nested_tapes(weight_quantizer):
    """Fake-quantized (QAT) model, folded BN, 4-bit weights (clipped range gradient for
    min/max, learned for LSQ): the term and the SGD update equal their definitions
    computed by hand with nested tapes (double backprop through the fake-quant op's
    registered second-order gradient)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    qmodel = tfquant.quantize_model(conv_model(), tfquant.QuantConfig(
        weight_quantizer=weight_quantizer, weight_bits=4, first_last_bits=None))
    qmodel(x, training=False)  # build and initialize the quantizers
    kernels = [qmodel.get_layer("conv").layer.kernel, qmodel.get_layer("logits").layer.kernel]
    state = [v.numpy().copy() for v in qmodel.weights]
    strength, lr = 0.5, 0.05
    term, total, expected = gradient_l1_by_hand(qmodel, x, y, kernels, strength, lr)
    trainable = qmodel.trainable_weights
    # The second-order part does not vanish (it needs the registered gradient).
    with tf.GradientTape() as outer2:
        with tf.GradientTape() as inner2:
            loss2 = LOSS(y, qmodel(x, training=True))
        l1 = tf.add_n([tf.reduce_sum(tf.abs(g)) for g in inner2.gradient(loss2, kernels)])
    assert any(np.abs(g.numpy()).max() > 1e-4 for g in outer2.gradient(l1, kernels))

    for variable, value in zip(qmodel.weights, state):  # undo the range/BN updates
        variable.assign(value)
    hooked = with_hooks(qmodel, [GradientL1(strength, name="gradient_l1")])
    hooked.compile(keras.optimizers.SGD(lr), LOSS)
    logs = hooked.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    np.testing.assert_allclose(logs["gradient_l1"][0], float(term), rtol=1e-4)
    np.testing.assert_allclose(logs["loss"][0], float(total), rtol=1e-4)
    for variable, want in zip(trainable, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-6)


def conv_dropout_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("tanh")(x)
    x = layers.Dropout(0.3)(layers.Flatten()(x))
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


def one_step(model, hooks, x, y, lr=0.1):
    """The trainable and non-trainable values and the logs after one SGD step."""
    hooked = with_hooks(model, hooks) if hooks else model
    hooked.compile(keras.optimizers.SGD(lr), LOSS)
    logs = hooked.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False).history
    return ([v.numpy() for v in model.trainable_weights],
            [v.numpy() for v in model.non_trainable_variables], logs)


def test_gradient_l1_by_finite_difference_matches_double_backprop():
    """With BN batch statistics and dropout: the logged term and loss equal double
    backprop's, the second-order part of the update agrees to 1 % (ε = 1e-3), and the
    extra pass leaves BN's moving statistics and the dropout seed as one pass does."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    plain = one_step(conv_dropout_model(), [], x, y)
    exact = one_step(conv_dropout_model(), [GradientL1(0.3, name="g")], x, y)
    approx = one_step(conv_dropout_model(), [GradientL1(
        0.3, method="finite_difference", epsilon=1e-3, name="g")], x, y)
    for key in ("g", "loss"):
        np.testing.assert_allclose(approx[2][key][0], exact[2][key][0], rtol=1e-5)
    for start, want, got in zip(plain[0], exact[0], approx[0]):
        second_order = want - start
        assert np.abs(second_order).max() > 1e-2  # the term moves every weight
        assert np.abs(got - want).max() <= 0.01 * np.abs(second_order).max()
    for want, got in zip(exact[1], approx[1]):
        np.testing.assert_array_equal(got, want)


def test_gradient_l1_by_finite_difference_trains_a_quantized_model():
    """A QAT model: the term equals double backprop's, the update is finite and differs
    from plain QAT's, and the quantizer ranges and BN statistics equal one pass's."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 8)

    def qat_model():
        keras.utils.set_random_seed(5)
        qmodel = tfquant.quantize_model(conv_model(), tfquant.QuantConfig(weight_bits=4))
        qmodel(x, training=False)
        return qmodel

    plain = one_step(qat_model(), [], x, y)
    exact = one_step(qat_model(), [GradientL1(0.5, name="g")], x, y)
    approx = one_step(qat_model(), [GradientL1(0.5, method="finite_difference", name="g")],
                      x, y)
    np.testing.assert_allclose(approx[2]["g"][0], exact[2]["g"][0], rtol=1e-5)
    assert all(np.isfinite(w).all() for w in approx[0])
    assert any(not np.allclose(a, p) for a, p in zip(approx[0], plain[0]))
    for want, got in zip(exact[1], approx[1]):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gradient_l1_arguments_are_checked_and_saved(tmp_path, data):
    with pytest.raises(ValueError, match="method='hessian'.*'double_backprop'"):
        GradientL1(method="hessian")
    with pytest.raises(ValueError, match="epsilon=0"):
        GradientL1(method="finite_difference", epsilon=0)
    with pytest.raises(ValueError, match="At most one"):
        with_hooks(dense_model(), [GradientL1(method="finite_difference", name="a"),
                                   GradientL1(method="finite_difference", name="b")])
    class NoCurvature(tfquant.keras.train_step.TrainStepHook):
        uses_curvature = True

    with pytest.raises(ValueError, match="does not override curvature_term"):
        with_hooks(dense_model(), [NoCurvature(name="h")])
    x, y = data
    hooked = with_hooks(dense_model(), [GradientL1(
        0.1, method="finite_difference", epsilon=0.05, name="g")])
    hooked.compile(keras.optimizers.SGD(0.1), LOSS)
    hooked.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "hooked.keras")
    hooked.save(path)
    hook = keras.models.load_model(path).train_step_hooks[0]
    assert (hook.method, hook.epsilon, hook.uses_curvature) == ("finite_difference", 0.05, True)


def test_periodic_penalty_follows_its_definition_and_is_zero_on_grid():
    model = dense_model()
    hook = Periodic(2.0, num_bits=4)
    with_hooks(model, [hook])
    expected = 0.0
    for layer in ("hidden", "logits"):
        w = model.get_layer(layer).kernel.numpy()
        delta = np.abs(w).max(axis=0, keepdims=True) / 7.0
        expected += np.sum(np.sin(math.pi * w / delta) ** 2)
    np.testing.assert_allclose(float(hook.penalty()), expected, rtol=1e-4)
    for view in kernel_views(model, 4):
        view.variable.assign(view.quantize(view.seen()))
    assert float(hook.penalty()) < 1e-6


def test_periodic_uses_lsq_step():
    qmodel = tfquant.quantize_model(dense_model(), tfquant.QuantConfig(
        weight_quantizer="LSQQuantizer", per_channel_weights=False, first_last_bits=None))
    hook = Periodic(1.0)
    with_hooks(qmodel, [hook])
    layer = qmodel.get_layer("hidden")
    layer.kernel_variables["kernel"]["step"].assign(0.05)
    qmodel.get_layer("logits").kernel_variables["kernel"]["step"].assign(0.2)
    w1, w2 = layer.layer.kernel.numpy(), qmodel.get_layer("logits").layer.kernel.numpy()
    expected = (np.sum(np.sin(math.pi * w1 / 0.05) ** 2)
                + np.sum(np.sin(math.pi * w2 / 0.2) ** 2))
    np.testing.assert_allclose(float(hook.penalty()), expected, rtol=1e-4)


def test_learnable_msqe_term_follows_its_definition_and_log_weights_grow(data):
    x, y = data
    qmodel = tfquant.quantize_model(dense_model(), tfquant.QuantConfig(weight_bits=2,
                                                                       first_last_bits=None))
    hook = LearnableMSQE(0.5, name="learnable_msqe")
    hooked = with_hooks(qmodel, [hook])
    assert all(any(a is v for v in hooked.trainable_weights) for a in hook.log_weights)
    expected = 0.0
    for view, a in zip(kernel_views(qmodel), hook.log_weights):
        w = view.seen().numpy()
        q = view.quantize(w).numpy()
        expected += math.exp(float(a.numpy())) * np.mean((w - q) ** 2) - 0.5 * float(a.numpy())
    hooked.compile(keras.optimizers.SGD(0.5), LOSS)
    logs = hooked.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    np.testing.assert_allclose(logs["learnable_msqe"][0], expected, rtol=1e-4)
    # ∂/∂a = e^a·MSQE − λ < 0 (MSQE small): a grows.
    assert all(float(a.numpy()) > 0.0 for a in hook.log_weights)


def test_prox_quant_soft_thresholds_then_hard_freezes_onto_the_grid():
    qmodel = tfquant.quantize_model(dense_model(), tfquant.QuantConfig(weight_bits=3,
                                                                       first_last_bits=None))
    hook = ProxQuant(strength_per_epoch=0.01)
    with_hooks(qmodel, [hook])
    view = kernel_views(qmodel)[0]
    w = view.seen().numpy()
    q = view.quantize(w).numpy()
    hook.strength.assign(0.01)
    hook.prox_step()
    moved = view.seen().numpy()
    want = q + np.sign(w - q) * np.maximum(np.abs(w - q) - 0.01, 0.0)
    np.testing.assert_allclose(moved, want, rtol=1e-5, atol=1e-7)
    assert np.abs(moved - q).sum() < np.abs(w - q).sum()
    hook.hard.assign(1.0)
    hook.prox_step()
    on_grid = view.seen().numpy()
    np.testing.assert_allclose(on_grid, view.quantize(on_grid).numpy(), atol=1e-6)
