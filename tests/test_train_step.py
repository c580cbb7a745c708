import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfquant
from model_zoo import small_conv_data, small_conv_model
from tfquant import callbacks as cb
from tfquant.keras.distillation import Distillation
from tfquant.keras.train_step import QuantizedModel, with_hooks
from tfquant.regularizers import GradientL1, Periodic, ProxQuant

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_model():
    return small_conv_model("student")


@pytest.fixture
def data():
    return small_conv_data(2, 32)


def test_hooks_compose_in_fit_and_share_variables(data):
    x, y = data
    teacher = conv_model()
    student = conv_model()
    hooked = with_hooks(student, [
        GradientL1(0.01, name="gradient_l1"),
        Distillation(teacher, hints=("relu",), name="distillation"),
        ProxQuant(1e-3), Periodic(1e-5, name="periodic")])
    hooked.compile("adam", LOSS)
    before = student.get_layer("conv").kernel.numpy().copy()
    teacher_before = [w.copy() for w in teacher.get_weights()]
    logs = hooked.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    for name in ("loss", "gradient_l1", "distillation", "distillation_hints", "periodic"):
        assert np.isfinite(logs[name][0]), name
    # The hooked model trains the original model's variables; the teacher stays frozen.
    assert not np.allclose(student.get_layer("conv").kernel.numpy(), before)
    for a, b in zip(teacher.get_weights(), teacher_before):
        np.testing.assert_array_equal(a, b)
    evaluation = hooked.evaluate(x, y, verbose=0, return_dict=True)
    assert "gradient_l1" not in evaluation and "loss" in evaluation


def test_distillation_term_is_alpha_t_squared_times_the_kl(data):
    x, y = data
    teacher, student = conv_model(), conv_model()
    hook = Distillation(teacher, temperature=3.0, alpha=0.7, name="distillation")
    hooked = with_hooks(student, [hook])
    hooked.compile(keras.optimizers.SGD(0.0), LOSS)
    logs = hooked.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    t = teacher(x, training=False).numpy() / 3.0
    s = student(x, training=True).numpy() / 3.0
    p = tf.nn.softmax(t).numpy()
    kl = np.sum(p * (np.log(p) - tf.nn.log_softmax(s).numpy()), axis=-1).mean()
    np.testing.assert_allclose(logs["distillation"][0], 0.7 * 9.0 * kl, rtol=1e-4)


def test_a_hook_adding_zero_trains_a_quantized_model_exactly_as_plain_fit(data):
    """The hooked train step (forward, loss, optimizer step, BN and range updates) must
    not differ from Keras' own: a distillation weight of 0 gives the same variables."""
    x, y = data
    config = tfquant.QuantConfig(weight_quantizer="LSQQuantizer", weight_bits=2,
                                 activation_bits=2)
    float_model = conv_model()
    trained = []
    for hooks in ([], [Distillation(float_model, alpha=0.0, name="distillation")]):
        keras.utils.set_random_seed(3)
        qmodel = tfquant.quantize_model(float_model, config)
        model = with_hooks(qmodel, hooks) if hooks else qmodel
        model.compile(keras.optimizers.Adam(1e-2), LOSS)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        trained.append(qmodel.get_weights())
    for plain, hooked in zip(*trained):
        np.testing.assert_allclose(hooked, plain, rtol=1e-5, atol=1e-6)


def test_a_compiled_teacher_leaves_the_students_metrics_alone(data):
    """A compiled teacher (e.g. the float model, or `clone_model` of it) has compile
    metrics of its own; they must not join the hooked student's (fit failed with
    "Cannot get result() since the metric has not yet been built")."""
    x, y = data
    teacher = conv_model()
    teacher.compile(loss=LOSS, metrics=["accuracy"])
    hooked = with_hooks(conv_model(), [Distillation(teacher, name="distillation")])
    hooked.compile("adam", LOSS, metrics=["accuracy"])
    logs = hooked.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "accuracy", "distillation"}, logs

def test_hooked_model_saves_and_loads_without_custom_objects(tmp_path, data):
    x, y = data
    teacher = conv_model()
    qmodel = tfquant.quantize_model(conv_model())
    prox = ProxQuant(1e-3, freeze_epoch=5)
    hooked = with_hooks(qmodel, [Distillation(teacher, temperature=2.0), prox,
                                 Periodic(3e-4, name="grid")])
    hooked.compile("adam", LOSS)
    hooked.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb.ProxQuantSchedule(prox)])
    path = str(tmp_path / "hooked.keras")
    hooked.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, QuantizedModel)
    names = [type(h).__name__ for h in loaded.train_step_hooks]
    assert names == ["Distillation", "ProxQuant", "Periodic"]
    assert loaded.train_step_hooks[0].temperature == 2.0
    assert loaded.train_step_hooks[1].freeze_epoch == 5
    np.testing.assert_allclose(loaded.train_step_hooks[1].strength.numpy(), 1e-3)
    assert len(loaded.weights) == len(hooked.weights)
    for a, b in zip(hooked.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), hooked.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_two_stage_quantization_enables_weights_then_activations(data):
    x, y = data
    qmodel = tfquant.quantize_model(conv_model())
    qmodel.compile("adam", LOSS)
    conv, relu_quant = qmodel.get_layer("conv"), qmodel.get_layer("relu_quant")
    seen = []

    class Read(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((float(conv.weights_quantize_enabled.numpy()),
                         float(relu_quant.quantize_enabled.numpy())))

    qmodel.fit(x, y, batch_size=16, epochs=3, verbose=0,
               callbacks=[cb.TwoStageQuantization(after_epochs=2), Read()])
    assert seen == [(1.0, 0.0), (1.0, 0.0), (1.0, 1.0)]


def test_hooked_qat_resumes_mid_schedule(tmp_path, data):
    """Gradient-ℓ1 (on the fake-quantized model), periodic with a ramped λ and ProxQuant
    with its hard freeze, plus quantization delay and BN freezing: trained 3 epochs in
    one go, or 1 epoch, saved, reloaded and trained 2 more, the variables agree."""
    x, y = data
    weights = conv_model().get_weights()

    def build():
        model = conv_model()
        model.set_weights(weights)
        qmodel = tfquant.quantize_model(model, tfquant.QuantConfig(first_last_bits=None))
        hooked = with_hooks(qmodel, [GradientL1(0.05, name="gradient_l1"),
                                     Periodic(0.0, num_bits=4, name="periodic"),
                                     ProxQuant(1e-3, freeze_epoch=2, name="prox")])
        hooked.compile(keras.optimizers.SGD(0.05), LOSS)
        return hooked

    def callbacks(hooked):
        _, periodic, prox = hooked.train_step_hooks
        return [cb.QuantizationDelay(after_steps=1), cb.FreezeBatchNorm(after_steps=3),
                cb.RegularizerSchedule(periodic, lambda epoch: 1e-4 * (epoch + 1)),
                cb.ProxQuantSchedule(prox)]

    straight = build()
    straight.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
                 callbacks=callbacks(straight))
    first = build()
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=callbacks(first))
    path = str(tmp_path / "mid.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert int(resumed.optimizer.iterations.numpy()) == 2
    resumed.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                callbacks=callbacks(resumed))

    _, periodic, prox = resumed.train_step_hooks
    np.testing.assert_allclose(periodic.strength.numpy(), 3e-4, rtol=1e-6)
    assert float(prox.hard.numpy()) == 1.0  # frozen from epoch 2 on
    assert resumed.get_layer("conv").batch_norm_frozen
    assert [v.shape for v in resumed.weights] == [v.shape for v in straight.weights]
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
