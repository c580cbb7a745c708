"""Transformer layers: EinsumDense, MultiHeadAttention, Embedding and whole blocks, from
quantize_model through full-integer LiteRT."""

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant.keras import QuantizedConvolution
from tfquant.keras.layers.embedding import QuantizedEmbedding

AT_16_BITS = tfquant.QuantConfig(activation_bits=16)


def relative_error(model, qmodel, x):
    reference = model.predict(x, verbose=0)
    return float(np.max(np.abs(qmodel.predict(x, verbose=0) - reference))
                 / np.max(np.abs(reference)))


def ptq_export(model, x, config=None):
    qmodel = tfquant.ptq.quantize(model, x, config=config, verbose=0)
    return qmodel, tfquant.export_tflite(qmodel, representative_data=x)


@pytest.mark.parametrize("equation, output_shape, bias_axes, input_shape", [
    ("abc,cd->abd", (6, 12), "d", (6, 16)),
    ("abc,cde->abde", (6, 2, 8), "de", (6, 16)),
    ("abc,cde->abde", (6, 2, 8), "e", (6, 16)),
    ("abcd,cde->abe", (6, 12), "e", (6, 2, 8)),
    ("...b,bc->...c", 12, "c", (6, 16)),
])
def test_einsum_dense_is_a_quantized_dense(equation, output_shape, bias_axes, input_shape):
    inputs = keras.Input(input_shape)
    einsum = layers.EinsumDense(equation, output_shape, bias_axes=bias_axes, name="einsum")
    x = einsum(inputs)
    outputs = layers.Dense(3)(layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    einsum.set_weights([np.random.randn(*w.shape).astype(np.float32)
                        for w in einsum.get_weights()])
    x = np.random.randn(64, *input_shape).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    assert isinstance(qmodel.get_layer("einsum"), QuantizedConvolution)
    assert report.float_ops == [] and "FULLY_CONNECTED" in report.op_counts
    # Two FULLY_CONNECTED in a row with large random weights: the int32 bias step and
    # the fixed-point requantization leave up to 3 LSB (measured).
    assert report.max_abs_diff_lsb <= 3.001
    at16 = tfquant.ptq.quantize(model, x, config=AT_16_BITS, verbose=0)
    assert relative_error(model, at16, x) < 0.02


def test_einsum_dense_that_is_not_a_dense_is_refused():
    inputs = keras.Input((6, 16))
    outputs = layers.EinsumDense("abc,dc->abd", (6, 4), name="einsum")(inputs)
    with pytest.raises(ValueError, match=r"'einsum' \(EinsumDense\): equation 'abc,dc->abd'"):
        tfquant.quantize_model(keras.Model(inputs, outputs))


def attention_model(cross=False, dropout=0.0):
    query = keras.Input((6, 16), name="query")
    inputs = [query]
    if cross:
        context = keras.Input((5, 12), name="context")
        inputs.append(context)
    attention = layers.MultiHeadAttention(2, 8, dropout=dropout, name="mha")
    x = attention(query, context) if cross else attention(query, query)
    outputs = layers.Dense(3)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs if cross else query, outputs)


@pytest.mark.parametrize("cross", [False, True])
def test_multi_head_attention_matches_float_and_exports_integer(cross):
    model = attention_model(cross)
    x = np.random.randn(64, 6, 16).astype(np.float32)
    data = [x, np.random.randn(64, 5, 12).astype(np.float32)] if cross else x
    at16 = tfquant.ptq.quantize(model, data, config=AT_16_BITS, verbose=0)
    assert relative_error(model, at16, data) < 0.02
    qmodel, report = ptq_export(model, data)
    assert report.float_ops == []
    assert report.op_counts["BATCH_MATMUL"] == 2 and report.op_counts["SOFTMAX"] == 1
    assert report.op_counts["FULLY_CONNECTED"] >= 4
    assert report.max_abs_diff_lsb <= 2.001
    # The integer-exact model equals LiteRT (two inputs: given by name, in any order).
    assert [c.differ_from_integer for c in report.output_checks] == [0]
    names = {layer.name for layer in qmodel.layers}
    assert {"mha_query", "mha_key", "mha_value", "mha_output"} <= names


def test_attention_trains_saves_and_reloads(tmp_path):
    model = attention_model(dropout=0.1)
    qmodel = tfquant.quantize_model(model)
    assert "mha_dropout" in {layer.name for layer in qmodel.layers}
    x = np.random.randn(64, 6, 16).astype(np.float32)
    y = np.random.randint(0, 3, 64)
    qmodel.compile(optimizer="adam",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = qmodel.get_layer("mha_query").layer.kernel.numpy().copy()
    qmodel.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(before, qmodel.get_layer("mha_query").layer.kernel.numpy())
    qmodel.save(tmp_path / "q.keras")
    reloaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))


def test_masked_attention_is_refused_with_the_fix():
    inputs = keras.Input((6, 16))
    x = layers.MultiHeadAttention(2, 8, name="mha")(inputs, inputs, use_causal_mask=True)
    model = keras.Model(inputs, layers.Dense(2)(x))
    with pytest.raises(ValueError, match="'mha'.*use_causal_mask.*float_layers"):
        tfquant.quantize_model(model)


def token_transformer(vocabulary=50, length=12, dim=16):
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = layers.Embedding(vocabulary, dim, name="embedding")(tokens)
    h = layers.LayerNormalization()(x)
    x = layers.Add()([x, layers.MultiHeadAttention(2, dim // 2)(h, h)])
    h = layers.LayerNormalization()(x)
    h = layers.Dense(2 * dim, activation="gelu")(h)
    x = layers.Add()([x, layers.Dense(dim)(h)])
    outputs = layers.Dense(3)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(tokens, outputs)


def test_token_transformer_goes_to_full_integer_litert():
    model = token_transformer()
    x = np.random.randint(0, 50, (64, 12)).astype(np.int32)
    qmodel, report = ptq_export(model, x)
    assert isinstance(qmodel.get_layer("embedding"), QuantizedEmbedding)
    assert report.float_ops == [] and "NEG" not in report.op_counts
    tables = [w for w in report.summary.weight_tensors().values() if tuple(w.shape) == (50, 16)]
    assert [w.type_name for w in tables] == ["INT8"]
    for op in ("GATHER", "BATCH_MATMUL", "SOFTMAX", "GELU", "RSQRT"):
        assert op in report.op_counts, op
    assert report.max_abs_diff_lsb <= 3.001
    at16 = tfquant.ptq.quantize(model, x, config=AT_16_BITS, verbose=0)
    assert relative_error(model, at16, x) < 0.03


def test_embedding_with_mask_zero_is_refused():
    tokens = keras.Input((4,), dtype="int32")
    x = layers.Embedding(10, 4, mask_zero=True, name="embedding")(tokens)
    model = keras.Model(tokens, layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))
    with pytest.raises(ValueError, match="'embedding' \\(Embedding\\): mask_zero=True"):
        tfquant.quantize_model(model)


def test_a_reloaded_model_quantizes_although_new_operations_reuse_its_names(tmp_path):
    """A model loaded from a file names its layers without advancing Keras's name
    counter: its "reshape" layer and the attention's new keras.ops.reshape clash."""
    inputs = keras.Input((4, 4, 8))
    x = layers.Reshape((16, 8), name="reshape")(inputs)
    x = layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))
    model.save(tmp_path / "float.keras")
    keras.utils.clear_session()  # a new process: the name counters start again
    reloaded = keras.saving.load_model(tmp_path / "float.keras")
    qmodel = tfquant.quantize_model(reloaded)
    names = [op.name for op in qmodel.operations]
    assert len(names) == len(set(names))
    x = np.random.randn(4, 4, 4, 8).astype(np.float32)
    assert qmodel(x).shape == (4, 2)


@pytest.mark.parametrize("options", [{"data_free": True}, {"bias_correction": "empirical"},
                                     {"rounding": "adaround", "adaround_iterations": 20}])
def test_ptq_transformations_take_transformer_models(options):
    model = token_transformer()
    x = np.random.randint(0, 50, (64, 12)).astype(np.int32)
    qmodel = tfquant.ptq.quantize(model, x, verbose=0, **options)
    assert relative_error(model, qmodel, x) < 0.1
