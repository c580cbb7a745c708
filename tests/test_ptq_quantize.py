import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfquant
from tfquant import ptq
from tfquant import LayerRule
from model_zoo import conv_bn_relu
from tfquant.keras import ActivationFakeQuant, QuantizedConvolution


def small_cnn():
    inputs = keras.Input((12, 12, 1), name="image")
    x = conv_bn_relu(inputs, 6, 3, padding="same")
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.ReLU(6.0, name="relu6")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 6), rng.normal(0, 1, 6), rng.normal(0, 0.5, 6),
                    rng.uniform(0.5, 2, 6)])
    return model


def _data(n=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 12, 12, 1)).astype(np.float32)


def test_quantize_sets_ranges_freezes_bn_and_exports():
    model, x = small_cnn(), _data()
    qmodel = ptq.quantize(model, x, verbose=0)
    by_name = {layer.name: layer for layer in qmodel.layers}
    assert isinstance(by_name["conv"], QuantizedConvolution) and by_name["conv"].batch_norm_frozen
    image = by_name["image_quant"].quantizer_variables
    assert float(image["observed"]) == 1.0
    assert float(image["min"]) == 0.0 and float(image["max"]) == pytest.approx(x.max())
    # The ReLU output range is the float model's.
    relu = keras.Model(model.inputs, model.get_layer("relu").output)(x).numpy()
    assert float(by_name["relu_quant"].quantizer_variables["max"]) == pytest.approx(relu.max(), rel=1e-5)
    # Close to float, and a training step still runs.
    reference = model(x).numpy()
    assert np.abs(qmodel(x).numpy() - reference).max() < 0.05 * np.abs(reference).max()
    qmodel.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    qmodel.fit(x, np.zeros(len(x), np.int32), epochs=1, batch_size=32, verbose=0)
    report = tfquant.export_tflite(qmodel, representative_data=x[:8])
    assert report.argmax_agreement >= 0.75


def test_data_forms_give_the_same_ranges():
    model, x = small_cnn(), _data()

    def ranges(data):
        qmodel = ptq.quantize(model, data, verbose=0)
        return [float(l.quantizer_variables["max"]) for l in qmodel.layers
                if isinstance(l, ActivationFakeQuant)]

    expected = ranges(x)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(16)
    assert ranges(dataset) == pytest.approx(expected)
    assert ranges(tf.data.Dataset.from_tensor_slices(x)) == pytest.approx(expected)
    assert ranges(b for b in np.split(x, 4)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="calibration_data"):
        ptq.quantize(model, None, verbose=0)


def test_a_calibrator_per_layer_sets_that_range_and_others_keep_minmax():
    model, x = small_cnn(), _data(128)
    qmodel = ptq.quantize(model, x, calibrator={"relu": ptq.PercentileCalibrator(90.0),
                                                layers.Dense: "mse"}, verbose=0)
    by_name = {layer.name: layer for layer in qmodel.layers}
    relu = keras.Model(model.inputs, model.get_layer("relu").output)(x).numpy()
    assert float(by_name["relu_quant"].quantizer_variables["max"]) == pytest.approx(
        np.percentile(relu, 90.0), rel=1e-5)
    logits = model(x).numpy()
    assert float(by_name["logits"].output_variables["max"]) <= logits.max() + 1e-6
    # Unmatched layers keep min-max.
    relu6 = keras.Model(model.inputs, model.get_layer("relu6").output)(x).numpy()
    assert float(by_name["relu6_quant"].quantizer_variables["max"]) == pytest.approx(relu6.max(), rel=1e-5)


@pytest.mark.parametrize("method", ["mse", "sawb"])
def test_weight_calibrators_store_weights_the_quantizer_reproduces(method):
    model, x = small_cnn(), _data()
    config = tfquant.QuantConfig(weight_bits=4, first_last_bits=None, per_channel_weights=False)
    qmodel = ptq.quantize(model, x, config=config, weight_calibrator=method, verbose=0)
    plain = ptq.quantize(model, x, config=config, verbose=0)
    conv = {l.name: l for l in qmodel.layers}["conv"]
    folded, _ = conv.folded_kernels_and_bias()
    deployed, _ = conv.deployed_kernels()["kernel"]
    np.testing.assert_allclose(deployed, folded["kernel"].numpy(), atol=1e-6)
    original = {l.name: l for l in plain.layers}["conv"].folded_kernels_and_bias()[0]["kernel"]
    assert np.abs(folded["kernel"].numpy()).max() < np.abs(original.numpy()).max()


def _correlated_dense(seed=1):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((16,))
    outputs = layers.Dense(8, name="dense")(inputs)
    model = keras.Model(inputs, outputs)
    # Correlated inputs: rounding every weight to nearest is then far from optimal.
    x = (rng.normal(size=(256, 4)) @ rng.normal(size=(4, 16))
         + 0.1 * rng.normal(size=(256, 16))).astype(np.float32)
    return model, x


def test_adaround_beats_nearest_rounding_on_the_layer_output():
    model, x = _correlated_dense()
    config = tfquant.QuantConfig(weight_bits=3, first_last_bits=None)
    nearest = ptq.quantize(model, x, config=config, verbose=0)
    rounded = ptq.quantize(model, x, config=config, rounding="adaround",
                           adaround_iterations=300, verbose=0)

    def error(qmodel):
        dense = {l.name: l for l in qmodel.layers}["dense"]
        kernel, _ = dense.deployed_kernels()["kernel"]
        return np.mean((x @ kernel - x @ model.get_layer("dense").kernel.numpy()) ** 2)

    assert error(rounded) < 0.5 * error(nearest)
    dense = {l.name: l for l in rounded.layers}["dense"]
    np.testing.assert_allclose(dense.deployed_kernels()["kernel"][0],
                               dense.layer.kernel.numpy(), atol=1e-6)


def test_adaround_loss_decreases_and_the_result_is_hard_rounded():
    model, x = _correlated_dense(2)
    qmodel = tfquant.quantize_model(model, tfquant.QuantConfig(weight_bits=4,
                                                               first_last_bits=None))
    tfquant.freeze_batch_norm(qmodel)
    batches = [[x[i:i + 64]] for i in range(0, len(x), 64)]
    ptq.calibrate_activations(qmodel, batches, verbose=0)
    result = ptq.adaround_weights(qmodel, batches, iterations=400, verbose=0)["dense"]
    # The soft weights, pushed towards 0/1 at the end, and the final hard rounding
    # reconstruct the float output better than rounding to nearest.
    assert result.losses[-20:].mean() < 0.5 * result.nearest_error
    assert result.adaround_error < 0.5 * result.nearest_error
    assert 0 < result.flipped < 0.5
    dense = {l.name: l for l in qmodel.layers}["dense"]
    codes = dense.layer.kernel.numpy() / (np.abs(dense.layer.kernel.numpy()).max(0) / 7)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)  # on the 4-bit grid


def test_data_free_pipeline_folds_bn_and_tracks_the_float_model():
    model, x = small_cnn(), _data()
    config = tfquant.QuantConfig(per_channel_weights=False)
    qmodel = ptq.quantize(model, x, config=config, data_free=True, verbose=0)
    assert not any(isinstance(l, QuantizedConvolution) and l.batch_norm is not None
                   for l in qmodel.layers)  # BN folded in float by DFQ
    reference = model(x).numpy()
    assert np.abs(qmodel(x).numpy() - reference).max() < 0.05 * np.abs(reference).max() + 0.05


def test_quant_config_chooses_calibrators_per_layer():
    model, x = small_cnn(), _data(128)
    config = tfquant.QuantConfig(
        weight_bits=4, first_last_bits=None, activation_calibrator="percentile",
        rules=[LayerRule("relu", activation_calibrator=ptq.PercentileCalibrator(90.0)),
               LayerRule(layers.Dense, weight_calibrator="mse")])
    qmodel = ptq.quantize(model, x, config=config, verbose=0)
    by_name = {layer.name: layer for layer in qmodel.layers}

    def float_output(name):
        return keras.Model(model.inputs, model.get_layer(name).output)(x).numpy()

    def range_max(name, variables="quantizer_variables"):
        return float(getattr(by_name[name], variables)["max"])

    # The rule's calibrator, and the config's default ("percentile", 99.99).
    assert range_max("relu_quant") == pytest.approx(np.percentile(float_output("relu"), 90.0),
                                                    rel=1e-5)
    assert range_max("relu6_quant") == pytest.approx(
        np.percentile(float_output("relu6"), 99.99), rel=1e-5)
    # Only the Dense layer has MSE-clipped weights; the others keep max|w|.
    plain = ptq.quantize(model, x, config=tfquant.QuantConfig(weight_bits=4, first_last_bits=None),
                         verbose=0)
    plain_by_name = {layer.name: layer for layer in plain.layers}
    for name, clipped in (("logits", True), ("conv", False), ("dw", False)):
        ours = np.abs(by_name[name].folded_kernels_and_bias()[0]["kernel"].numpy()).max()
        theirs = np.abs(plain_by_name[name].folded_kernels_and_bias()[0]["kernel"].numpy()).max()
        assert (ours < theirs - 1e-6) == clipped, name
    # An explicit argument overrides the config.
    explicit = ptq.quantize(model, x, config=config, calibrator="minmax", verbose=0)
    relu = {layer.name: layer for layer in explicit.layers}["relu_quant"]
    assert float(relu.quantizer_variables["max"]) == pytest.approx(float_output("relu").max(), rel=1e-5)


def test_calibrator_fields_are_validated():
    with pytest.raises(ValueError, match=r"QuantConfig: activation_calibrator='median': "
                                         r"Unknown calibrator .*percentile"):
        tfquant.QuantConfig(activation_calibrator="median")
    with pytest.raises(ValueError, match=r"LayerRule\('conv'\): weight_calibrator='entropy': "
                                         r"Unknown weight calibrator 'entropy'; use one of "
                                         r"minmax, mse, sawb"):
        LayerRule("conv", weight_calibrator="entropy")
    config = tfquant.QuantConfig(activation_calibrator=ptq.PercentileCalibrator(99.0),
                                 rules=[LayerRule("conv", weight_calibrator="sawb")])
    described = config.get_config()
    assert described["activation_calibrator"] == "PercentileCalibrator"
    assert described["rules"][0]["weight_calibrator"] == "sawb"
