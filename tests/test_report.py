"""`tfquant report`: an HTML page with weight histograms, weight SQNR and activation
ranges."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
from keras import layers

import tfquant
from tfquant import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_model():
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, name="conv")(inputs)
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
    x = layers.Conv2D(8, 3, name="middle")(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(layers.Flatten()(x)))


def test_report_rows_give_bits_sqnr_steps_and_activation_ranges():
    x = np.random.default_rng(0).uniform(0, 1, (40, 8, 8, 1)).astype("float32")
    qmodel = tfquant.quantize_model(small_model(), tfquant.QuantConfig(weight_bits=4))
    tfquant.freeze_batch_norm(qmodel)
    qmodel(x, training=True)
    weights = {row["layer"]: row for row in report.weight_rows(qmodel)}
    assert sorted(weights) == ["conv", "head", "middle"]
    assert weights["middle"]["bits"] == 4 and weights["conv"]["bits"] == 8  # first/last 8
    # ≈ 6 dB per bit: the 4-bit kernel is far noisier than the 8-bit ones.
    assert weights["conv"]["sqnr_db"] > weights["middle"]["sqnr_db"] + 15
    middle = weights["middle"]
    np.testing.assert_allclose(middle["steps"],
                               np.abs(middle["values"]).max(axis=(0, 1, 2)) / 7, rtol=1e-5)
    on_grid = middle["quantized"] / middle["steps"]
    np.testing.assert_allclose(on_grid, np.round(on_grid), atol=1e-3)
    activations = {row["layer"]: row for row in report.activation_rows(qmodel, x)}
    relu = qmodel.get_layer("relu_quant").quantizer_variables
    assert activations["relu_quant"]["range"] == (float(relu["min"].numpy()),
                                                  float(relu["max"].numpy()))
    for row in activations.values():  # quantized outputs stay in the range (up to the
        low, high = row["range"]       # nudge that makes 0 exact: less than one step)
        step = (high - low) / (2 ** row["bits"] - 1)
        assert low - step <= row["observed"][0] <= row["observed"][1] <= high + step


def test_integer_rows_compare_simulation_and_integer_model_layer_by_layer():
    x = np.random.default_rng(2).uniform(0, 1, (64, 8, 8, 1)).astype("float32")
    qmodel = tfquant.ptq.quantize(small_model(), x, verbose=0)
    flatbuffer = tfquant.export_tflite(qmodel).flatbuffer
    rows = {row["layer"]: row for row in report.integer_rows(qmodel, x, flatbuffer)}
    # conv → BN → ReLU is one CONV_2D whose output is the ReLU's.
    assert {"relu", "middle", "head"} <= set(rows) and "conv" not in rows, sorted(rows)
    assert rows["relu"]["op"] == rows["middle"]["op"] == "CONV_2D"
    assert rows["head"]["op"] == "FULLY_CONNECTED"
    for row in rows.values():
        # 8 bits: both ≈ 40 dB from float and close to each other; the integer model
        # rounds differently on a few values only.
        assert 20 < row["float_sim_sqnr_db"] < 80 and 20 < row["integer_sqnr_db"] < 80
        assert abs(row["float_sim_sqnr_db"] - row["integer_sqnr_db"]) < 3
        assert 0 <= row["differ"] < 0.2


def test_report_command_writes_html_and_plots(tmp_path):
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    small_model().save(model_path)
    np.savez(data_path, x=np.random.default_rng(1).uniform(0, 1, (70, 8, 8, 1)).astype("float32"))
    config_path = tmp_path / "c.json"
    config_path.write_text(json.dumps({"weight_bits": 4}))
    out = tmp_path / "report"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "tfquant.cli", "report", model_path]
    result = subprocess.run(command + ["--data", data_path, "--config", str(config_path),
                                       "-o", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (out / "index.html").read_text()
    for name in ("conv", "middle", "head", "relu_quant"):
        assert f"<td>{name}</td>" in page, name
    images = sorted(p.name for p in out.glob("*.png"))
    assert images == ["activation_ranges.png", "integer_layers.png", "weight_sqnr.png",
                      "weights_000_conv_kernel.png", "weights_001_middle_kernel.png",
                      "weights_002_head_kernel.png"]
    assert "Keras and LiteRT, layer by layer" in page and "integer model SQNR" in page
    for image in images:
        assert f"src='{image}'" in page
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "quantized and calibrated for this report" in page
    result = subprocess.run(command + ["-o", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "--data" in result.stderr


def test_integer_rows_match_tensors_by_shape_where_converter_names_mislead():
    """In MobileNetV3Small's flatbuffer the converter names its first CONV_2D's output
    after `conv_1`, the last 1×1 convolution (576 channels): the rows take a tensor for a
    layer only when it holds the layer's values."""
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None,
                                                classes=10, classifier_activation=None)
    x = np.random.default_rng(3).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    qmodel = tfquant.ptq.quantize(model, x, verbose=0)
    flatbuffer = tfquant.export_tflite(qmodel).flatbuffer
    rows = report.integer_rows(qmodel, x[:4], flatbuffer)
    assert len(rows) > 40
    by_layer = {row["layer"]: row for row in rows}
    assert by_layer["conv_1"]["op"] == "CONV_2D"
    assert all(0 <= row["differ"] <= 1 for row in rows)
