"""tfquant and TFMOT together, in a subprocess with TF_USE_LEGACY_KERAS=1 (tf_keras):

- a model annotated with a TFMOT `QuantizeConfig` that uses tfquant quantizers goes
  through TFMOT's `quantize_apply`, trains, converts to int8 and agrees with LiteRT (also
  through `tfquant.export_tflite`);
- a model annotated with TFMOT's annotations goes through `tfquant.quantize_model` with
  the annotations honoured: annotated layers quantized with their config's tfquant
  quantizers (or tfquant's defaults), the others left float; it trains on Fashion-MNIST,
  converts and agrees with LiteRT."""

import pytest

from legacy_keras_helpers import run_legacy_keras_script

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
# export_tflite takes TFMOT's model too: converted as TFMOT built it, then verified.
tfmot_export = tfquant.export_tflite(qmodel, representative_data=x)
# quantize_model refuses it (quantized already), saying what to pass instead.
try:
    tfquant.quantize_model(qmodel)
    applied_error = None
except ValueError as error:
    applied_error = str(error)

# The annotated model through tfquant.quantize_model (a Keras 3 model comes back): the
# conv has a 4-bit LSQ kernel from its QuantizeConfig, the head TFMOT's default
# annotation (tfquant's defaults), the unannotated hidden Dense stays float.
import keras
from datasets import load_fashion_mnist


class LsqConfig(TfquantConfig):
    def __init__(self):
        super().__init__()
        self.weight = tfquant.quantizers.LSQQuantizer(4, per_channel=True)


keras.utils.set_random_seed(0)
(images, labels), _ = load_fashion_mnist()
images, labels = images[:1024], labels[:1024]
partly = tf_keras.Sequential([
    tf_keras.Input((28, 28, 1)),
    annotate(L.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
             quantize_config=LsqConfig()),
    L.Flatten(name="flat"),
    L.Dense(16, activation="relu", name="hidden"),
    annotate(L.Dense(10, name="head")),
])
annotated = tfquant.quantize_model(partly)
annotated.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
annotated.fit(images, labels, batch_size=32, epochs=3, verbose=0)
annotated_export = tfquant.export_tflite(annotated, representative_data=images[:256])
conv = annotated.get_layer("conv")
fully = tfquant.quantize_model(tfmot.quantization.keras.quantize_annotate_model(
    tf_keras.Sequential([tf_keras.Input((28, 28, 1)),
                         L.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
                         L.Flatten(name="flat"), L.Dense(10, name="head")])))


def kinds(model):
    return {layer.name: type(layer).__name__ for layer in model.layers}


print(json.dumps({
    "tf_keras": tf.keras.__name__,
    "tfmot_export": [tfmot_export.float_ops, tfmot_export.max_abs_diff_lsb,
                     tfmot_export.argmax_agreement],
    "applied_error": applied_error,
    "annotated_type": type(annotated).__module__,
    "annotated_layers": kinds(annotated),
    "annotated_conv": [type(conv.weight_quantizer).__name__, conv.weight_quantizer.num_bits,
                       conv.weight_quantizer.per_channel],
    "annotated_accuracy": float(annotated.evaluate(images, labels, verbose=0)[1]),
    "annotated_export": [annotated_export.max_abs_diff_lsb, annotated_export.argmax_agreement,
                         annotated_export.weight_dtypes, annotated_export.notes],
    "fully_layers": kinds(fully),
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


@pytest.fixture(scope="module")
def tfmot_interop_report(tmp_path_factory):
    """The JSON the script prints (one subprocess for both tests)."""
    path = tmp_path_factory.mktemp("tfmot") / "interop.py"
    path.write_text(SCRIPT)
    return run_legacy_keras_script(path)


def test_tfquant_quantizers_in_a_tfmot_quantize_config(tfmot_interop_report):
    report = tfmot_interop_report
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
    float_ops, max_lsb, agreement = report["tfmot_export"]
    assert float_ops == [] and max_lsb <= 1.001 and agreement == 1.0
    assert "made by TFMOT's quantize_apply" in report["applied_error"]
    assert "Pass the model before quantize_apply" in report["applied_error"]


def test_tfmot_annotations_through_tfquant_quantize_model(tfmot_interop_report):
    report = tfmot_interop_report
    assert report["annotated_type"].startswith("keras.")  # a Keras 3 model comes back
    layers = report["annotated_layers"]
    assert layers["conv"] == layers["head"] == "QuantizedConvolution"
    assert layers["hidden"] == "Dense"  # not annotated: float, as in TFMOT
    # The conv's QuantizeConfig held a 4-bit per-channel LSQ kernel quantizer: kept, bits
    # included (first-layer 8 bits do not override an annotation).
    assert report["annotated_conv"] == ["LSQQuantizer", 4, True]
    assert report["annotated_accuracy"] > 0.6  # trained from scratch briefly; chance: 0.1
    max_lsb, agreement, weight_dtypes, notes = report["annotated_export"]
    assert max_lsb <= 2.001 and agreement >= 0.98
    assert sorted(weight_dtypes.values()).count("INT4") == 1  # the conv's LSQ kernel
    assert any("float layers" in note and "hidden" in note for note in notes)
    # quantize_annotate_model annotates every layer: everything quantized.
    fully = report["fully_layers"]
    assert fully["conv"] == fully["head"] == "QuantizedConvolution"
