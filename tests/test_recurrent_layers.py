"""LSTM, GRU, Bidirectional and TimeDistributed(Dense): unrolled and quantized by
`quantize_model` (tfquant.keras.layers.recurrent), exported to full-integer LiteRT."""

import os

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.quantizers import CappedRangeQuantizer

STEPS, FEATURES, UNITS, CLASSES = 8, 12, 16, 4


def _classifier(kind):
    """A small sequence classifier on (STEPS, FEATURES) inputs with a Dense(CLASSES) head."""
    inputs = keras.Input((STEPS, FEATURES), name="sequence")
    if kind == "lstm":
        x = layers.LSTM(UNITS, name="lstm")(inputs)
    elif kind == "gru":
        x = layers.GRU(UNITS, name="gru")(inputs)
    elif kind == "gru_reset_before":
        x = layers.GRU(UNITS, reset_after=False, name="gru")(inputs)
    elif kind == "rnn_lstm_cell":
        x = layers.RNN(layers.LSTMCell(UNITS), name="rnn")(inputs)
    elif kind == "sequences":
        # The backward sequence comes out in processing order (as Keras returns it);
        # a per-step Dense and a pooling read it.
        x = layers.LSTM(UNITS, return_sequences=True, go_backwards=True, name="lstm")(inputs)
        x = layers.TimeDistributed(layers.Dense(8, activation="relu"), name="per_step")(x)
        x = layers.GlobalAveragePooling1D(name="pool")(x)
    elif kind == "bidirectional":
        x = layers.Bidirectional(layers.GRU(UNITS, return_sequences=True, reset_after=False),
                                 name="bidirectional")(inputs)
        x = layers.GlobalAveragePooling1D(name="pool")(x)
    elif kind == "bidirectional_sum_states":
        x, *states = layers.Bidirectional(layers.LSTM(UNITS, return_state=True),
                                          merge_mode="sum", name="bidirectional")(inputs)
        x = layers.Concatenate(name="join")([x] + states)
    elif kind == "states":
        # A backward LSTM's states: h starts a GRU over its per-step Dense outputs, c
        # reaches the head.
        sequence, hidden, cell = layers.LSTM(UNITS, return_sequences=True, return_state=True,
                                             go_backwards=True, name="lstm")(inputs)
        sequence = layers.TimeDistributed(layers.Dense(8, activation="relu"),
                                          name="per_step")(sequence)
        x = layers.GRU(UNITS, name="gru")(sequence, initial_state=[hidden])
        x = layers.Concatenate(name="join")([x, cell])
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name=kind)


def _data(count=256, seed=0):
    return np.random.default_rng(seed).normal(size=(count, STEPS, FEATURES)).astype(np.float32)


def _rounded_weights(kernel):
    """`kernel` on the grid of the export: symmetric narrow-range 8 bits per output
    channel (the last axis)."""
    limit = np.maximum(np.abs(kernel).max(axis=tuple(range(kernel.ndim - 1))), 1e-8)
    step = limit / 127.0
    return np.clip(np.round(kernel / step), -127, 127) * step


def _float_with_rounded_weights(model):
    """A float copy of `model` whose kernels (Dense, recurrent kernels) are rounded as
    the quantized model rounds them: what it computes without activation quantization."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if isinstance(layer, layers.Bidirectional):
            kernels = [c.kernel for c in (layer.forward_layer.cell, layer.backward_layer.cell)]
            kernels += [c.recurrent_kernel for c in (layer.forward_layer.cell,
                                                      layer.backward_layer.cell)]
        elif isinstance(layer, layers.RNN):
            kernels = [layer.cell.kernel, layer.cell.recurrent_kernel]
        elif isinstance(layer, layers.TimeDistributed):
            kernels = [layer.layer.kernel]
        elif isinstance(layer, layers.Dense):
            kernels = [layer.kernel]
        else:
            kernels = []
        for kernel in kernels:
            kernel.assign(_rounded_weights(keras.ops.convert_to_numpy(kernel)))
    return copy


def _predict(model, x):
    return np.asarray(model.predict(x, batch_size=128, verbose=0))


EXPORTED = ("lstm", "gru", "bidirectional", "states")


@pytest.fixture(scope="module")
def exported():
    """{kind: (float model, PTQ W8A8 model, export report)} for the exported models."""
    results = {}
    x = _data()
    for kind in EXPORTED:
        keras.utils.set_random_seed(7)
        model = _classifier(kind)
        quantized = tfquant.ptq.quantize(model, x, verbose=0)
        report = tfquant.export_tflite(quantized, representative_data=x)
        results[kind] = (model, quantized, report)
    return results


# -- (a) the unrolled recurrence is the Keras layer's function ------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_reset_before", "rnn_lstm_cell",
                                  "sequences", "bidirectional", "bidirectional_sum_states",
                                  "states"])
def test_16_bit_quantized_model_matches_float(kind):
    model = _classifier(kind)
    x = _data(128)
    quantized = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                     verbose=0)
    got = _predict(quantized, x)
    # Against the float model with the same 8-bit per-channel weights only the 16-bit
    # activations differ: a step is range/65535 (≈ 1e-4 on gate sums of ±4), rounded
    # after each of ~12 ops per time step for 8 steps and carried on by the states, so
    # a few 1e-4 at the logits (measured 1.1e-4 to 1.9e-3); a wrong gate order, bias or
    # time order is off by ~0.1.
    reference = _predict(_float_with_rounded_weights(model), x)
    np.testing.assert_allclose(got, reference, atol=4e-3)
    # Against the float model itself the 8-bit weights add their rounding (≤ 1/254 of
    # each output channel's largest weight): measured 1.9e-3 to 6.4e-3 on logits of
    # ±0.4 to ±1.3.
    np.testing.assert_allclose(got, _predict(model, x), atol=0.03)


# -- (b) full-integer export, LiteRT agrees with Keras ----------------------------------


@pytest.mark.parametrize("kind", EXPORTED)
def test_exports_full_integer_and_litert_agrees(exported, kind):
    model, quantized, report = exported[kind]
    assert report.float_ops == []
    assert "WHILE" not in report.op_counts
    assert report.op_counts["UNPACK"] >= 1
    # LiteRT against the Keras model on 256 random sequences: measured 0–2 output LSB
    # and 98.8–100 % equal predictions (random weights: close logits).
    assert report.max_abs_diff_lsb <= 3.0
    assert report.argmax_agreement >= 0.98
    # The W8A8 model still computes the float model's function (random weights;
    # measured 96.9–99.2 % equal predictions).
    x = _data()
    agreement = np.mean(_predict(model, x).argmax(-1) == _predict(quantized, x).argmax(-1))
    assert agreement >= 0.95


def test_steps_share_one_set_of_weights(exported):
    _, quantized, report = exported["lstm"]
    # One FULLY_CONNECTED for the input projection of all steps, one per step after the
    # first for the hidden state (the zero initial state has none), one for the head...
    assert report.op_counts["FULLY_CONNECTED"] == 1 + (STEPS - 1) + 1
    # ...and their filters stored once: input, recurrent and head kernels.
    filters = [name for name, info in report.summary.weight_tensors().items()
               if "FULLY_CONNECTED" in info.used_by and info.type_name == "INT8"]
    assert len(filters) == 3
    trainable = sum(int(np.prod(w.shape)) for w in quantized.trainable_weights)
    original = sum(int(np.prod(w.shape)) for w in exported["lstm"][0].trainable_weights)
    assert trainable == original


def test_cell_state_range_is_capped_at_8_bits(exported):
    _, quantized, _ = exported["lstm"]
    for name in ("lstm_cell_quant", "lstm_forget_cell_quant"):
        assert isinstance(quantized.get_layer(name).quantizer, CappedRangeQuantizer)
    config = tfquant.QuantConfig(activation_bits=16)
    wide = tfquant.quantize_model(_classifier("lstm"), config).get_layer("lstm_cell_quant")
    assert type(wide.quantizer).__name__ == "MovingAverageQuantizer"
    # A calibrated ±20 is used as ±4 (the variables keep ±20).
    layer = ActivationFakeQuant(CappedRangeQuantizer(4.0))
    layer.build((None, 3))
    layer.quantizer_variables["min"].assign(-20.0)
    layer.quantizer_variables["max"].assign(20.0)
    out = keras.ops.convert_to_numpy(layer(np.array([[-10.0, 0.5, 10.0]], np.float32)))
    np.testing.assert_allclose(out, [[-4.0, 0.5, 4.0]], atol=8.0 / 255)


# -- (c) save and load ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["states", "bidirectional"])
def test_save_and_load_round_trip(exported, kind, tmp_path):
    _, quantized, _ = exported[kind]
    path = os.path.join(tmp_path, f"{kind}.keras")
    quantized.save(path)
    loaded = keras.saving.load_model(path)
    x = _data(64, seed=1)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(quantized, x))


# -- (d) what is refused, and how ----------------------------------------------------


def test_explicit_mask_is_refused():
    sequence = keras.Input((STEPS, FEATURES))
    mask = keras.Input((STEPS,), dtype="bool")
    outputs = layers.Dense(CLASSES)(layers.LSTM(UNITS, name="lstm")(sequence, mask=mask))
    with pytest.raises(ValueError, match=r"'lstm' \(LSTM\): a masked input"):
        tfquant.quantize_model(keras.Model([sequence, mask], outputs))


def test_embedding_mask_is_refused():
    tokens = keras.Input((STEPS,), dtype="int32")
    x = layers.Embedding(20, FEATURES, mask_zero=True)(tokens)
    outputs = layers.Dense(CLASSES)(layers.GRU(UNITS, name="gru")(x))
    with pytest.raises(ValueError, match=r"'gru' \(GRU\): a masked input"):
        tfquant.quantize_model(keras.Model(tokens, outputs))


def test_unknown_sequence_length_and_other_cells_are_refused():
    inputs = keras.Input((None, FEATURES))
    with pytest.raises(ValueError, match="unknown length"):
        tfquant.quantize_model(keras.Model(inputs, layers.LSTM(UNITS)(inputs)))
    inputs = keras.Input((STEPS, FEATURES))
    with pytest.raises(ValueError, match="SimpleRNNCell; tfquant unrolls LSTM and GRU"):
        tfquant.quantize_model(keras.Model(inputs, layers.SimpleRNN(UNITS)(inputs)))
    with pytest.raises(ValueError, match="TimeDistributed over Conv1D"):
        tfquant.quantize_model(keras.Model(inputs, layers.TimeDistributed(
            layers.Conv1D(2, 3))(layers.Reshape((STEPS, FEATURES, 1))(inputs))))


# -- (e) QAT ----------------------------------------------------------------------------


def test_qat_trains_the_shared_weights():
    model = _classifier("gru")
    quantized = tfquant.quantize_model(model)
    quantized.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _data(64)
    y = np.random.default_rng(0).integers(0, CLASSES, size=64)
    kernel = quantized.get_layer("gru_recurrent_projection").layer.kernel
    before = keras.ops.convert_to_numpy(kernel).copy()
    history = quantized.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(keras.ops.convert_to_numpy(kernel), before)
    assert np.all(np.isfinite(_predict(quantized, x)))
