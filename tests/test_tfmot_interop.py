"""tfquant quantizers inside TFMOT: a tf_keras model (TF_USE_LEGACY_KERAS=1, in a
subprocess) annotated with a TFMOT `QuantizeConfig` that uses tfquant quantizers goes
through `quantize_apply`, trains, converts to int8 and agrees with LiteRT."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = '''import json
import numpy as np
import tensorflow as tf
import tf_keras
import tfquant  # before TFMOT: the import hook registers the ABC when TFMOT loads
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
    QuantizeLayer)
from tfquant.export.litert_runner import compare_outputs, output_lsb, run_litert

TfmotQuantizer = tfmot.quantization.keras.quantizers.Quantizer


class TfquantConfig(tfmot.quantization.keras.QuantizeConfig):
    """Kernel per channel with tfquant's min/max quantizer, activation with its
    moving-average quantizer."""

    def __init__(self, per_channel=True):
        self.per_channel = per_channel
        self.weight = tfquant.quantizers.MinMaxWeightQuantizer(8, per_channel=per_channel)
        self.activation = tfquant.quantizers.MovingAverageQuantizer(8)

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.weight)]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, self.activation)]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"per_channel": self.per_channel}


annotate = tfmot.quantization.keras.quantize_annotate_layer
L = tf_keras.layers
model = tf_keras.Sequential([
    tf_keras.Input((8, 8, 1)),
    annotate(L.Conv2D(4, 3, activation="relu"), quantize_config=TfquantConfig()),
    L.Flatten(),
    annotate(L.Dense(3), quantize_config=TfquantConfig(per_channel=False)),
])
with tfmot.quantization.keras.quantize_scope({"TfquantConfig": TfquantConfig}):
    qmodel = tfmot.quantization.keras.quantize_apply(
        tfmot.quantization.keras.quantize_annotate_model(model))
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (64, 8, 8, 1)).astype("float32")
y = rng.integers(0, 3, 64)
qmodel.compile(optimizer="adam",
               loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
qmodel.fit(x, y, batch_size=32, epochs=2, verbose=0)
wrappers = [layer for layer in qmodel.layers if hasattr(layer, "quantize_config")]
ranges = {v.name: float(v.numpy()) for w in wrappers for v in w.weights
          if v.name.endswith(("activation_min:0", "activation_max:0"))}
# TFMOT's QuantizeLayer accepts only TFMOT Quantizers: the registration lets it take ours.
input_layer = QuantizeLayer(quantizer=tfquant.quantizers.MovingAverageQuantizer())
converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
flatbuffer = converter.convert()
summary = tfquant.inspect_flatbuffer(flatbuffer)
reference = qmodel.predict(x, verbose=0)
litert = run_litert(flatbuffer, [x])[0]
comparison = compare_outputs(reference, litert, output_lsb(flatbuffer)[0])
print(json.dumps({
    "tf_keras": tf.keras.__name__,
    "registered": isinstance(tfquant.quantizers.MovingAverageQuantizer(), TfmotQuantizer)
                  and issubclass(tfquant.quantizers.Quantizer, TfmotQuantizer),
    "wrappers": [type(w.quantize_config).__name__ for w in wrappers],
    "ranges": ranges,
    "ops": summary.op_counts(),
    "weights": {n: i.type_name for n, i in summary.weight_tensors().items()},
    "float_ops": [summary.describe_op(op) for op in summary.float_compute_ops()],
    "max_lsb": comparison["max_abs_diff_lsb"],
    "agreement": comparison["argmax_agreement"],
}))
'''


def test_tfquant_quantizers_in_a_tfmot_quantize_config(tmp_path):
    path = tmp_path / "interop.py"
    path.write_text(SCRIPT)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, timeout=240,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tf_keras"].startswith("tf_keras")
    # tfquant.Quantizer became a virtual subclass of TFMOT's ABC when TFMOT was imported.
    assert report["registered"] is True
    assert report["wrappers"].count("TfquantConfig") == 2
    # The moving-average ranges (made by tfquant's quantizer on TFMOT's wrapper) trained.
    assert len(report["ranges"]) == 4
    assert report["ranges"]["quant_conv2d/post_activation_min:0"] == 0.0  # after a ReLU
    assert 0.0 < report["ranges"]["quant_conv2d/post_activation_max:0"] < 6.0
    assert report["ops"].get("CONV_2D") == 1 and report["ops"].get("FULLY_CONNECTED") == 1
    kernels = [dtype for name, dtype in report["weights"].items() if "FakeQuant" in name]
    assert kernels == ["INT8", "INT8"]
    assert report["float_ops"] == [] and report["max_lsb"] <= 1.001
    assert report["agreement"] == 1.0
