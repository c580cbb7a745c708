"""run_litert / output_lsb / compare_outputs against real converted models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.export import litert_runner
from tfquant.export.flatbuffer import inspect_flatbuffer
from tfquant.export.litert_runner import compare_outputs, output_lsb, run_litert


class ActFakeQuant(keras.layers.Layer):
    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_vars(x, -4.0, 4.0, num_bits=8)


def _convert(model, **attributes):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    for name, value in attributes.items():
        setattr(converter, name, value)
    return converter.convert()


def _keras(model, inputs):
    outputs = model(inputs, training=False)
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


@pytest.fixture(scope="module")
def rng():
    keras.utils.set_random_seed(0)  # fixed weights: the agreement figures are exact, not flaky
    return np.random.RandomState(0)


@pytest.fixture(scope="module")
def int8_io(rng):
    inp = keras.Input((6,))
    x = keras.layers.Dense(16, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(4)(x))
    data = rng.randn(300, 6).astype(np.float32)

    def representative():
        for i in range(len(data)):  # cover the whole evaluation range: no input clipping
            yield [data[i : i + 1]]

    tflite = _convert(
        model,
        optimizations=[tf.lite.Optimize.DEFAULT],
        representative_dataset=representative,
        inference_input_type=tf.int8,
        inference_output_type=tf.int8,
    )
    return model, tflite, data


@pytest.fixture(scope="module")
def qat(rng):
    inp = keras.Input((8, 8, 3))
    x = ActFakeQuant()(inp)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = ActFakeQuant()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = ActFakeQuant()(keras.layers.Dense(10)(x))
    model = keras.Model(inp, x)
    tflite = _convert(model, optimizations=[tf.lite.Optimize.DEFAULT])
    return model, tflite, rng.uniform(-2, 2, (100, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def two_in_two_out():
    a = keras.Input((4,), name="zeta")
    b = keras.Input((3,), name="alpha")
    x = keras.layers.Concatenate()([a, b])
    outputs = [keras.layers.Dense(2, name="first")(x), keras.layers.Dense(3, name="second")(x)]
    model = keras.Model([a, b], outputs)
    return model, _convert(model)


def test_int8_input_and_output_are_quantized_and_dequantized(int8_io):
    model, tflite, data = int8_io
    main = inspect_flatbuffer(tflite).main
    assert main.tensors[main.inputs[0]].type_name == "INT8"
    assert main.tensors[main.outputs[0]].type_name == "INT8"
    (got,) = run_litert(tflite, data, batch_size=64)
    assert got.dtype == np.float32 and got.shape == (300, 4)
    (lsb,) = output_lsb(tflite)
    assert lsb == pytest.approx(main.tensors[main.outputs[0]].quantization.scales[0])
    stats = compare_outputs(_keras(model, data)[0], got, lsb)
    assert stats["max_abs_diff_lsb"] <= 4
    assert stats["max_abs_diff"] == pytest.approx(stats["max_abs_diff_lsb"] * lsb)
    assert stats["argmax_agreement"] >= 0.95

    # Already-quantized int8 values pass through unchanged.
    q = main.tensors[main.inputs[0]].quantization
    quantized = np.clip(np.round(data / q.scales[0]) + q.zero_points[0], -128, 127).astype(np.int8)
    (same,) = run_litert(tflite, quantized)
    assert np.abs(same - got).max() <= lsb + 1e-6
    with pytest.raises(ValueError, match="int16"):
        run_litert(tflite, quantized.astype(np.int16))


@pytest.mark.parametrize("io_type", ["uint8", "int16"])
def test_uint8_and_int16_io_models_run_and_match_keras(io_type, int8_io):
    model, _, data = int8_io
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([data[i : i + 1]] for i in range(len(data)))
    converter.inference_input_type = converter.inference_output_type = tf.as_dtype(io_type)
    if io_type == "int16":
        int16x8 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        converter.target_spec.supported_ops = [int16x8]
    tflite = converter.convert()
    main = inspect_flatbuffer(tflite).main
    assert main.tensors[main.inputs[0]].type_name == io_type.upper()
    (got,) = run_litert(tflite, data)
    # int16x8 error is set by the int8 weights, far above the int16 output LSB:
    # compare in absolute terms.
    stats = compare_outputs(_keras(model, data)[0], got, output_lsb(tflite)[0])
    assert stats["max_abs_diff"] < 0.06 and stats["mean_abs_diff"] < 0.01


def test_qat_model_matches_keras_within_an_lsb(qat):
    model, tflite, data = qat
    (lsb,) = output_lsb(tflite)  # float output; the LSB is that of the DEQUANTIZE input
    assert lsb == pytest.approx(8.0 / 255, rel=1e-3)
    (got,) = run_litert(tflite, data)
    stats = compare_outputs(_keras(model, data)[0], got, lsb)
    assert stats["max_abs_diff_lsb"] <= 2
    # Both outputs sit on the same 8-bit grid; a 1-LSB step flips near-ties.
    assert stats["argmax_agreement"] >= 0.8


def test_float_model_has_no_lsb(two_in_two_out):
    model, tflite = two_in_two_out
    assert output_lsb(tflite) == [None, None]
    x = np.ones((3, 2))
    stats = compare_outputs(x, x + 0.5, None)
    assert stats["max_abs_diff_lsb"] is None and stats["max_abs_diff"] == 0.5


def test_multi_input_multi_output_in_keras_order(two_in_two_out, rng):
    model, tflite = two_in_two_out
    a = rng.randn(37, 4).astype(np.float32)
    b = rng.randn(37, 3).astype(np.float32)
    expected = _keras(model, [a, b])
    # The converter reverses the outputs in the subgraph; the signature keeps Keras order.
    main = inspect_flatbuffer(tflite).main
    assert [main.tensors[i].shape[-1] for i in main.outputs] == [3, 2]
    for outputs in (
        run_litert(tflite, [a, b], batch_size=8),  # 37 = 4 * 8 + 5: short last batch
        run_litert(tflite, (a, b.astype(np.float64)), batch_size=1),
        run_litert(tflite, {"alpha": b, "zeta": a}),
    ):
        assert [o.shape for o in outputs] == [(37, 2), (37, 3)]
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_clear_errors_for_mismatched_inputs(two_in_two_out):
    _, tflite = two_in_two_out
    a = np.zeros((5, 4), np.float32)
    b = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"2 input\(s\).*\[N, 4\].*\[N, 3\].*but 1 array"):
        run_litert(tflite, [a])
    with pytest.raises(ValueError, match=r"input 0 .*\[N, 4\].*got an array of shape \(5, 3\)"):
        run_litert(tflite, [b, a])
    with pytest.raises(ValueError, match="add a batch dimension"):
        run_litert(tflite, [a[0], b])
    with pytest.raises(ValueError, match="different numbers of samples"):
        run_litert(tflite, [a, b[:4]])
    with pytest.raises(ValueError, match="not numeric"):
        run_litert(tflite, [a.astype(str), b])
    with pytest.raises(ValueError, match="unknown model input"):
        run_litert(tflite, {"zeta": a, "beta": b})
    with pytest.raises(ValueError, match="TFLite flatbuffer"):
        run_litert(tflite[:100], [a, b])


def test_any_batch_size_gives_the_outputs_of_single_samples(two_in_two_out):
    _, tflite = two_in_two_out
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(50, 4)).astype(np.float32),
              rng.normal(size=(50, 3)).astype(np.float32)]
    single = run_litert(tflite, arrays, batch_size=1)
    for batch_size in (32, 50, 64):  # a tail of 18, one whole batch, a batch beyond the data
        outputs = run_litert(tflite, arrays, batch_size=batch_size)
        assert [o.shape[0] for o in outputs] == [50, 50]
        for got, want in zip(outputs, single):
            np.testing.assert_array_equal(got, want)


class FixedBatchReshape(keras.layers.Layer):
    # A batch of 1 baked into the graph: resizing the input fails at allocation.
    def call(self, x):
        return tf.reshape(x, [1, 2, 4])


class FoldBatch(keras.layers.Layer):
    # Resizing succeeds but the batch disappears from the output: caught by the
    # output batch-dimension check.
    def call(self, x):
        return tf.reshape(x, [-1])


@pytest.mark.parametrize("layer, shape", [(FixedBatchReshape, (10, 2, 4)), (FoldBatch, (80,))])
def test_falls_back_to_the_model_batch_when_resize_fails(layer, shape, rng):
    inp = keras.Input((6,), batch_size=1)
    model = keras.Model(inp, layer()(keras.layers.Dense(8)(inp)))
    tflite = _convert(model)
    data = rng.randn(10, 6).astype(np.float32)
    (got,) = run_litert(tflite, data, batch_size=4)
    assert got.shape == shape
    want = np.concatenate([_keras(model, data[i : i + 1])[0] for i in range(10)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_empty_input_gives_empty_outputs(two_in_two_out):
    _, tflite = two_in_two_out
    outputs = run_litert(tflite, [np.zeros((0, 4), np.float32), np.zeros((0, 3), np.float32)])
    assert [o.shape for o in outputs] == [(0, 2), (0, 3)]


def test_compare_outputs_gives_diffs_in_lsb_and_argmax_agreement():
    ref = np.array([[0.0, 1.0, 0.2], [0.5, 0.1, 0.0]], np.float32)
    got = np.array([[0.0, 0.9, 0.2], [0.5, 0.6, 0.0]], np.float32)
    stats = compare_outputs(ref, got, lsb=0.25)
    assert stats["max_abs_diff"] == pytest.approx(0.5)
    assert stats["max_abs_diff_lsb"] == pytest.approx(2.0)
    assert stats["mean_abs_diff"] == pytest.approx(0.6 / 6)
    assert stats["argmax_agreement"] == pytest.approx(0.5)
    assert compare_outputs(ref[:, :1], got[:, :1], None)["argmax_agreement"] is None
    with pytest.raises(ValueError, match="different shapes"):
        compare_outputs(ref, got[:1], 0.1)
