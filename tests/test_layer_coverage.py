"""The layer registry's families beyond Dense and convolutions: activations, keras.ops
nodes, preprocessing, LayerScale, Layer/RMS normalization, PReLU, grouped convolutions,
custom handlers, and keras.applications models end to end (PTQ → full-integer LiteRT)."""

import keras
import numpy as np
import pytest
from keras import layers, ops

import tfquant
from tfquant.keras.layers import ChannelAffine, QuantizedOutput, register_layer_handler


def ptq_export(model, x, config=None):
    qmodel = tfquant.ptq.quantize(model, x, config=config, verbose=0)
    return qmodel, tfquant.export_tflite(qmodel, representative_data=x)


def relative_error(model, qmodel, x):
    reference = model.predict(x, verbose=0)
    return float(np.max(np.abs(qmodel.predict(x, verbose=0) - reference))
                 / np.max(np.abs(reference)))


def dense_model(middle, input_shape=(6, 16)):
    inputs = keras.Input(input_shape)
    x = middle(layers.Dense(16, name="dense_in")(inputs))
    outputs = layers.Dense(3, name="out")(layers.Flatten()(x))
    return keras.Model(inputs, outputs)


# Activation → TFLite ops it must become. Several-op activations are quantized after each
# op, so LiteRT and Keras compute the same integers (measured: 0 LSB for all of these).
ACTIVATIONS = {
    "gelu": {"GELU"}, "silu": {"LOGISTIC", "MUL"}, "swish": {"LOGISTIC", "MUL"},
    "hard_silu": {"HARD_SWISH"}, "hard_sigmoid": {"ADD", "MUL"}, "tanh": {"TANH"},
    "sigmoid": {"LOGISTIC"}, "elu": {"MINIMUM", "EXP", "ADD"}, "softplus": {"EXP", "LOG"},
    "log_softmax": {"LOG_SOFTMAX"}, "leaky_relu": {"LEAKY_RELU"},
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_exports_integer_ops_equal_to_keras(activation):
    model = dense_model(layers.Activation(activation, name="act"))
    x = np.random.randn(64, 6, 16).astype(np.float32)
    _, report = ptq_export(model, x)
    assert report.float_ops == []
    assert ACTIVATIONS[activation] <= set(report.op_counts), report.op_counts
    assert report.max_abs_diff_lsb <= 1.001  # 1 LSB: the kernels' fixed-point rounding


@pytest.mark.parametrize("activation", ["silu", "elu", "softplus", "hard_sigmoid", "gelu"])
def test_activation_at_16_bits_tracks_the_float_layer(activation):
    model = dense_model(layers.Activation(activation))
    x = np.random.randn(64, 6, 16).astype(np.float32)
    qmodel = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                  verbose=0)
    # 8-bit weights dominate: two Dense layers at ≈ 0.4 % each.
    assert relative_error(model, qmodel, x) < 0.02


def test_unknown_several_op_activation_is_refused_with_the_supported_list():
    model = dense_model(layers.Activation("selu", name="act"))
    with pytest.raises(ValueError, match=r"'act' \(Activation\): activation 'selu'.*gelu"):
        tfquant.quantize_model(model)
    model = dense_model(layers.ELU(alpha=0.5, name="elu"))
    with pytest.raises(ValueError, match=r"'elu' \(ELU\): ELU\(alpha=0.5\)"):
        tfquant.quantize_model(model)
    tfquant.quantize_model(dense_model(layers.ELU(name="elu")))  # alpha=1: op by op


def test_prelu_exports_prelu():
    model = dense_model(layers.PReLU(alpha_initializer=keras.initializers.Constant(0.2)))
    x = np.random.randn(64, 6, 16).astype(np.float32)
    _, report = ptq_export(model, x)
    assert report.float_ops == [] and "PRELU" in report.op_counts
    assert report.max_abs_diff_lsb <= 1.001  # 1 LSB: the kernels' fixed-point rounding


def ops_model():
    """A Keras 3 functional graph that calls keras.ops directly."""
    inputs = keras.Input((6, 16))
    x = layers.Dense(16)(inputs)
    x = x * ops.sigmoid(x) + 3.0
    x = ops.transpose(ops.reshape(x, (-1, 6, 4, 4)), (0, 2, 1, 3))
    x = ops.mean(x, axis=1) / 4.0
    x = ops.relu(x - 1.0)
    outputs = layers.Dense(3)(ops.reshape(x, (-1, 24)))
    return keras.Model(inputs, outputs)


def test_keras_ops_nodes_are_quantized_through():
    model = ops_model()
    x = np.random.randn(64, 6, 16).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    assert report.float_ops == []
    for op in ("LOGISTIC", "MUL", "ADD", "TRANSPOSE", "MEAN", "SUB"):
        assert op in report.op_counts, op
    assert "DIV" not in report.op_counts  # x / 4 became x · 0.25
    assert report.max_abs_diff_lsb <= 1.001  # 1 LSB: the kernels' fixed-point rounding
    assert report.argmax_agreement == 1.0
    at16 = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                verbose=0)
    assert relative_error(model, at16, x) < 0.02


def test_unsupported_operation_is_named_as_an_operation():
    inputs = keras.Input((4,))
    outputs = layers.Dense(2)(ops.sin(layers.Dense(4)(inputs)))
    with pytest.raises(ValueError, match=r"the operation keras\.ops\.Sin\): no quantized"):
        tfquant.quantize_model(keras.Model(inputs, outputs))


def test_division_by_a_tensor_is_refused():
    inputs = keras.Input((4,))
    x = layers.Dense(4)(inputs)
    outputs = layers.Dense(2)(x / (ops.abs(x) + 1.0))
    with pytest.raises(ValueError, match="divides by a tensor"):
        tfquant.quantize_model(keras.Model(inputs, outputs))


def preprocessing_model():
    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    norm = layers.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.04, 0.09, 0.01])
    x = norm(x)
    x = layers.Conv2D(4, 3, padding="same")(x)
    x = layers.Rescaling([0.5, 1.0, 2.0, 1.5], offset=0.25)(x)
    outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_rescaling_and_normalization_become_integer_mul_and_add():
    model = preprocessing_model()
    x = (np.random.rand(64, 8, 8, 3) * 255).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    assert report.float_ops == [] and "DIV" not in report.op_counts
    assert report.op_counts["MUL"] == 3 and report.op_counts["ADD"] == 2
    assert report.max_abs_diff_lsb <= 1.001  # 1 LSB: the kernels' fixed-point rounding
    assert sum(isinstance(layer, ChannelAffine) for layer in qmodel.layers) == 3
    at16 = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                verbose=0)
    assert relative_error(model, at16, x) < 0.02


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_layer_normalization_has_no_float_or_neg_op(kind):
    norm = (layers.LayerNormalization(name="norm") if kind == "layer"
            else layers.RMSNormalization(name="norm"))
    model = dense_model(norm)
    # Non-trivial γ and β, so that a dropped affine part shows.
    weights = [np.random.uniform(0.5, 1.5, w.shape).astype(np.float32) if i == 0 else
               np.random.uniform(-0.5, 0.5, w.shape).astype(np.float32)
               for i, w in enumerate(norm.get_weights())]
    norm.set_weights(weights)
    x = np.random.randn(64, 6, 16).astype(np.float32) * 3.0
    qmodel, report = ptq_export(model, x)
    assert report.float_ops == [] and "NEG" not in report.op_counts
    assert "RSQRT" in report.op_counts and "MEAN" in report.op_counts
    assert report.max_abs_diff_lsb <= 1.001  # 1 LSB: the kernels' fixed-point rounding
    at16 = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                verbose=0)
    assert relative_error(model, at16, x) < 0.02


def test_layer_normalization_trains_gamma_and_beta_and_reloads(tmp_path):
    model = dense_model(layers.LayerNormalization(name="norm"))
    qmodel = tfquant.quantize_model(model)
    trainable = {w.path for w in qmodel.trainable_weights}
    assert any("norm_gamma" in p for p in trainable) and any("norm_beta" in p for p in trainable)
    x = np.random.randn(64, 6, 16).astype(np.float32)
    y = np.random.randint(0, 3, 64)
    qmodel.compile(optimizer=keras.optimizers.Adam(0.01),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = qmodel.get_layer("norm_beta").get_weights()[0].copy()
    qmodel.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(before, qmodel.get_layer("norm_beta").get_weights()[0])
    qmodel.save(tmp_path / "q.keras")
    reloaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))


def test_depthwise_grouped_convolution_becomes_depthwise():
    inputs = keras.Input((8, 8, 6))
    x = layers.Conv2D(12, 3, groups=6, padding="same", name="grouped")(inputs)
    outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    x = np.random.randn(32, 8, 8, 6).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    assert qmodel.get_layer("grouped").kind == "depthwise"
    assert "DEPTHWISE_CONV_2D" in report.op_counts and report.float_ops == []
    at16 = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                verbose=0)
    assert relative_error(model, at16, x) < 0.02


def test_other_grouped_convolutions_are_refused():
    inputs = keras.Input((8, 8, 6))
    outputs = layers.Conv2D(6, 3, groups=3, name="grouped")(inputs)
    with pytest.raises(ValueError, match="'grouped' \\(Conv2D\\): a grouped convolution"):
        tfquant.quantize_model(keras.Model(inputs, outputs))


class Gain(layers.Layer):
    """A user's layer: a learned scalar gain."""

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(), initializer="ones")

    def call(self, x):
        return x * self.gain


def test_user_registers_a_handler_for_their_layer():
    inputs = keras.Input((4,))
    outputs = layers.Dense(2)(Gain(name="gain")(layers.Dense(4)(inputs)))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="'gain' \\(Gain\\)"):
        tfquant.quantize_model(model)
    with pytest.raises(ValueError, match="LayerHandler"):
        register_layer_handler(Gain, "output")
    register_layer_handler(Gain, QuantizedOutput())
    qmodel = tfquant.quantize_model(model)
    assert "gain_quant" in [layer.name for layer in qmodel.layers]
    assert qmodel.get_layer("gain").get_weights() == model.get_layer("gain").get_weights()


def efficientnet_small():
    """EfficientNet (keras.applications' own builder) at a quarter of B0's width and
    depth: every block kind of B0 (squeeze-excite, swish, depthwise, drop-connect), one
    block a stage."""
    from keras.src.applications.efficientnet import EfficientNet

    return EfficientNet(0.25, 0.25, 32, input_shape=(32, 32, 3), weights=None, classes=10,
                        classifier_activation=None, name="efficientnet_small_test")


# name → (builder, ops the flatbuffer must hold). EfficientNet at reduced width and depth:
# the same layer kinds as B0 (which benchmarks/model_zoo.py and applications_coverage.py
# take through), in 60 % of the test time.
APPLICATIONS = {
    "MobileNetV3Small": (lambda: keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10,
        classifier_activation=None), {"HARD_SWISH", "MUL", "ADD", "MEAN"}),
    "EfficientNet": (efficientnet_small, {"LOGISTIC", "MUL", "MEAN"}),
}


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_go_to_full_integer_litert(name):
    build, ops_wanted = APPLICATIONS[name]
    model = build()
    x = (np.random.rand(16, 32, 32, 3) * 255).astype(np.float32)
    _, report = ptq_export(model, x)
    assert report.float_ops == []
    assert ops_wanted <= set(report.op_counts)


def test_convnext_blocks_go_to_full_integer_litert():
    """ConvNeXt (keras.applications' own builder at a small width and depth): grouped
    depthwise convolutions, LayerNormalization, GELU, LayerScale, nested Sequential."""
    from keras.src.applications.convnext import ConvNeXt

    model = ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 16, 24, 32],
                     input_shape=(32, 32, 3), weights=None, classes=10,
                     classifier_activation=None, name="convnext_small_test",
                     layer_scale_init_value=0.5)
    x = (np.random.rand(16, 32, 32, 3) * 255).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    assert report.float_ops == [] and "NEG" not in report.op_counts
    for op in ("DEPTHWISE_CONV_2D", "GELU", "RSQRT", "FULLY_CONNECTED"):
        assert op in report.op_counts, op
    assert sum(isinstance(layer, ChannelAffine) for layer in qmodel.layers) >= 4


class ResidualGate(layers.Layer):
    """A user's layer whose call uses only supported sublayers and keras.ops."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = layers.Dense(units, name="inner")
        self.outer = layers.Dense(units, name="outer")

    def call(self, x, training=None):
        h = self.inner(x)
        return x + self.outer(h * ops.sigmoid(h))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class RawScale(layers.Layer):
    """A user's layer that reads its own weight in keras.ops (no sublayer)."""

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gain


def test_user_layer_built_from_supported_parts_is_quantized_through(tmp_path):
    inputs = keras.Input((8,))
    x = ResidualGate(8, name="gate")(layers.Dense(8, name="first")(inputs))
    model = keras.Model(inputs, layers.Dense(2, name="last")(x))
    x = np.random.randn(64, 8).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    kernels = [layer for layer in qmodel.layers if isinstance(layer, tfquant.keras.QuantizedConvolution)]
    assert len(kernels) == 4  # first, the gate's two sublayers, last
    assert report.float_ops == [] and report.op_counts["FULLY_CONNECTED"] == 4
    assert report.max_abs_diff_lsb <= 1.001
    at16 = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                verbose=0)
    assert relative_error(model, at16, x) < 0.02
    qmodel.save(tmp_path / "q.keras")
    reloaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))


def test_user_layer_that_cannot_be_traced_names_itself_and_the_cause():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, layers.Dense(2)(RawScale(name="raw")(inputs)))
    with pytest.raises(ValueError, match=r"'raw' \(RawScale\) reads its weight .* directly"):
        tfquant.quantize_model(model)
    kept = tfquant.quantize_model(model, tfquant.QuantConfig(float_layers=["raw"]))
    assert type(kept.get_layer("raw")) is RawScale


@pytest.mark.parametrize("name, size", [("InceptionV3", 75), ("MobileNet", 32),
                                        ("ResNet50", 32), ("DenseNet121", 32),
                                        ("MobileNetV3Large", 32), ("EfficientNetV2B0", 32)])
def test_keras_applications_quantize_without_internal_errors(name, size):
    model = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None,
                                              classes=10)
    qmodel = tfquant.quantize_model(model)
    x = np.random.rand(2, size, size, 3).astype(np.float32) * 255
    assert qmodel(x, training=False).shape == (2, 10)
    kernels = sum(isinstance(layer, tfquant.keras.QuantizedConvolution)
                  for layer in qmodel.layers)
    assert kernels == sum(isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D,
                                             layers.Dense)) for layer in model.layers)


def test_standalone_batch_norm_is_mul_quantizer_add(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    bn = layers.BatchNormalization(name="bn")
    x = bn(x)
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    bn.set_weights([np.random.uniform(0.5, 2.0, 6).astype(np.float32),
                    np.random.uniform(-1, 1, 6).astype(np.float32),
                    np.random.uniform(0, 1, 6).astype(np.float32),
                    np.random.uniform(0.5, 2.0, 6).astype(np.float32)])
    x = np.random.rand(64, 8, 8, 3).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    assert type(qmodel.get_layer("bn")).__name__ == "QuantizedBatchNormalization"
    assert report.float_ops == [] and {"MUL", "ADD"} <= set(report.op_counts)
    # The MEAN and FULLY_CONNECTED kernels' own rounding after it (measured: 1-4 LSB over
    # seeds, the same with the converter calibrating the MUL output itself).
    assert report.max_abs_diff_lsb <= 4.001
    at16 = tfquant.ptq.quantize(model, x, config=tfquant.QuantConfig(activation_bits=16),
                                verbose=0)
    assert relative_error(model, at16, x) < 0.02
    # Training uses and updates the batch statistics, as Keras's layer does.
    before = qmodel.get_layer("bn").layer.moving_mean.numpy().copy()
    qmodel.compile(optimizer="sgd",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, np.zeros(64, np.int32), epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(before, qmodel.get_layer("bn").layer.moving_mean.numpy())
    qmodel.save(tmp_path / "q.keras")
    reloaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))


@pytest.mark.parametrize("activation", ["silu", "hard_sigmoid", "elu"])
def test_convolution_with_a_several_op_activation_quantizes_each_op(activation):
    """EfficientNet's squeeze-excite convolutions carry activation="swish"."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, activation=activation, name="conv")(inputs)
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    x = np.random.randn(64, 8, 8, 3).astype(np.float32)
    qmodel, report = ptq_export(model, x)
    assert qmodel.get_layer("conv").activation == "linear"
    assert report.float_ops == [] and ACTIVATIONS[activation] <= set(report.op_counts)
    assert report.max_abs_diff_lsb <= 1.001
