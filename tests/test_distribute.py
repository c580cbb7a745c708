"""QAT under tf.distribute: MirroredStrategy on two logical CPUs, and
MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1.

Each run is a subprocess (logical devices must be configured before TensorFlow starts;
workers are processes) under a hard timeout. The global batch is 16 samples: the first
replica/worker gets samples 0–7 in [-1, 1], the second samples 8–15 in [-5, 5], so a
range that is not aggregated across replicas is visibly wrong. The same holds for the
learned ranges (LSQ, TQT) initialized from the first batch.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240  # seconds per process; each takes ≈ 10 s

WORKER = '''import json, sys
mode, out = sys.argv[1], sys.argv[2]
import tensorflow as tf
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
import keras, numpy as np
from keras import layers
import tfquant
keras.utils.set_random_seed(7)
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (16, 6, 6, 2)).astype("float32")
x[8:] *= 5.0
y = rng.integers(0, 3, 16)
with strategy.scope():
    inputs = keras.Input((6, 6, 2), name="image")
    h = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.ReLU(name="relu")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, layers.Dense(3, name="head")(h))
    # The conv's input is the quantized model input (range: the global batch's).
    x_q = tf.quantization.fake_quant_with_min_max_vars(x, float(x.min()), float(x.max()))
    qmodel = tfquant.quantize_model(model)
    # What the folded BN's batch statistics see: the deployed (folded, quantized) kernel
    # divided by the fold factor γ/σ_mv.
    conv = qmodel.get_layer("conv")
    kernel = conv.deployed_kernels()["kernel"][0] / np.asarray(conv.fold_factor())
    raw = np.asarray(conv.layer.convolution_op(x_q, kernel))
    qmodel.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Learned ranges initialized from the first batch: LSQ steps, a TQT threshold after
    # the pooling (a small model: one more train function to trace, on every worker).
    # SGD with learning rate 0 keeps them at their initial values.
    pooled = layers.GlobalAveragePooling2D(name="pool")(inputs)
    lsq_model = tfquant.quantize_model(
        keras.Model(inputs, layers.Dense(3, name="dense")(pooled)),
        tfquant.QuantConfig(weight_quantizer="LSQQuantizer", activation_quantizer="LSQQuantizer",
                            rules=[tfquant.LayerRule("pool", activation_quantizer="TQTQuantizer")]))
    lsq_model.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def train(qmodel, learning_rate):
    if mode == "mirrored":
        qmodel.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return
    # Keras 3.15's fit fails under MultiWorkerMirroredStrategy before the first step (it
    # reduces a PerReplica batch eagerly to build the model); a custom loop, each worker
    # feeding its half of the global batch of 16.
    def shard(context):
        part = slice(8 * context.input_pipeline_id, 8 * (context.input_pipeline_id + 1))
        return tf.data.Dataset.from_tensor_slices((x[part], y[part])).batch(8)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    with strategy.scope():
        optimizer = keras.optimizers.SGD(learning_rate)
        optimizer.build(qmodel.trainable_variables)

    @tf.function
    def train_step(batch):
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(loss_fn(yb, qmodel(xb, training=True))) / 16.0
            grads = tape.gradient(loss, qmodel.trainable_variables)
            optimizer.apply_gradients(zip(grads, qmodel.trainable_variables))
        strategy.run(step, args=batch)

    for batch in strategy.distribute_datasets_from_function(shard):
        train_step(batch)


train(qmodel, 0.01)
train(lsq_model, 0.0)


def local(variable):
    """The value of `variable` on each local replica."""
    return [np.asarray(t).tolist() for t in strategy.experimental_local_results(variable.value)]


fake_quants = [layer for layer in qmodel.layers
               if isinstance(layer, tfquant.keras.ActivationFakeQuant)]
result = {"ranges": {layer.name: [local(layer.quantizer_variables["min"]),
                                  local(layer.quantizer_variables["max"])]
                     for layer in fake_quants},
          "moving_mean": local(qmodel.get_layer("conv").batch_norm.moving_mean),
          "expected_moving_mean": (0.01 * raw.mean(axis=(0, 1, 2))).tolist(),
          "head_kernel": local(qmodel.get_layer("head").layer.kernel),
          "global_range": [float(x.min()), float(x.max())],
          "learned": {v.path: local(v) for v in lsq_model.weights
                      if v.path.endswith(("_step", "_log2_threshold"))},
          # LSQ's initial step of the (signed, 8-bit) input: 2·mean|x|/sqrt(127) over
          # the global batch.
          "expected_input_step": float(2.0 * np.abs(x).mean() / np.sqrt(127.0))}
report = tfquant.export_tflite(qmodel, representative_data=x)
result.update(max_lsb=report.max_abs_diff_lsb, float_ops=report.float_ops,
              agreement=report.argmax_agreement)
with open(out, "w") as handle:
    json.dump(result, handle)
'''


def run_processes(tmp_path, mode, envs):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    processes = []
    for index, extra in enumerate(envs):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT, **extra)
        processes.append(subprocess.Popen(
            [sys.executable, str(script), mode, str(tmp_path / f"{mode}{index}.json")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [process.communicate(timeout=TIMEOUT)[0] for process in processes]
    finally:
        for process in processes:  # a hung worker must not outlive the test
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return [json.loads((tmp_path / f"{mode}{i}.json").read_text()) for i in range(len(envs))]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def check_one_run(result):
    """Every replica holds the same ranges, the input's is the global batch's, the folded
    BN's moving mean comes from the global batch, and the export agrees with LiteRT."""
    for name, (lows, highs) in result["ranges"].items():
        assert len(set(lows)) == 1 and len(set(highs)) == 1, (name, lows, highs)
    (lows, highs) = result["ranges"]["image_quant"]
    np.testing.assert_allclose([lows[0], highs[0]], result["global_range"], rtol=1e-6)
    for moving_mean in result["moving_mean"]:
        np.testing.assert_allclose(moving_mean, result["expected_moving_mean"], rtol=1e-4,
                                   atol=1e-8)
    assert result["float_ops"] == [] and result["max_lsb"] <= 1.001
    assert result["agreement"] == 1.0


def check_learned_ranges(result):
    """LSQ steps and the TQT threshold, initialized from the first batch, are the same on
    every replica; the input's LSQ step is the one of the global batch (replica 0 alone
    would give a third of it, replica 1 five thirds)."""
    learned = result["learned"]
    assert any(path.endswith("log2_threshold") for path in learned)
    for path, values in learned.items():
        assert all(value == values[0] for value in values), (path, values)
    (input_step,) = [values for path, values in learned.items()
                     if path.startswith("image_quant")]
    np.testing.assert_allclose(input_step[0], result["expected_input_step"], rtol=1e-5)


def test_mirrored_and_multi_worker_training_aggregate_ranges_across_replicas(tmp_path):
    (mirrored,) = run_processes(tmp_path, "mirrored", [{}])
    assert len(mirrored["moving_mean"]) == 2  # two replicas in one process
    check_one_run(mirrored)
    check_learned_ranges(mirrored)

    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    envs = [{"TF_CONFIG": json.dumps({"cluster": cluster,
                                      "task": {"type": "worker", "index": i}})}
            for i in range(2)]
    workers = run_processes(tmp_path, "multi_worker", envs)
    for result in workers:
        check_one_run(result)
        check_learned_ranges(result)
    assert workers[0]["learned"] == workers[1]["learned"]
    for path, values in mirrored["learned"].items():
        np.testing.assert_allclose(workers[0]["learned"][path][0], values[0], rtol=1e-5)
    # Both workers end with the same ranges and weights — and with what the two
    # replicas of MirroredStrategy computed from the same global batch.
    assert workers[0]["ranges"] == workers[1]["ranges"]
    for name, (lows, highs) in mirrored["ranges"].items():
        np.testing.assert_allclose(workers[0]["ranges"][name], [lows[:1], highs[:1]],
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(workers[0]["head_kernel"], workers[1]["head_kernel"])
    np.testing.assert_allclose(workers[0]["head_kernel"][0], mirrored["head_kernel"][0],
                               rtol=1e-4, atol=1e-6)
