"""The quantizer families in Keras models: quantize_model keeps unsigned quantizers
off outputs that may be negative, and every family trains in fit() and survives
a Keras save and load."""

import keras
import numpy as np
import pytest

import tfquant
from tfquant.keras import quantizer_slots
from tfquant.keras import ActivationFakeQuant, QuantizedConvolution
from tfquant.quantizers import (BinaryQuantizer, DoReFaActivationQuantizer,
                                DoReFaWeightQuantizer, LQNetsQuantizer, LSQPlusQuantizer,
                                LSQQuantizer, PACTQuantizer, SAWBQuantizer, SoftQuantizer,
                                TernaryQuantizer, TQTQuantizer, TTQQuantizer,
                                deserialize_quantizer, serialize_quantizer)


def test_unsigned_quantizers_stay_off_outputs_that_may_be_negative():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    branch = keras.layers.Conv2D(4, 1, name="branch")(x)  # signed, added to x
    x = keras.layers.ReLU(name="relu")(keras.layers.Add(name="add")([x, branch]))
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    for name in ("PACTQuantizer", "DoReFaActivationQuantizer"):
        config = tfquant.QuantConfig(activation_quantizer=name, activation_bits=4)
        qmodel = tfquant.quantize_model(model, config)
        chosen = {slot.layer.name: type(slot.quantizer).__name__
                  for slot in quantizer_slots(qmodel, weights=False)}
        assert chosen["branch"] == chosen["logits"] == "MovingAverageQuantizer", chosen
        assert chosen["conv"] == name, chosen


# -- Keras training and saving -------------------------------------------------------------

PAIRS = [  # (weight quantizer, activation quantizer): each family in both roles it has
    (LSQQuantizer(4, per_channel=True), LSQQuantizer(4, signed=False)),
    (LSQPlusQuantizer(4, kind="weights"), LSQPlusQuantizer(4, signed=False)),
    (SAWBQuantizer(2, per_channel=True), PACTQuantizer(4, alpha_init=4.0)),
    (TQTQuantizer(4), TQTQuantizer(4, signed=False)),
    (DoReFaWeightQuantizer(2), DoReFaActivationQuantizer(2)),
    (TernaryQuantizer(per_channel=True), BinaryQuantizer()),
    (TTQQuantizer(per_channel=True), LQNetsQuantizer(2, signed=False, per_channel=False)),
    (BinaryQuantizer("per_channel_mean"), SoftQuantizer(2, signed=False)),
    (LQNetsQuantizer(2), PACTQuantizer(8, per_channel=True)),
    (SoftQuantizer(2), LSQQuantizer(8, signed=False, stochastic_rounding=True)),
]


def small_model(weight_quantizer, activation_quantizer):
    def fresh(q):
        return deserialize_quantizer(serialize_quantizer(q))

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Flatten(),
        QuantizedConvolution(keras.layers.Dense(16, activation="relu"),
                             weight_quantizer=fresh(weight_quantizer)),
        ActivationFakeQuant(fresh(activation_quantizer), name="act"),
        QuantizedConvolution(keras.layers.Dense(10), weight_quantizer=fresh(weight_quantizer)),
    ])


def quantizer_state(model):
    return {v.path: v.numpy().copy() for layer in model.layers for v in layer.weights
            if v.path.rsplit("/", 1)[-1] not in ("kernel", "bias")
            and not v.path.endswith("initialized")}


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{type(p[0]).__name__}-"
                         f"{type(p[1]).__name__}")
def test_trains_in_fit_and_survives_keras_save(pair, fashion_mnist_small, tmp_path):
    (x, y), _ = fashion_mnist_small
    x, y = x[:512], y[:512]
    model = small_model(*pair)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model(x[:64], training=True)  # initializes learned ranges from data
    before = quantizer_state(model)
    history = model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    after = quantizer_state(model)
    learned = [k for k in before if not k.endswith(("steps", "biases", "temperature"))]
    changed = [k for k in learned if not np.array_equal(before[k], after[k])]
    if learned:
        assert changed, f"no quantizer parameter changed: {learned}"
    if isinstance(pair[1], PACTQuantizer) and pair[1].regularization:
        model(x[:8], training=True)
        assert model.losses
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x[:32], verbose=0),
                                  model.predict(x[:32], verbose=0))
    for layer, other in zip(model.layers, loaded.layers):
        for q in ("weight_quantizer", "quantizer"):
            if hasattr(layer, q):
                assert getattr(other, q).get_config() == getattr(layer, q).get_config()
