"""tf_keras (Keras 2) models through tfquant's one code path.

In this process (Keras 3): the rebuild of tf_keras models as Keras 3 keeps layers, names,
graph (nested models, shared layers) and weights, and what cannot be rebuilt is refused by
name. In a subprocess with `TF_USE_LEGACY_KERAS=1` (how TFMOT users run): the core
workflow on real Fashion-MNIST with tf_keras-built models — quantize_model → fit with a
tfquant callback → export_tflite agreeing with LiteRT, and ptq.quantize → export.
"""

import keras
import numpy as np
import pytest
import tf_keras

import tfquant
from legacy_keras_helpers import run_legacy_keras_script
from model_zoo import subclassed_model
from tfquant.keras.tf_keras_models import as_keras3

L = tf_keras.layers


def nested_tf_keras_model():
    """Conv-BN-ReLU, a nested Functional block used twice (shared), Add, a nested
    Sequential head."""
    inputs = tf_keras.Input((8, 8, 2), name="image")
    h = L.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    block_in = tf_keras.Input((6, 6, 4))
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(block_in)
    b = L.Conv2D(4, 1, activation="relu6", name="pw")(b)
    block = tf_keras.Model(block_in, b, name="block")
    h = L.Add(name="add")([h, block(block(h))])
    head = tf_keras.Sequential([tf_keras.Input((6, 6, 4)), L.GlobalAveragePooling2D(),
                                L.Dense(3, name="logits")], name="head")
    model = tf_keras.Model(inputs, head(h), name="tfk")
    rng = np.random.default_rng(3)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4),
                    rng.uniform(0.5, 2, 4)])
    return model


def test_rebuild_keeps_graph_names_and_numbers():
    model = nested_tf_keras_model()
    rebuilt, annotations = as_keras3(model)
    assert annotations is None
    assert isinstance(rebuilt, keras.Model) and rebuilt.name == "tfk"
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    block = rebuilt.get_layer("block")
    assert isinstance(block, keras.Model) and len(block._inbound_nodes) == 2  # shared
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(rebuilt(x)), model(x).numpy(), atol=1e-5)
    # quantize_model takes the tf_keras model itself: the nested block is inlined, BN
    # folded, and the result is a Keras 3 model that computes with the same weights.
    qmodel = tfquant.quantize_model(model)
    assert isinstance(qmodel, keras.Model)
    assert isinstance(qmodel.get_layer("conv"), tfquant.keras.QuantizedConvolution)
    assert qmodel.get_layer("conv").batch_norm is not None
    np.testing.assert_array_equal(qmodel.get_layer("logits").layer.kernel.numpy(),
                                  model.get_layer("head").get_layer("logits").kernel.numpy())


def test_what_cannot_be_rebuilt_is_refused_by_name():
    class Custom(L.Layer):
        def call(self, x):
            return x * 2.0

    inputs = tf_keras.Input((4,))
    custom = tf_keras.Model(inputs, L.Dense(2)(Custom(name="twice")(inputs)))
    with pytest.raises(ValueError, match=r"'twice' \(Custom\) has no Keras 3 counterpart"):
        tfquant.quantize_model(custom)

    lam = tf_keras.Model(inputs, L.Lambda(lambda t: t + 1.0, name="plus_one")(inputs))
    with pytest.raises(ValueError, match=r"'plus_one' \(Lambda\).*Python function"):
        tfquant.quantize_model(lam)

    with pytest.raises(ValueError, match=r"subclassed model \(Net\).*Functional"):
        tfquant.quantize_model(subclassed_model(tf_keras))
    with pytest.raises(ValueError, match=r"an unbuilt Sequential model"):
        tfquant.quantize_model(tf_keras.Sequential([L.Dense(2)]))

    ghost_bn = tf_keras.Model(inputs, L.BatchNormalization(virtual_batch_size=8, name="vbn")(inputs))
    with pytest.raises(ValueError, match=r"'vbn' \(BatchNormalization\): virtual_batch_size=8"):
        tfquant.quantize_model(ghost_bn)

    # A float tf_keras model is not exportable before quantization: the usual message.
    with pytest.raises(tfquant.ExportError, match="call tfquant.quantize_model"):
        tfquant.export_tflite(tf_keras.Model(inputs, L.Dense(2)(inputs)))


CORE_UNDER_TF_KERAS = '''import json, sys
import numpy as np
import tensorflow as tf
import tf_keras
import keras
import tfquant
from datasets import load_fashion_mnist

keras.utils.set_random_seed(5)
tf_keras.utils.set_random_seed(5)
(x, y), (x_test, y_test) = load_fashion_mnist()
x, y, x_test, y_test = x[:2000], y[:2000], x_test[:300], y_test[:300]
L = tf_keras.layers


def build():
    inputs = tf_keras.Input((28, 28, 1), name="image")
    h = L.Conv2D(8, 3, strides=2, use_bias=False, name="conv")(inputs)
    # Momentum 0.9: the moving statistics settle within the short float training.
    h = L.BatchNormalization(momentum=0.9, name="bn")(h)
    h = L.ReLU(name="relu")(h)
    block_in = tf_keras.Input((13, 13, 8))
    b = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(block_in)
    b = L.BatchNormalization(momentum=0.9, name="dw_bn")(b)
    block = tf_keras.Model(block_in, L.ReLU(name="dw_relu")(b), name="block")
    h = L.Add(name="add")([h, block(h)])
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Flatten(name="flat")(h)
    return tf_keras.Model(inputs, L.Dense(10, name="logits")(h), name="fmnist")


float_model = build()
float_model.compile(optimizer=tf_keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                    loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
float_model.fit(x, y, batch_size=64, epochs=2, verbose=0)
float_accuracy = float_model.evaluate(x_test, y_test, verbose=0)[1]

qmodel = tfquant.quantize_model(float_model)
qmodel.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
bn_before = qmodel.get_layer("conv").batch_norm.moving_mean.numpy().copy()
qmodel.fit(x, y, batch_size=64, epochs=1, verbose=0,
           callbacks=[tfquant.callbacks.FreezeBatchNorm(after_steps=10)])
qat = tfquant.export_tflite(qmodel, representative_data=x_test)

# data_free: DFQ (BN folding, equalization) runs on the rebuilt Keras 3 float model.
ptq_model = tfquant.ptq.quantize(float_model, x[:256], data_free=True, verbose=0)
ptq = tfquant.export_tflite(ptq_model, representative_data=x_test)
print(json.dumps({
    "tf_keras": tf.keras.__name__,
    "float_type": type(float_model).__module__,
    "qat_type": type(qmodel).__module__,
    "layers": [layer.name for layer in qmodel.layers],
    "bn_frozen": float(qmodel.get_layer("conv").batch_norm_frozen),
    "bn_moved": float(np.abs(qmodel.get_layer("conv").batch_norm.moving_mean.numpy()
                             - bn_before).max()),
    "float_accuracy": float(float_accuracy),
    "qat_accuracy": float(qmodel.evaluate(x_test, y_test, verbose=0)[1]),
    "qat": [qat.float_ops, qat.max_abs_diff_lsb, qat.argmax_agreement, qat.op_counts],
    "ptq_accuracy": float(np.mean(np.argmax(ptq_model.predict(x_test, verbose=0), -1)
                                  == y_test)),
    "ptq": [ptq.float_ops, ptq.max_abs_diff_lsb, ptq.argmax_agreement],
}))
'''


def test_core_workflow_on_tf_keras_models_in_a_legacy_keras_process(tmp_path):
    script = tmp_path / "core_tf_keras.py"
    script.write_text(CORE_UNDER_TF_KERAS)
    report = run_legacy_keras_script(script)
    assert report["tf_keras"].startswith("tf_keras")  # tf.keras is Keras 2 here
    assert report["float_type"].startswith("tf_keras")
    assert report["qat_type"].startswith("keras.")  # what the user gets back: Keras 3
    # The nested block was inlined and its BN folded: no "block"/"bn" layers remain.
    assert "block" not in report["layers"] and "dw" in report["layers"]
    assert "bn" not in report["layers"] and "dw_bn" not in report["layers"]
    # The callback froze the folded BN after 10 of 32 steps; before, it trained on
    # batch statistics (its moving mean moved).
    assert report["bn_frozen"] == 1.0 and report["bn_moved"] > 0.0
    assert report["float_accuracy"] > 0.6
    assert report["qat_accuracy"] > report["float_accuracy"] - 0.05
    float_ops, max_lsb, agreement, ops = report["qat"]
    assert float_ops == [] and max_lsb <= 2.001 and agreement >= 0.98
    assert ops.get("CONV_2D") == 1 and ops.get("DEPTHWISE_CONV_2D") == 1
    assert report["ptq_accuracy"] > report["float_accuracy"] - 0.05
    float_ops, max_lsb, agreement = report["ptq"]
    assert float_ops == [] and max_lsb <= 2.001 and agreement >= 0.98
