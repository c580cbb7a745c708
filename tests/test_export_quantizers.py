"""Every quantizer through export_tflite: exact integer grids where they exist, a clear
error (with the nearest-grid fallback's measured error) where they don't."""

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant.export import ExportError
from tfquant.export.integer_grid import find_integer_grid, nearest_int8_grid


def small_model():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.DepthwiseConv2D(3, name="dw")(x)
    x = layers.ReLU(name="relu_dw")(x)
    outputs = layers.Dense(4, name="dense")(layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def trained(config, steps=3):
    keras.utils.set_random_seed(3)
    qmodel = tfquant.quantize_model(small_model(), config)
    qmodel.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = np.random.rand(64, 8, 8, 3).astype(np.float32)
    y = np.random.randn(64, 4).astype(np.float32)
    qmodel.fit(x, y, epochs=steps, batch_size=16, verbose=0)
    tfquant.freeze_batch_norm(qmodel)
    qmodel.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return qmodel, x


EXPORTABLE = [
    ("MinMaxWeightQuantizer", "MovingAverageQuantizer", 8, 8),
    ("LSQQuantizer", "LSQQuantizer", 4, 8),
    ("LSQPlusQuantizer", "LSQPlusQuantizer", 4, 8),
    ("SAWBQuantizer", "PACTQuantizer", 4, 8),
    ("TQTQuantizer", "TQTQuantizer", 3, 8),
    ("LSQQuantizer", "DoReFaActivationQuantizer", 6, 8),
    ("TernaryQuantizer", "PACTQuantizer", 2, 4),
    ("DoReFaWeightQuantizer", "MovingAverageQuantizer", 2, 8),
    ({"class_name": "BinaryQuantizer", "config": {"scale": "per_channel_mean"}},
     "MovingAverageQuantizer", 8, 8),
]


@pytest.mark.parametrize("weights, activations, w_bits, a_bits", EXPORTABLE,
                         ids=lambda v: v if isinstance(v, str) else str(v)[:20])
def test_exportable_quantizers_agree_with_litert(weights, activations, w_bits, a_bits):
    config = tfquant.QuantConfig(weight_quantizer=weights, activation_quantizer=activations,
                                 weight_bits=w_bits, activation_bits=a_bits,
                                 first_last_bits=None)
    qmodel, x = trained(config)
    report = tfquant.export_tflite(qmodel, representative_data=x)
    assert report.float_ops == []
    filters = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    kernels = [w.type_name for w in report.summary.weight_tensors().values()
               if w.type_name in ("INT4", "INT8") and filters & set(w.used_by)]
    assert len(kernels) == 3
    expected = "INT4" if w_bits <= 4 else "INT8"
    if isinstance(weights, dict):  # XNOR ±s per channel: INT4 integers ±1
        expected = "INT4"
    if a_bits < 8:  # low_bit_weights="auto": int8 after sub-8-bit activations
        expected = "INT8"
    assert set(kernels) == {expected}, report.weight_dtypes
    # The signed output of the last Dense (range ≈ ±0.8, 1 LSB ≈ 0.007) sums 128 inputs:
    # the 1-LSB rounding differences of ~1 % of them (LSB 0.04) reach a few output LSB.
    assert report.max_abs_diff_lsb <= 6, report


def test_non_integer_levels_are_refused_with_the_fallback_error_then_exported():
    config = tfquant.QuantConfig(weight_quantizer="TTQQuantizer", first_last_bits=None)
    qmodel, x = trained(config, steps=5)
    # TTQ trains W_p and W_n apart, so {-W_n, 0, W_p} is no integer grid.
    with pytest.raises(ExportError) as info:
        tfquant.export_tflite(qmodel, representative_data=x)
    message = str(info.value)
    assert "conv.kernel: TTQQuantizer levels are not integer multiples" in message
    assert "nearest int8 grid: relative error" in message and "nonuniform='nearest_grid'" in message
    report = tfquant.export_tflite(qmodel, representative_data=x, nonuniform="nearest_grid")
    assert any("rounded to the nearest int8 grid" in note for note in report.notes)
    assert report.float_ops == []


def test_activation_quantizers_without_integer_form_are_refused():
    config = tfquant.QuantConfig(activation_quantizer="SoftQuantizer", activation_bits=2,
                                 first_last_bits=None)
    qmodel = tfquant.quantize_model(small_model(), config)
    with pytest.raises(ExportError, match="SoftQuantizer levels have no integer form"):
        tfquant.export_tflite(qmodel)


def test_integer_grid_finder_finds_the_finest_exact_grid_or_none():
    levels = np.array([[-1.0, -1 / 3, 1 / 3, 1.0], [0.5, -0.5, 0.0, 0.5]], np.float32).T
    grid = find_integer_grid(levels, axis=-1)
    assert grid.exact and grid.num_bits == 4
    # Steps 1/3 (levels ±1, ±3) and 0.5 (±1), refined to the finest INT4 grid holding
    # them (±2, ±6 and ±7): a finer weight scale gives TFLite's int32 bias a finer step.
    np.testing.assert_allclose(grid.scales, [1 / 6, 0.5 / 7], rtol=1e-6)
    # Only ±3 and ±5 steps of 0.1 present: the step is still found.
    grid = find_integer_grid(np.array([[0.3], [-0.5], [0.5]], np.float32))
    assert grid.exact and grid.num_bits == 4 and abs(grid.scales[0] - 0.1) < 1e-6
    assert find_integer_grid(np.array([[0.3], [0.7], [-1.0], [0.0011]], np.float32)) is None
    wide = np.arange(-100, 101, dtype=np.float32)[:, None] * 0.01
    assert find_integer_grid(wide).num_bits == 8
    nearest = nearest_int8_grid(np.array([[0.3], [0.7], [-1.0]]))
    assert not nearest.exact and 0 < nearest.relative_error < 0.01


def test_ternary_weights_of_a_large_kernel_export():
    # A 3×3×32×64 kernel: large enough that the converter does not fold a where(); the
    # ternary quantizer must stay a multiply and a FakeQuant. (The converter stores this
    # one as int8 {−127, 0, 127}·α/127 rather than INT4: exact either way.)
    inputs = keras.Input((6, 6, 32))
    x = layers.Conv2D(64, 3, name="big")(inputs)
    outputs = layers.Dense(2, name="out")(layers.Flatten()(x))
    config = tfquant.QuantConfig(weight_quantizer="TernaryQuantizer", first_last_bits=None)
    qmodel = tfquant.quantize_model(keras.Model(inputs, outputs), config)
    x = np.random.randn(16, 6, 6, 32).astype(np.float32)
    qmodel(x, training=True)
    report = tfquant.export_tflite(qmodel, representative_data=x)
    big = [w for w in report.summary.weight_tensors().values() if w.shape == (64, 3, 3, 32)]
    assert len(big) == 1 and big[0].type_name in ("INT4", "INT8")
    assert report.max_abs_diff_lsb <= 2


def test_two_and_three_bit_weights_export_on_the_finest_exact_grid():
    # {−1, 0, 1}·s is stored as {−7, 0, 7}·s/7 and {−3…3}·s as {−6…6}·s/2: TFLite's int32
    # bias has step input scale × weight scale, which these finer scales make 7 and 2
    # times finer (with s itself, LiteRT and Keras disagreed on 13–15 % of the outputs of
    # a 2-bit conv at 2-bit activations).
    for bits, finer in ((2, 7), (3, 2)):
        config = tfquant.QuantConfig(weight_quantizer="LSQQuantizer", weight_bits=bits,
                                     first_last_bits=None)
        qmodel, x = trained(config)
        report = tfquant.export_tflite(qmodel, representative_data=x)
        step = qmodel.get_layer("conv").kernel_variables["kernel"]["step"].numpy()
        main = report.summary.main
        conv = [op for op in main.operators if op.name == "CONV_2D"][0]
        kernel, bias = (main.tensors[i] for i in conv.inputs[1:3])
        assert kernel.type_name == "INT4"
        np.testing.assert_allclose(kernel.quantization.scales, step / finer, rtol=1e-5)
        input_scale = main.tensors[conv.inputs[0]].quantization.scales[0]
        np.testing.assert_allclose(bias.quantization.scales,
                                   input_scale * step / finer, rtol=1e-5)
        assert report.max_abs_diff_lsb <= 3, report


def test_ternary_demo_cnn_with_8_bit_activations_exports_full_integer():
    """TWN weights, 8-bit activations, BN folded on batch statistics: the int32 bias that
    `integer_bias` rounds in the Keras model is computed from the ternary scale, and the
    converter once left the SIGN of that rounding as a float op (export refused: "SIGN (op
    0) -> .../conv2/Sign"); the rounding now folds into the bias."""
    from demo_model import build_float_model

    keras.utils.set_random_seed(0)
    config = tfquant.QuantConfig(weight_quantizer="TernaryQuantizer", weight_bits=2)
    qmodel = tfquant.quantize_model(build_float_model(), config)
    qmodel.compile(optimizer="adam",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(64, 28, 28, 1).astype(np.float32)
    qmodel.fit(x, np.random.randint(0, 10, 64), epochs=1, verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x[:16])
    assert report.float_ops == [] and "SIGN" not in report.op_counts
    assert "INT4" in report.weight_dtypes.values()


def test_w2a2_demo_cnn_exports_with_int8_weights_and_agrees_with_litert(fashion_mnist_small):
    """After a 2-bit activation (step ≈ range/3) an INT4 weight step leaves TFLite's
    int32 bias step (input step × weight step) a large fraction of an output step: on
    this model LiteRT then agreed with Keras on about half of the predictions. The
    default export stores the 2-bit weights on the finest int8 grid instead."""
    from demo_model import build_float_model

    (x_train, y_train), (x_test, _) = fashion_mnist_small
    pact = {"class_name": "PACTQuantizer", "config": {"alpha_init": 3.0}}
    config = tfquant.QuantConfig(weight_quantizer="LSQQuantizer", activation_quantizer=pact,
                                 weight_bits=2, activation_bits=2, shortcut_bits=8)
    qmodel = tfquant.quantize_model(build_float_model(), config)
    qmodel.compile(optimizer=keras.optimizers.Adam(1e-3),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    tfquant.freeze_batch_norm(qmodel)
    qmodel.fit(x_train[:1000], y_train[:1000], epochs=1, batch_size=64, verbose=0)

    report = tfquant.export_tflite(qmodel, representative_data=x_test)
    kernels = {name: dtype for name, dtype in report.weight_dtypes.items()
               if dtype in ("INT4", "INT8")}
    assert set(kernels.values()) == {"INT8"}, kernels
    assert any("finest exact int8 grid" in note for note in report.notes)
    assert report.argmax_agreement >= 0.97 and report.max_abs_diff_lsb <= 3, report

    # INT4 on request: half the weight bytes, and the coarser bias shows in the logits
    # (measured: 8 output LSB vs 2 after this short training; 0.988 vs 1.0 agreement).
    int4 = tfquant.export_tflite(qmodel, representative_data=x_test,
                                 low_bit_weights="int4")
    assert "INT4" in int4.weight_dtypes.values()
    assert int4.size_bytes < report.size_bytes
    assert int4.max_abs_diff_lsb > report.max_abs_diff_lsb
    with pytest.raises(ValueError, match=r"low_bit_weights='int2' is not supported; "
                                         r"allowed: 'auto', 'int4', 'int8'"):
        tfquant.export_tflite(qmodel, low_bit_weights="int2")
