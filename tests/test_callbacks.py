import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfquant
from model_zoo import small_conv_data, small_conv_model
from tfquant import callbacks as cb
from tfquant.keras import ActivationFakeQuant
from tfquant.keras.train_step import with_hooks
from tfquant.regularizers import Periodic


def small_model():
    return small_conv_model("small")


@pytest.fixture
def data():
    return small_conv_data(0, 48)


def compiled(model, optimizer="adam"):
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class Recorder(keras.callbacks.Callback):
    """Calls `read(model)` after every batch."""

    def __init__(self, read):
        super().__init__()
        self.read, self.values = read, []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(self.read(self.model))


def test_freeze_batch_norm_stops_moving_statistics(data):
    x, y = data
    qmodel = compiled(tfquant.quantize_model(small_model()))
    conv = qmodel.get_layer("conv")
    rec = Recorder(lambda m: np.array(conv.batch_norm.moving_mean.numpy()))
    qmodel.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
               callbacks=[cb.FreezeBatchNorm(after_steps=3), rec])
    means = rec.values
    assert not np.allclose(means[0], means[1]) and not np.allclose(means[1], means[2])
    for later in means[3:]:
        np.testing.assert_array_equal(later, means[2])
    assert conv.batch_norm_frozen


def test_quantization_delay_outputs_float_but_observes(data):
    x, y = data
    qmodel = compiled(tfquant.quantize_model(small_model()))
    quant = qmodel.get_layer("relu_quant")

    def read(model):
        return (float(quant.quantize_enabled.numpy()), float(quant.quantizer_variables["max"].numpy()))

    rec = Recorder(read)
    qmodel.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
               callbacks=[cb.QuantizationDelay(after_steps=2), rec])
    switches = [s for s, _ in rec.values]
    assert switches == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert rec.values[0][1] != 6.0  # the range followed the data while off
    # With the switch off the layer is the identity, in training and inference.
    quant.set_quantize_enabled(False)
    probe = np.linspace(-1, 3, 17, dtype=np.float32).reshape(1, 17)
    np.testing.assert_array_equal(quant(probe, training=True).numpy(), probe)
    np.testing.assert_array_equal(quant(probe, training=False).numpy(), probe)
    quant.set_quantize_enabled(True)
    assert not np.array_equal(quant(probe, training=False).numpy(), probe)
    conv = qmodel.get_layer("logits")
    conv.set_quantize_enabled(weights=False, activations=False)
    # Both switches off: the wrapper computes what its float layer computes.
    features = np.random.default_rng(5).normal(size=(4, conv.layer.kernel.shape[0]))
    features = features.astype(np.float32)
    np.testing.assert_allclose(conv(features, training=True).numpy(),
                               conv.layer(features).numpy(), rtol=1e-6, atol=1e-7)


def test_freeze_quantizer_ranges_stops_range_updates_after_the_steps(data):
    x, y = data
    qmodel = compiled(tfquant.quantize_model(small_model()))
    quant = qmodel.get_layer("gap_quant")
    rec = Recorder(lambda m: float(quant.quantizer_variables["max"].numpy()))
    qmodel.fit(x * np.linspace(1, 3, 48, dtype=np.float32)[:, None, None, None], y,
               batch_size=8, epochs=1, shuffle=False, verbose=0,
               callbacks=[cb.FreezeQuantizerRanges(after_steps=2), rec])
    assert rec.values[0] != rec.values[1]
    assert rec.values[2:] == [rec.values[1]] * 4


def test_bit_width_schedule_retraces_training_forward(data):
    # One full batch per epoch, lr 0: each epoch's loss is the training-mode loss at that
    # epoch's bits. Without the rebuilt train function epochs 1 and 2 would repeat 8 bits.
    x, y = data
    # BN frozen: the folded kernel is scaled by the moving σ, which a training step moves.
    quantized = tfquant.quantize_model(small_model(), tfquant.QuantConfig(
        first_last_bits=None, activation_ema_decay=0.0))
    tfquant.freeze_batch_norm(quantized)
    qmodel = compiled(quantized, keras.optimizers.SGD(0.0))
    schedule = cb.BitWidthSchedule({0: 8, 1: 4, 2: 2})
    history = qmodel.fit(x, y, batch_size=48, epochs=3, verbose=0, callbacks=[schedule])
    assert schedule.changes == [(1, 4), (2, 2)]
    assert qmodel.get_layer("logits").weight_quantizer.num_bits == 2
    losses = history.history["loss"]
    assert len(set(losses)) == 3
    eager = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, qmodel(x, training=True))
    np.testing.assert_allclose(losses[2], float(eager), rtol=1e-5)


def test_bit_width_schedule_reinitializes_lsq(data):
    x, y = data
    qmodel = compiled(tfquant.quantize_model(small_model(), tfquant.QuantConfig(
        weight_quantizer="LSQQuantizer", first_last_bits=None)))
    conv = qmodel.get_layer("conv")
    flags = Recorder(lambda m: float(conv.kernel_variables["kernel"]["initialized"].numpy()))
    step_before = []

    class Before(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            step_before.append(conv.kernel_variables["kernel"]["step"].numpy().copy())

    qmodel.fit(x, y, batch_size=24, epochs=2, verbose=0,
               callbacks=[cb.BitWidthSchedule({0: 8, 1: 3}, reinitialize="data"), flags,
                          Before()])
    assert flags.values == [1.0] * 4
    # Re-initialized from the data at 3 bits: 2·mean|w|/sqrt(3) is much larger than at 8.
    assert np.all(step_before[1] > 5 * step_before[0])
    with pytest.raises(ValueError, match="depend"):
        cb.set_num_bits(tfquant.quantizers.SoftQuantizer(2), {}, 3)


def test_temperature_and_regularizer_schedules_step_once_an_epoch(data):
    x, y = data
    qmodel = tfquant.quantize_model(small_model(), tfquant.QuantConfig(
        weight_quantizer="SoftQuantizer", weight_bits=2, first_last_bits=None))
    hook = Periodic(1.0)
    hooked = compiled(with_hooks(qmodel, [hook]))
    temp = qmodel.get_layer("conv").kernel_variables["kernel"]["temperature"]
    rec = Recorder(lambda m: (float(temp.numpy()), float(hook.strength.numpy())))
    hooked.fit(x, y, batch_size=24, epochs=3, verbose=0, callbacks=[
        cb.TemperatureSchedule(), cb.RegularizerSchedule(hook, lambda e: 0.1 * e), rec])
    np.testing.assert_allclose(rec.values, [(20, 0), (20, 0), (40, .1), (40, .1), (60, .2),
                                            (60, .2)], rtol=1e-6)


def test_quantizer_stats_writes_summaries(tmp_path, data):
    x, y = data
    qmodel = compiled(tfquant.quantize_model(small_model()))
    stats = cb.QuantizerStats(str(tmp_path), sample_batch=x[:8])
    qmodel.fit(x, y, batch_size=24, epochs=1, verbose=0, callbacks=[stats])
    assert stats.last["conv/kernel/weights_sqnr_db"] > 30.0  # 8-bit weights
    assert stats.last["conv/kernel/weights_clipped_fraction"] == 0.0
    assert "relu_quant/activation_sqnr_db" in stats.last
    assert "relu_quant/activation/max" in stats.last
    events = [f for f in os.listdir(tmp_path) if "tfevents" in f]
    assert events
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / events[0])):
        tags.update(v.tag for v in event.summary.value)
    assert "conv/kernel/weights_sqnr_db" in tags and "conv/kernel/weights_hist" in tags


def _schedule_callbacks():
    return [cb.QuantizationDelay(after_steps=2), cb.FreezeBatchNorm(after_steps=4),
            cb.FreezeQuantizerRanges(after_steps=5), cb.BitWidthSchedule({0: 8, 1: 4})]


def test_resumed_training_continues_the_schedules(tmp_path, data):
    x, y = data
    float_model = small_model()
    weights = float_model.get_weights()

    def fresh():
        model = small_model()
        model.set_weights(weights)
        return compiled(tfquant.quantize_model(model, tfquant.QuantConfig(
            first_last_bits=None)))

    uninterrupted = fresh()
    uninterrupted.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                      callbacks=_schedule_callbacks())

    first = fresh()
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=_schedule_callbacks())
    path = str(tmp_path / "mid.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert int(resumed.optimizer.iterations.numpy()) == 3
    resumed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                callbacks=_schedule_callbacks())

    assert resumed.get_layer("conv").batch_norm_frozen
    assert resumed.get_layer("logits").weight_quantizer.num_bits == 4
    assert float(resumed.get_layer("relu_quant").quantize_enabled.numpy()) == 1.0
    names = [v.path for v in uninterrupted.weights]
    for name, a, b in zip(names, uninterrupted.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert isinstance(resumed.get_layer("relu_quant"), ActivationFakeQuant)
