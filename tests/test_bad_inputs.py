"""The catalogue of bad inputs: every case across the public API and the `tfquant`
command ends in a clear error that names the value given and says what is allowed (or
what to do), and nothing is half done (a file that was there stays whole)."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from keras import layers

import tfquant
from tfquant import callbacks as cb
from tfquant import cli, quantizers as q
from tfquant.export.litert_runner import run_litert
from tfquant.ops import fake_quant, pack_weights, packed_matmul, unpack_weights
from tfquant.quantizers.base import deserialize_quantizer
from tfquant.quantizers.calibration import make_calibrator, weight_clip


def small_model():
    inputs = keras.Input((6, 6, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(x))


class Subclassed(keras.Model):
    def call(self, x):
        return x * 2.0


class Fourier(layers.Layer):
    """A user layer that calls an op tfquant has no integer form for."""

    def call(self, x):
        return tf.math.real(tf.signal.fft(tf.cast(x, tf.complex64)))


@pytest.fixture(scope="module")
def qat_model():
    qmodel = tfquant.quantize_model(small_model())
    qmodel(np.random.default_rng(0).random((8, 6, 6, 1), np.float32), training=True)
    return qmodel


X = np.random.default_rng(1).random((8, 6, 6, 1)).astype(np.float32)

# (id, callable, regular expression the message must match). Every one raises ValueError,
# or for a value only the TF op sees at run time TensorFlow's InvalidArgumentError.
CLEAR_ERRORS = (ValueError, tf.errors.InvalidArgumentError)
API_CASES = [
    # QuantConfig and LayerRule
    ("weight_bits=1", lambda: tfquant.QuantConfig(weight_bits=1), r"weight_bits=1 .*allowed: 2"),
    ("weight_bits=9", lambda: tfquant.QuantConfig(weight_bits=9), r"weight_bits=9 .*allowed"),
    ("activation_bits=12", lambda: tfquant.QuantConfig(activation_bits=12),
     r"activation_bits=12 .*allowed: .*16"),
    ("activation_bits=True", lambda: tfquant.QuantConfig(activation_bits=True),
     r"activation_bits=True .*allowed"),
    ("first_last_bits=0", lambda: tfquant.QuantConfig(first_last_bits=0),
     r"first_last_bits=0 .*allowed"),
    ("shortcut_bits=3.5", lambda: tfquant.QuantConfig(shortcut_bits=3.5),
     r"shortcut_bits=3.5 .*allowed"),
    ("unknown quantizer", lambda: tfquant.QuantConfig(weight_quantizer="NoSuchQuantizer"),
     r"NoSuchQuantizer"),
    ("float_layers bad regex", lambda: tfquant.QuantConfig(float_layers=["("]),
     r"'\(' is not a valid regular expression"),
    ("float_layers int", lambda: tfquant.QuantConfig(float_layers=[3]),
     r"3 must be a layer name, a regular expression or a keras.layers.Layer subclass"),
    ("LayerRule bad regex", lambda: tfquant.LayerRule("(", weight_bits=4),
     r"not a valid regular expression"),
    ("LayerRule int", lambda: tfquant.LayerRule(42, weight_bits=4), r"42 must be a layer name"),
    ("unknown activation calibrator",
     lambda: tfquant.QuantConfig(activation_calibrator="nope"), r"'nope'"),
    # quantize_model
    ("not a model", lambda: tfquant.quantize_model("model.keras"), r"model"),
    ("subclassed model", lambda: tfquant.quantize_model(Subclassed()),
     r"subclassed model .*Functional"),
    ("untraceable user layer", lambda: tfquant.quantize_model(keras.Sequential(
        [keras.Input((8,)), Fourier(name="fourier"), layers.Dense(2)])), r"fourier"),
    # quantizers
    ("MinMaxWeightQuantizer bits", lambda: q.MinMaxWeightQuantizer(num_bits=1),
     r"MinMaxWeightQuantizer: num_bits=1 .*allowed: 2, 3"),
    ("MinMaxWeightQuantizer axis", lambda: q.MinMaxWeightQuantizer(axis="last"),
     r"axis must be an int, got 'last'"),
    ("MovingAverageQuantizer bits", lambda: q.MovingAverageQuantizer(num_bits=9),
     r"MovingAverageQuantizer: num_bits=9 .*16"),
    ("FixedRangeQuantizer bits", lambda: q.FixedRangeQuantizer(0.0, 1.0, num_bits=4),
     r"FixedRangeQuantizer: num_bits=4 .*allowed: 8, 16"),
    ("LSQQuantizer bits", lambda: q.LSQQuantizer(num_bits=1), r"LSQQuantizer: num_bits=1"),
    ("LSQQuantizer kind", lambda: q.LSQQuantizer(kind="biases"),
     r"kind='biases' .*allowed: None, 'weights', 'activations'"),
    ("PACTQuantizer bits", lambda: q.PACTQuantizer(num_bits=9), r"PACTQuantizer: num_bits=9"),
    ("SAWBQuantizer bits", lambda: q.SAWBQuantizer(num_bits=1), r"SAWBQuantizer: num_bits=1"),
    ("BinaryQuantizer scale", lambda: q.BinaryQuantizer(scale="median"),
     r"scale='median' .*allowed"),
    ("unknown registered quantizer", lambda: deserialize_quantizer("NoSuchQuantizer"),
     r"NoSuchQuantizer"),
    # the C++ ops
    ("fake_quant bits", lambda: fake_quant(X, -1.0, 1.0, num_bits=17),
     r"num_bits=17 .*2\.\.16"),
    ("fake_quant axis", lambda: fake_quant(X, np.zeros(6, np.float32),
                                           np.ones(6, np.float32), axis=5),
     r"axis=5 is out of range for inputs of rank 4"),
    ("fake_quant range_gradient", lambda: fake_quant(X, -1.0, 1.0, range_gradient="lsq"),
     r"range_gradient='lsq' .*allowed: 'clipped', 'learned'"),
    ("fake_quant min per channel without axis",
     lambda: fake_quant(X, np.zeros(6, np.float32), np.ones(6, np.float32)),
     r"axis=None .*scalar"),
    ("pack_weights bits", lambda: pack_weights(np.zeros((32, 16), np.int32), bits=3),
     r"bits=3 is not supported; allowed: 2, 4"),
    ("pack_weights value", lambda: pack_weights(np.full((32, 16), 8, np.int32), bits=4),
     r"value 8 .*does not fit in 4 bits"),
    ("unpack_weights bits", lambda: unpack_weights(np.zeros(256, np.uint8), 8, 32, 16),
     r"bits=8 is not supported"),
    ("packed_matmul group_size", lambda: packed_matmul(
        np.zeros((1, 64), np.float32), pack_weights(np.zeros((64, 16), np.int32), 4),
        np.ones((1, 16), np.float32), group_size=16),
     r"group_size=16 is not supported; allowed: 0, 32, 64, 128"),
    # export
    ("export input_type", lambda qm: tfquant.export_tflite(qm, input_type="float16"),
     r"input_type='float16' is not supported; allowed"),
    ("export low_bit_weights", lambda qm: tfquant.export_tflite(qm, low_bit_weights="int3"),
     r"low_bit_weights='int3' is not supported; allowed: 'auto', 'int4', 'int8'"),
    ("export nonuniform", lambda qm: tfquant.export_tflite(qm, nonuniform="round"),
     r"nonuniform='round' is not supported"),
    ("export data shape", lambda qm: tfquant.export_tflite(
        qm, representative_data=np.zeros((4, 5, 5, 1), np.float32)), r"sample shape"),
    ("export data NaN", lambda qm: tfquant.export_tflite(
        qm, representative_data=np.full((4, 6, 6, 1), np.nan, np.float32)), r"NaN or Inf"),
    ("export data empty", lambda qm: tfquant.export_tflite(
        qm, representative_data=np.zeros((0, 6, 6, 1), np.float32)), r"non-empty"),
    ("export data count", lambda qm: tfquant.export_tflite(qm, representative_data=[X, X]),
     r"2 array\(s\); model .* has 1 input"),
    ("inspect empty", lambda: tfquant.inspect_flatbuffer(b""), r"empty"),
    ("inspect garbage", lambda: tfquant.inspect_flatbuffer(b"\x01" * 64), r"TFLite flatbuffer"),
    ("run_litert garbage", lambda: run_litert(b"\x00" * 16, [X]), r"TFLite flatbuffer"),
    # PTQ and calibrators
    ("ptq calibrator", lambda: tfquant.ptq.quantize(small_model(), X, calibrator="nope",
                                                     verbose=0), r"'nope'"),
    ("ptq empty data", lambda: tfquant.ptq.quantize(
        small_model(), np.zeros((0, 6, 6, 1), np.float32), verbose=0), r"empty|no samples"),
    ("make_calibrator", lambda: make_calibrator("median"), r"'median'"),
    ("weight_clip method", lambda: weight_clip(np.ones((3, 3)), 8, "median"), r"'median'"),
    # callbacks
    ("BitWidthSchedule 1 bit", lambda: cb.BitWidthSchedule({0: 8, 1: 1}),
     r"schedule\[1\]=1 is not supported; allowed: 2, 3, 4, 5, 6, 7, 8"),
    ("BitWidthSchedule negative epoch", lambda: cb.BitWidthSchedule({-1: 4}),
     r"=-1 is not supported; allowed: a whole number ≥ 0"),
    ("BitWidthSchedule empty", lambda: cb.BitWidthSchedule({}), r"non-empty dict"),
    ("BitWidthSchedule reinitialize", lambda: cb.BitWidthSchedule({0: 4}, reinitialize="zero"),
     r"reinitialize='zero'; allowed: 'data', 'rescale'"),
    ("BitWidthSchedule exclude", lambda: cb.BitWidthSchedule({0: 4}, exclude=["("]),
     r"not a valid regular expression"),
    ("FreezeBatchNorm negative", lambda: cb.FreezeBatchNorm(-5),
     r"FreezeBatchNorm: after_steps=-5 is not supported; allowed: a whole number ≥ 0"),
    ("FreezeBatchNorm both", lambda: cb.FreezeBatchNorm(after_steps=1, after_epochs=1),
     r"after_steps or after_epochs, not both"),
    ("QuantizationDelay fraction", lambda: cb.QuantizationDelay(after_epochs=1.5),
     r"after_epochs=1.5 is not supported"),
    ("QuantizationDelay bool", lambda: cb.QuantizationDelay(after_steps=True),
     r"after_steps=True is not supported"),
    # the layer registry
    ("register a non-layer", lambda: tfquant.register_layer_handler(int, tfquant.PassThrough()),
     r"keras Layer or Operation class; got <class 'int'>"),
    ("register a non-handler", lambda: tfquant.register_layer_handler(layers.Dense, object()),
     r"tfquant LayerHandler; got object"),
]


@pytest.mark.parametrize("call,match", [case[1:] for case in API_CASES],
                         ids=[case[0] for case in API_CASES])
def test_bad_api_input_names_the_value_and_what_is_allowed(call, match, qat_model):
    takes_model = call.__code__.co_argcount == 1
    with pytest.raises(CLEAR_ERRORS, match=match):
        call(qat_model) if takes_model else call()


def test_export_to_a_directory_says_so_and_writes_nothing(qat_model, tmp_path):
    with pytest.raises(ValueError, match=r"is a directory; give the flatbuffer's file path"):
        tfquant.export_tflite(qat_model, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_failed_export_keeps_the_previous_file(qat_model, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"the previous flatbuffer")
    with pytest.raises(ValueError):
        tfquant.export_tflite(qat_model, str(path), representative_data=X[:, :5])
    assert path.read_bytes() == b"the previous flatbuffer"
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"]


def test_qat_model_exports_without_representative_data(qat_model, tmp_path):
    # The docstring says the data is optional: the ranges come from the quantizers.
    report = tfquant.export_tflite(qat_model, str(tmp_path / "m.tflite"))
    assert report.float_ops == [] and report.num_samples == 0
    assert os.path.getsize(tmp_path / "m.tflite") == report.size_bytes


# -- the `tfquant` command, run in this process -----------------------------------------


def run_cli(capsys, *args):
    """(exit code, stderr) of `tfquant *args`."""
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(["tfquant", *args])
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory, qat_model):
    folder = tmp_path_factory.mktemp("cli")
    paths = {"folder": str(folder), "model": str(folder / "model.keras"),
             "not_a_model": str(folder / "notes.keras"), "data": str(folder / "x.npz"),
             "bad_json": str(folder / "config.json"), "text": str(folder / "model.tflite")}
    small_model().save(paths["model"])
    with open(paths["not_a_model"], "w") as handle:
        handle.write("not a zip archive")
    np.savez(paths["data"], x=X)
    with open(paths["bad_json"], "w") as handle:
        handle.write("{weight_bits: 4")
    with open(paths["text"], "w") as handle:
        handle.write("hello")
    return paths


CLI_CASES = [
    ("missing model", lambda f: ["export", os.path.join(f["folder"], "absent.keras"), "-o",
                                 "m.tflite"], 1, r"absent.keras: no such file"),
    ("not a model", lambda f: ["export", f["not_a_model"], "-o", "m.tflite"], 1,
     r"notes.keras is not a Keras model: a .keras file is a zip archive"),
    ("a directory", lambda f: ["export", f["folder"], "-o", "m.tflite"], 1,
     r"is a directory; give a file"),
    ("quantize to .h5", lambda f: ["quantize", f["model"], "-o",
                                   os.path.join(f["folder"], "q.h5")], 1,
     r"-o .*q.h5: .*ending in .keras"),
    ("inspect text", lambda f: ["inspect", f["text"]], 1, r"model.tflite: .*TFLite flatbuffer"),
    ("report without data", lambda f: ["report", f["model"], "-o", f["folder"]], 1,
     r"--data DATA.npz"),
    ("missing data", lambda f: ["export", f["model"], "-o", "m.tflite", "--data",
                                os.path.join(f["folder"], "absent.npz")], 1,
     r"absent.npz: no such file"),
    ("bad JSON config", lambda f: ["quantize", f["model"], "--config", f["bad_json"], "-o",
                                   os.path.join(f["folder"], "q.keras")], 1,
     r"config.json: not a readable JSON file"),
    ("unknown command", lambda f: ["convert", f["model"]], 2, r"usage"),
    ("no output path", lambda f: ["export", f["model"]], 2, r"give the output path with -o"),
]


@pytest.mark.parametrize("arguments,code,match", [case[1:] for case in CLI_CASES],
                         ids=[case[0] for case in CLI_CASES])
def test_bad_command_input_gets_a_message_and_an_exit_code(arguments, code, match, files,
                                                           capsys):
    got_code, stderr = run_cli(capsys, *arguments(files))
    assert got_code == code
    assert re.search(match, stderr), stderr


def test_the_catalogue_holds_at_least_sixty_cases():
    assert len(API_CASES) + len(CLI_CASES) + 2 >= 60
