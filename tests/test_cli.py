import json
import os
import subprocess
import sys

import keras
import numpy as np
from keras import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tfquant_command(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tfquant.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quantize_export_inspect_from_the_shell(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Conv2D(4, 3, name="middle")(x)
    outputs = layers.Dense(3, name="head")(layers.Flatten()(x))
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    keras.Model(inputs, outputs).save(model_path)
    np.savez(data_path, x=np.random.rand(64, 8, 8, 1).astype(np.float32))
    config_path = str(tmp_path / "c.json")
    with open(config_path, "w") as handle:
        json.dump({"weight_bits": 4, "rules": [{"match": "head", "weight_bits": 8}]}, handle)

    q_path, t_path = str(tmp_path / "q.keras"), str(tmp_path / "m.tflite")
    result = tfquant_command("quantize", model_path, "--calib", data_path, "--config",
                             config_path, "-o", q_path)
    assert result.returncode == 0, result.stderr
    result = tfquant_command("export", q_path, "--data", data_path, "-o", t_path)
    assert result.returncode == 0, result.stderr
    assert "argmax agree" in result.stdout and os.path.exists(t_path)
    result = tfquant_command("inspect", t_path)
    assert result.returncode == 0, result.stderr
    # The middle conv has 4-bit weights (first/last stay at 8): INT4 in the flatbuffer.
    assert "INT4" in result.stdout and "CONV_2D" in result.stdout and "scale=" in result.stdout


def test_export_int4_flag_keeps_int4_after_low_bit_activations(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = layers.ReLU()(layers.Conv2D(4, 3, name="conv")(inputs))
    x = layers.ReLU()(layers.Conv2D(4, 3, name="middle")(x))
    outputs = layers.Dense(3, name="head")(layers.Flatten()(x))
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    keras.Model(inputs, outputs).save(model_path)
    np.savez(data_path, x=np.random.rand(32, 8, 8, 1).astype(np.float32))
    config_path, q_path = str(tmp_path / "c.json"), str(tmp_path / "q.keras")
    with open(config_path, "w") as handle:
        json.dump({"weight_bits": 4, "activation_bits": 4}, handle)
    result = tfquant_command("quantize", model_path, "--calib", data_path, "--config",
                             config_path, "-o", q_path)
    assert result.returncode == 0, result.stderr
    kinds = {}
    for name, extra in (("auto", []), ("int4", ["--int4"])):
        t_path = str(tmp_path / f"{name}.tflite")
        result = tfquant_command("export", q_path, "--data", data_path, "-o", t_path, *extra)
        assert result.returncode == 0, result.stderr
        kinds[name] = tfquant_command("inspect", t_path).stdout
    # 4-bit activations: the middle conv's 4-bit weights are int8 unless --int4.
    assert "INT4" not in kinds["auto"] and "INT4" in kinds["int4"]


def test_errors_are_messages_with_exit_codes(tmp_path):
    result = tfquant_command("inspect", str(tmp_path / "missing.tflite"))
    assert result.returncode == 1 and "no such file" in result.stderr
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\x00" * 64)
    result = tfquant_command("inspect", str(corrupt))
    assert result.returncode == 1 and "not a TFLite flatbuffer" in result.stderr
    result = tfquant_command("export", str(tmp_path / "m.keras"))
    assert result.returncode == 2 and "-o" in result.stderr
    result = tfquant_command("frobnicate")
    assert result.returncode == 2 and "usage" in result.stderr


def test_the_command_keeps_tensorflow_log_lines_out_unless_verbose(tmp_path):
    inputs = keras.Input((8,))
    outputs = layers.Dense(3)(layers.Dense(4, activation="relu")(inputs))
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    keras.Model(inputs, outputs).save(model_path)
    np.savez(data_path, x=np.random.rand(16, 8).astype(np.float32))
    launcher = [sys.executable, os.path.join(ROOT, "tfquant_cli.py")]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def command(*args):
        return subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)

    quiet = command("quantize", model_path, "--calib", data_path, "-o",
                    str(tmp_path / "q.keras"))
    assert quiet.returncode == 0, quiet.stderr
    assert "wrote" in quiet.stdout and quiet.stderr.strip() == "", quiet.stderr
    refused = command("export", str(tmp_path / "absent.keras"), "-o", "m.tflite")
    # tfquant's own message still reaches the terminal, and only it.
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"tfquant export: {tmp_path / 'absent.keras'}: no such file."
    verbose = command("quantize", model_path, "-o", str(tmp_path / "q2.keras"), "--verbose")
    # TensorFlow logs as it loads (oneDNN, CUDA drivers): --verbose lets it through.
    assert verbose.returncode == 0 and verbose.stderr.strip() != ""
