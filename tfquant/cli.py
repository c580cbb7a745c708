"""The `tfquant` command: quantize, export, inspect and report on models from the shell.

    tfquant quantize MODEL.keras [--calib DATA.npz] [--config CONFIG.json] -o out.keras
    tfquant export MODEL.keras -o model.tflite [--data DATA.npz] [--int8_io] [--int4]
    tfquant inspect model.tflite
    tfquant report MODEL.keras --data DATA.npz -o report/ [--config CONFIG.json]

Exit codes: 0 done, 1 the input was refused (message on stderr), 2 usage.
TensorFlow's log lines are kept out unless --verbose is given.
"""

import json
import os
import sys
import zipfile

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("o", None, "Output path.")
flags.DEFINE_string("calib", None, "A .npz whose first array holds calibration samples.")
flags.DEFINE_string("data", None, "A .npz whose first array holds samples to verify with.")
flags.DEFINE_string("config", None, "A JSON file of QuantConfig arguments.")
flags.DEFINE_bool("int8_io", False, "Export with int8 model input and output.")
flags.DEFINE_bool("int4", False, "Store 2-4-bit weights as INT4 also in models with "
                  "activations below 8 bits (export_tflite low_bit_weights='int4'; "
                  "default: int8 there, for a finer int32 bias).")
flags.DEFINE_integer("calib_batches", 8, "Calibration batches of 32 samples.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's and LiteRT's log lines.")

USAGE = __doc__.split("\n\n")[1]


class CommandError(Exception):
    """A message for the shell user; exit code 1."""


def _load_samples(path):
    import numpy as np

    _check_file(path)
    try:
        with np.load(path) as archive:
            if not archive.files:
                raise CommandError(f"{path} holds no arrays.")
            return archive[archive.files[0]].astype("float32")
    except (ValueError, OSError) as error:
        raise CommandError(f"{path} is not a readable .npz file ({error}).") from None


def _load_model(path):
    import keras

    import tfquant  # noqa: F401  registers tfquant's layers for loading

    _check_file(path)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise CommandError(f"{path} is not a Keras model: a .keras file is a zip archive "
                           "(written by model.save), and this file is not one.")
    try:
        return keras.models.load_model(path)
    except (ValueError, OSError, TypeError, KeyError) as error:
        raise CommandError(f"{path} is not a Keras model tfquant can load: {error}") from None


def _check_file(path):
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise CommandError(f"{path} is a directory; give a file.")


def _load_config(path):
    import tfquant

    if path is None:
        return None
    try:
        with open(path) as handle:
            arguments = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise CommandError(f"{path}: not a readable JSON file ({error}).") from None
    rules = [tfquant.LayerRule(**rule) for rule in arguments.pop("rules", [])]
    try:
        return tfquant.QuantConfig(rules=rules, **arguments)
    except (TypeError, ValueError) as error:
        raise CommandError(f"{path}: {error}") from None


def _quantized(model):
    """quantize_model(model, --config), its refusal as a CommandError."""
    import tfquant

    try:
        return tfquant.quantize_model(model, _load_config(FLAGS.config))
    except ValueError as error:
        raise CommandError(str(error)) from None


def _calibrate(qmodel, samples):
    """Observes the activation ranges on up to --calib_batches batches of `samples`
    (BN frozen, training-mode passes)."""
    import keras

    import tfquant

    tfquant.freeze_batch_norm(qmodel)
    batches = max(1, min(FLAGS.calib_batches, -(-len(samples) // 32)))
    progress = keras.utils.Progbar(batches, unit_name="calibration batch")
    for i in range(batches):
        qmodel(samples[i * 32:(i + 1) * 32], training=True)
        progress.update(i + 1)


def quantize(model_path, output):
    qmodel = _quantized(_load_model(model_path))
    if FLAGS.calib:
        _calibrate(qmodel, _load_samples(FLAGS.calib))
    from tfquant.export.files import replaced_atomically

    if not output.endswith(".keras"):
        raise CommandError(f"-o {output}: a Keras model is saved as a .keras file; give a "
                           "path ending in .keras.")
    with replaced_atomically(output) as temporary:  # a failed save keeps the old file
        qmodel.save(temporary)
    print(f"wrote {output}")


def export(model_path, output):
    import tfquant

    qmodel = _load_model(model_path)
    data = _load_samples(FLAGS.data) if FLAGS.data else None
    io_type = "int8" if FLAGS.int8_io else "float32"
    try:
        report = tfquant.export_tflite(qmodel, output, representative_data=data,
                                       input_type=io_type, output_type=io_type,
                                       low_bit_weights="int4" if FLAGS.int4 else "auto")
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(report)


def inspect(path):
    import tfquant

    _check_file(path)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        summary = tfquant.inspect_flatbuffer(data)
    except ValueError as error:
        raise CommandError(f"{path}: {error}") from None
    print(f"{path}: {summary.size_bytes / 1024:.1f} KiB")
    for subgraph in summary.subgraphs:
        print(f"subgraph {subgraph.index} {subgraph.name!r}: {len(subgraph.operators)} ops")
        for op in subgraph.operators:
            tensors = ", ".join(
                f"{subgraph.tensors[i].type_name}{list(subgraph.tensors[i].shape)}"
                for i in op.inputs if i >= 0)
            print(f"  {op.index:3d} {op.name:22s} {tensors}")
        print("  tensors:")
        for tensor in subgraph.tensors:
            quant = ""
            if tensor.quantization is not None and tensor.quantization.scales:
                q = tensor.quantization
                scales = q.scales if len(q.scales) <= 3 else (*q.scales[:2], "...")
                quant = f" scale={scales} zero_point={q.zero_points[:3]} axis={q.quantized_dimension}"
            size = f" {tensor.buffer_bytes} B" if tensor.buffer_bytes else ""
            print(f"    {tensor.index:3d} {tensor.type_name:7s} {str(list(tensor.shape)):18s}"
                  f"{size}{quant} {tensor.name[:60]}")


# -- tfquant report ----------------------------------------------------------------------


def _quantized_model_for_report(model, samples):
    """`model` if it has tfquant quantizers; else quantize_model(model, --config) with
    its ranges calibrated on `samples`."""
    from tfquant.keras import quantizer_slots

    if quantizer_slots(model):
        return model, False
    qmodel = _quantized(model)
    _calibrate(qmodel, samples)
    return qmodel, True


def report(model_path, output):
    if not FLAGS.data:
        raise CommandError("give the samples to measure with --data DATA.npz")
    from tfquant.report import write_report
    from tfquant.report.plots import pyplot

    samples = _load_samples(FLAGS.data)
    try:
        pyplot()  # fail early without matplotlib
    except ImportError as error:
        raise CommandError(str(error)) from None
    model = _load_model(model_path)
    qmodel, calibrated = _quantized_model_for_report(model, samples)
    index = write_report(qmodel, samples, output, calibrated)
    print(f"wrote {index}")


def main(argv):
    args = argv[1:]
    commands = {"quantize": (quantize, 2), "export": (export, 2), "inspect": (inspect, 1),
                "report": (report, 2)}
    if not args or args[0] not in commands:
        print(f"usage:\n{USAGE}", file=sys.stderr)
        return 2
    command, arity = commands[args[0]]
    positional = args[1:]
    if len(positional) != 1:
        print(f"usage:\n{USAGE}", file=sys.stderr)
        return 2
    if arity == 2 and not FLAGS.o:
        print(f"tfquant {args[0]}: give the output path with -o", file=sys.stderr)
        return 2
    if not FLAGS.verbose:
        _quiet_python_logs()
    try:
        command(positional[0], FLAGS.o) if arity == 2 else command(positional[0])
    except CommandError as error:
        print(f"tfquant {args[0]}: {error}", file=sys.stderr)
        return 1
    return 0


def _quiet_python_logs():
    """TensorFlow's Python-side INFO lines and warnings off (the `tfquant` launcher,
    tfquant_cli.py, silences the native ones)."""
    import warnings

    from absl import logging

    logging.set_verbosity(logging.ERROR)
    warnings.simplefilter("ignore")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def run():
    """Console-script entry point."""
    # absl's --help prints the __main__ module's docstring: the console-script stub has
    # none, so it would show a bare "USAGE: tfquant [flags]" without the commands.
    sys.modules["__main__"].__doc__ = __doc__
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
