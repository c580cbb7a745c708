import os

import keras
import numpy as np
import pytest
from keras import layers

import tfquant
from tfquant import ptq


def mlp():
    inputs = keras.Input((20,))
    x = layers.Dense(64, activation="relu", name="big")(inputs)
    x = layers.Dense(16, activation="relu", name="mid")(x)
    outputs = layers.Dense(5, name="head")(x)
    return keras.Model(inputs, outputs)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype(np.float32)
    return x, rng.integers(0, 5, 256)


def test_sensitivity_table_orders_bit_widths():
    model, (x, y) = mlp(), _data()
    report = ptq.layer_sensitivity(model, x, labels=y, bits=(8, 4, 2))
    assert report.layers() == ["big", "mid", "head"]
    for name in report.layers():
        sqnr = [report.get(name, b)["sqnr_db"] for b in (8, 4, 2)]
        assert sqnr[0] > sqnr[1] > sqnr[2]
        assert report.get(name, 8)["sqnr_db"] > 30
        assert abs(report.get(name, 8)["accuracy_delta"]) <= 0.02
    text = report.table()
    assert "big" in text and "SQNR@4b" in text and "float accuracy" in text


def test_plot_writes_a_png_or_says_how_to_get_matplotlib(tmp_path):
    model, (x, _) = mlp(), _data()
    report = ptq.layer_sensitivity(model, x[:32], bits=(8, 2))
    path = str(tmp_path / "sensitivity.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            report.plot(path)
    else:
        report.plot(path)
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(path) > 1000


def test_mixed_precision_meets_the_budget_and_feeds_quant_config():
    model, (x, _) = mlp(), _data()
    plan = ptq.mixed_precision(model, x, size_ratio=0.2, bits=(8, 4, 2))
    assert plan.size_bytes <= 0.2 * plan.float_bytes
    assert plan.float_bytes == 4 * model.count_params()
    assert all(isinstance(rule, tfquant.LayerRule) for rule in plan)
    assert set(plan.bits) == {"big", "mid", "head"}
    assert min(plan.bits.values()) < 8  # 8 bits everywhere is 0.25× the float size
    # The biggest layer gives up bits first per byte of noise.
    assert plan.bits["big"] <= plan.bits["head"]
    qmodel = tfquant.quantize_model(model, tfquant.QuantConfig(rules=list(plan)))
    big = {l.name: l for l in qmodel.layers}["big"]
    assert big.weight_quantizer.num_bits == plan.bits["big"]
    with pytest.raises(ValueError, match="budget"):
        ptq.mixed_precision(model, x, size_ratio=0.01, bits=(8, 4))
