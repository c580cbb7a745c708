"""`export_tflite`: a quantized Keras model → a verified full-integer TFLite flatbuffer."""

import contextlib
import io
import os
import warnings

import numpy as np
import tensorflow as tf

from tfquant.export import dynamic as dyn
from tfquant.export.files import atomic_write
from tfquant.export.flatbuffer import inspect_flatbuffer
from tfquant.export.int2 import to_int2_fully_connected
from tfquant.export.integer_exact import BACKENDS, IntegerModel, run_integer_model, unsupported
from tfquant.export.integer_grid import find_integer_grid, nearest_int8_grid
from tfquant.export.litert_runner import compare_outputs, output_lsb, run_litert
from tfquant.export.report import ExportReport, OutputCheck
from tfquant.keras.dtypes import float32_copy
from tfquant.keras.tf_keras_models import as_keras3, is_tfmot_quantized
from tfquant.keras.layers import handler_for
from tfquant.keras.slots import quantizer_slots
from tfquant.ops.arguments import check_choice
from tfquant.quantizers.base import Deployment, exporting

_IO_TYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}


class ExportError(ValueError):
    """The model cannot be exported as asked, or the export is not what was asked."""


def _io_type(value, what):
    key = getattr(value, "name", value)
    if key not in _IO_TYPES:
        raise ValueError(f"{what}={value!r} is not supported; allowed: {', '.join(_IO_TYPES)}.")
    return _IO_TYPES[key]


def _float_layers(model):
    """Layers the exported model computes in float (kept in float by the config): those
    that are no tfquant layer and that their handler does not keep as they are."""
    float_layers = []
    for layer in model.layers:
        if hasattr(layer, "quantizer_slots"):
            continue  # a tfquant quantized layer
        handler = handler_for(layer)
        if handler is None or not handler.keeps_layer(layer):
            float_layers.append(layer)
    return float_layers


def _plan_deployment(model, nonuniform, low_bit_weights="auto"):
    """Checks that every quantizer can be exported; returns (notes, weight grids, whether
    2–4-bit weights go onto int8 grids — `low_bit_weights`, see `export_tflite`).

    Weights of quantizers without a uniform deployment go onto an exact integer grid
    when their levels allow, else onto the nearest int8 grid if `nonuniform` says so.
    """
    quantizers = []  # (layer, role, quantizer), a layer's kernels counted once
    for slot in quantizer_slots(model):
        entry = (slot.layer, "kernel" if slot.is_weight else slot.role, slot.quantizer)
        if not any(e[0] is entry[0] and e[1] == entry[1] for e in quantizers):
            quantizers.append(entry)
    if not quantizers:
        raise ExportError(
            f"Model {model.name!r} has no tfquant quantizers: call tfquant.quantize_model "
            "(and train or calibrate it) before export_tflite."
        )
    notes, grids, problems = [], {}, []
    widened = sorted({f"{layer.name} ({role}, {quantizer.num_bits} bits)"
                      for layer, role, quantizer in quantizers
                      if quantizer.deployment() is Deployment.INT8_WIDENED})
    int8_low_bit = low_bit_weights == "int8" or (low_bit_weights == "auto" and bool(widened))
    for layer, role, quantizer in quantizers:
        if quantizer.deployment() is not Deployment.SIMULATION:
            continue
        if role != "kernel":
            problems.append(f"{layer.name} ({role}): {type(quantizer).__name__} levels have "
                            "no integer form in TFLite; keep this layer in float")
            continue
        for kernel_name, (values, axis) in layer.deployed_kernels().items():
            grid = find_integer_grid(values, axis, min_bits=8 if int8_low_bit else 4)
            where = f"{layer.name}.{kernel_name}"
            if grid is not None:
                notes.append(f"{where}: {type(quantizer).__name__} levels stored exactly as "
                             f"{'INT4' if grid.num_bits == 4 else 'int8'} integers")
                grids[(layer.name, kernel_name)] = grid
                continue
            nearest = nearest_int8_grid(values, axis)
            if nonuniform == "nearest_grid":
                notes.append(f"{where}: {type(quantizer).__name__} levels rounded to the "
                             f"nearest int8 grid (relative error {nearest.relative_error:.3%})")
                grids[(layer.name, kernel_name)] = nearest
            else:
                problems.append(
                    f"{where}: {type(quantizer).__name__} levels are not integer multiples "
                    f"of one step (nearest int8 grid: relative error "
                    f"{nearest.relative_error:.3%})")
    if problems:
        raise ExportError(
            "These quantizers have no exact integer form in TFLite: " + "; ".join(problems)
            + ". Export the weights on the nearest int8 grid with "
            "export_tflite(..., nonuniform='nearest_grid'), or keep those layers in float "
            "with QuantConfig(float_layers=[...]) and quantize again."
        )
    if widened:
        notes.append("activations quantized to fewer than 8 bits are stored in int8 tensors "
                     "(LiteRT's integer kernels take 8 or 16 bits) holding exactly their "
                     "trained low-bit values: " + ", ".join(widened))
    if int8_low_bit:
        notes.append("2–4-bit weights are stored on their finest exact int8 grid, not INT4 "
                     "(low_bit_weights=" + repr(low_bit_weights) + "): the int32 bias step "
                     "is input step × weight step, and after a sub-8-bit activation an INT4 "
                     "step leaves it a large fraction of an output step")
    return notes, grids, int8_low_bit


def _as_input_list(model, data):
    arrays = list(data) if isinstance(data, (list, tuple)) else [data]
    if len(arrays) != len(model.inputs):
        raise ValueError(
            f"representative_data has {len(arrays)} array(s); model {model.name!r} has "
            f"{len(model.inputs)} input(s)."
        )
    # Integer inputs (token ids) keep their dtype; float inputs become float32.
    arrays = [np.asarray(a, dtype="float32" if "float" in str(t.dtype) else str(t.dtype))
              for a, t in zip(arrays, model.inputs)]
    counts = {len(a) for a in arrays}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            "representative_data arrays must be non-empty and hold the same number of "
            f"samples; got {[len(a) for a in arrays]}."
        )
    for array, tensor in zip(arrays, model.inputs):
        if tuple(array.shape[1:]) != tuple(tensor.shape[1:]):
            raise ValueError(
                f"representative_data for input {tensor.name!r} has sample shape "
                f"{tuple(array.shape[1:])}; the model expects {tuple(tensor.shape[1:])}."
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(
                f"representative_data for input {tensor.name!r} contains NaN or Inf values."
            )
    return arrays


def _by_input_name(model, arrays):
    """Several inputs keyed by input name (the converter and the interpreter order them
    their own way, by signature name); one input as a list."""
    if len(arrays) == 1:
        return arrays
    return {tensor.name: array for tensor, array in zip(model.inputs, arrays)}


def _convert(model, arrays, input_type, output_type, integer_only, dynamic=False):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # Needed for per-channel Dense and Conv2DTranspose kernels (docs/ARCHITECTURE.md §4);
    # DYNAMIC keeps the weight fake quants' integers for hybrid kernels (export/dynamic.py).
    converter._experimental_qdq_conversion_mode = "DYNAMIC" if dynamic else "STATIC"
    if dynamic:
        arrays = None  # every activation stays float: nothing to calibrate
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    elif integer_only and arrays is not None:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    else:
        # Without samples the converter takes every range from the model's fake-quant
        # ops (it refuses TFLITE_BUILTINS_INT8 without a representative dataset); a
        # tensor left without one comes out float, which `check_integer_ops` reports.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.inference_input_type = input_type
    converter.inference_output_type = output_type
    if arrays is not None:
        samples = min(len(arrays[0]), 200)

        def representative_dataset():
            for i in range(samples):
                yield _by_input_name(model, [a[i:i + 1] for a in arrays])

        converter.representative_dataset = representative_dataset
    try:
        # Keras prints the SavedModel signature it exports on the way; keep stdout clean.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return converter.convert()
    except Exception as error:  # the converter raises several unrelated types
        message = str(error).strip().splitlines()
        raise ExportError(
            f"The TFLite converter rejected model {model.name!r}: "
            + " ".join(message[-3:])[:2000]
        ) from error


def _keras_outputs(model, arrays, batch_size, grids, int8_low_bit):
    """The model's inference outputs as the export computes them (eager calls, so the
    `exporting` context reaches every quantizer, unlike a cached predict function)."""
    batches = []
    with exporting(grids, int8_low_bit):
        for start in range(0, len(arrays[0]), batch_size):
            batch = [a[start:start + batch_size] for a in arrays]
            outputs = model(batch if len(batch) > 1 else batch[0], training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            batches.append([np.asarray(o) for o in outputs])
    return [np.concatenate(parts) for parts in zip(*batches)]


def check_integer_ops(summary, allow_float=False):
    """The float compute ops of a flatbuffer (as text); raises `ExportError` if there are
    any and `allow_float` is False (every layer was meant to be integer)."""
    float_ops = [summary.describe_op(op) for op in summary.float_compute_ops()]
    if float_ops and not allow_float:
        raise ExportError(
            "These ops came out float although every layer was quantized: "
            + "; ".join(float_ops) + ". Check that the layers before them are trained or "
            "calibrated (or give representative_data for tensors without a range), or keep "
            "them in float with QuantConfig(float_layers=...)."
        )
    return float_ops


def export_tflite(model, path=None, representative_data=None, input_type="float32",
                  output_type="float32", batch_size=256, nonuniform="error",
                  int2_fully_connected=False, low_bit_weights="auto", activations="static"):
    """Converts a quantized model to a full-integer TFLite flatbuffer and verifies it.

    Weights become int8 (per-channel) — INT4 for 4- and 2-bit weights, see
    `low_bit_weights` — and activations int8 (int16 for 16-bit activation quantizers;
    activations trained with fewer than 8 bits are int8 tensors holding their low-bit
    values, which the report's notes say). Layers kept in float by the config stay float. The flatbuffer is checked: an op that came out float although every layer
    was quantized raises `ExportError`. With `representative_data`, the flatbuffer runs in
    the LiteRT interpreter (`ai_edge_litert`) on it and its outputs are compared with
    the Keras model's (`training=False`).

    Args:
      model: a model from `tfquant.quantize_model` (trained or calibrated); also a
        tf_keras model that TFMOT's `quantize_apply` made (converted as it is, in a
        process with `TF_USE_LEGACY_KERAS=1`, and verified the same way).
      path: where to write the flatbuffer (directories are created; the file is written
        whole through a temporary file, or not at all); None: don't write.
      representative_data: an array (a list of arrays for several inputs) of samples;
        used to verify the export (and by the converter for any tensor without a range).
        Optional: without it every range comes from the model's quantizers, and the
        flatbuffer is checked for float ops but not run.
      input_type, output_type: "float32" (quantize/dequantize inside the model), "int8"
        or "uint8".
      batch_size: batch size of the verification runs.
      nonuniform: what to do with weights whose quantizer has no uniform grid and whose
        levels are not integer multiples of one step (TTQ with W_p ≠ W_n, LQ-Nets):
        "error" (default: raise, with the error the fallback would cost) or
        "nearest_grid" (round them to the nearest int8 grid; the report's notes give the
        relative error). Levels on an integer grid (TWN, XNOR, DoReFa) export exactly.
      int2_fully_connected: store 2-bit FULLY_CONNECTED filters as INT2 (TensorType 19,
        four values a byte) instead of INT4 holding the same values
        (`tfquant.export.int2`); the numbers do not change (LiteRT's builtin INT2 and
        INT4 FULLY_CONNECTED kernels give the same bits). The notes list the filters.
      low_bit_weights: storage of 2–4-bit weights: "int4" (INT4, half the bytes of
        int8), "int8" (the finest int8 grid holding the same values exactly) or "auto"
        (default: int8 when the model has activations below 8 bits, else INT4). TFLite's
        int32 bias has the step input step × weight step; after a 2-bit activation (step
        ≈ the whole range / 3) an INT4 weight step leaves that a third of an output step,
        and LiteRT agreed with Keras on only about half of the W2A2 demo CNN's predictions
        (99 % with int8). INT2 FULLY_CONNECTED filters need "int4".
      activations: "static" (default: the full-integer export above) or "dynamic"
        (weight-only, TFLite's dynamic range quantization): weights int8 per channel
        (INT4 for 2–4-bit FULLY_CONNECTED/CONV_2D; depthwise on int8, which LiteRT's
        hybrid kernel needs), activations float32, FULLY_CONNECTED/CONV quantizing
        their input at run time. For a weight-only model —
        `QuantConfig(activation_quantizer=None)` for QAT or `ptq.quantize` — whose
        Keras model simulates exactly those weights; a model with activation
        quantizers is refused (its training simulated activations that LiteRT would
        not compute), as are int8 input/output types and `int2_fully_connected`.
        The export checks that every quantized kernel is stored as its Keras integers
        and scales; the verification notes max |Keras − LiteRT|, LiteRT's run-time
        activation quantization (`dynamic.TOLERANCE`: expected within 3 % of
        max |output|, measured 0.5–1.5 %).

    Returns:
      An `ExportReport`: the flatbuffer bytes, size, ops, weight dtypes read from the
      flatbuffer, max |Keras − LiteRT| in output LSB and the argmax agreement.
    """
    if path is not None and os.path.isdir(path):
        raise ValueError(f"path={path!r} is a directory; give the flatbuffer's file path, "
                         f"e.g. {os.path.join(path, 'model.tflite')!r}.")
    input_type = _io_type(input_type, "input_type")
    output_type = _io_type(output_type, "output_type")
    if low_bit_weights not in ("auto", "int4", "int8"):
        raise ValueError(f"low_bit_weights={low_bit_weights!r} is not supported; allowed: "
                         "'auto', 'int4', 'int8'.")
    if nonuniform not in ("error", "nearest_grid"):
        raise ValueError(f"nonuniform={nonuniform!r} is not supported; allowed: 'error', "
                         "'nearest_grid'.")
    check_choice("export_tflite", "activations", activations, ("static", "dynamic"))
    if activations == "dynamic":
        return _export_dynamic(model, path, representative_data, input_type, output_type,
                               batch_size, nonuniform, int2_fully_connected, low_bit_weights)
    tfmot_model = is_tfmot_quantized(model)
    if tfmot_model:
        # TFMOT's quantize_apply result (tf_keras): converted as TFMOT quantized it.
        notes, grids, float_layers = ["a TFMOT quantize_apply model (tf_keras), converted "
                                      "as TFMOT quantized it"], {}, []
        int8_low_bit = False
    else:
        # A tf_keras model continues as its Keras 3 rebuild. A mixed-precision model
        # keeps float16 casts the converter refuses: export a float32 copy (same layers'
        # weights; the quantizer math is float32 already).
        model = float32_copy(as_keras3(model, "export_tflite")[0])
        notes, grids, int8_low_bit = _plan_deployment(model, nonuniform, low_bit_weights)
        float_layers = _float_layers(model)
    arrays = None if representative_data is None else _as_input_list(model, representative_data)
    with exporting(grids, int8_low_bit):
        flatbuffer = _convert(model, arrays, input_type, output_type, not float_layers)
    if int2_fully_connected:
        flatbuffer, int2_names = to_int2_fully_connected(flatbuffer)
        notes.append("INT2 FULLY_CONNECTED filters: " + (", ".join(int2_names) or "none "
                     "(no FULLY_CONNECTED filter holds a 2-bit grid)"))
    summary = inspect_flatbuffer(flatbuffer)
    float_ops = check_integer_ops(summary, allow_float=bool(float_layers))
    if float_layers:
        notes.append("float layers (kept by the config): "
                     + ", ".join(layer.name for layer in float_layers))
    max_lsb = agreement = None
    num_samples = 0
    output_checks = []
    if arrays is not None:
        reference = _keras_outputs(model, arrays, batch_size, grids, int8_low_bit)
        litert = run_litert(flatbuffer, _by_input_name(model, arrays), batch_size=batch_size)
        lsbs = output_lsb(flatbuffer)
        comparisons = [compare_outputs(ref, out, lsb)
                       for ref, out, lsb in zip(reference, litert, lsbs)]
        output_checks = _output_checks(flatbuffer, _by_input_name(model, arrays), reference,
                                       litert, lsbs, batch_size, notes)
        lsb_values = [c["max_abs_diff_lsb"] for c in comparisons if c["max_abs_diff_lsb"] is not None]
        max_lsb = max(lsb_values) if lsb_values else None
        agreement = comparisons[0]["argmax_agreement"]
        num_samples = len(arrays[0])
    if path is not None:
        atomic_write(path, flatbuffer)  # a failed write never leaves half a flatbuffer
    return ExportReport(
        flatbuffer=flatbuffer, path=path, size_bytes=len(flatbuffer),
        op_counts=summary.op_counts(),
        weight_dtypes={name: info.type_name for name, info in summary.weight_tensors().items()},
        float_ops=float_ops, max_abs_diff_lsb=max_lsb,
        argmax_agreement=agreement, num_samples=num_samples, notes=notes, summary=summary,
        output_checks=output_checks,
    )


def _export_dynamic(model, path, representative_data, input_type, output_type, batch_size,
                    nonuniform, int2_fully_connected, low_bit_weights):
    """`export_tflite(..., activations="dynamic")` (see there; export/dynamic.py)."""
    if input_type != tf.float32 or output_type != tf.float32 or int2_fully_connected:
        raise ValueError("export_tflite(activations='dynamic') keeps float32 inputs and "
                         "outputs and INT4 filters; got input_type, output_type = "
                         f"{input_type.name!r}, {output_type.name!r}, int2_fully_connected="
                         f"{int2_fully_connected!r}.")
    if is_tfmot_quantized(model):
        raise ExportError("export_tflite(activations='dynamic') takes a tfquant model; "
                          "TFMOT models export with activations='static'.")
    model = float32_copy(as_keras3(model, "export_tflite")[0])
    quantizing = dyn.activation_quantizer_problems(model)
    if quantizing:
        raise ExportError(
            f"export_tflite(activations='dynamic') exports weight-only models, but "
            f"{model.name!r} quantizes activations at: {', '.join(quantizing[:8])}"
            f"{' ...' if len(quantizing) > 8 else ''}. Quantize the float model with "
            "QuantConfig(activation_quantizer=None) (QAT or tfquant.ptq.quantize), or "
            "export this one with activations='static'.")
    notes, grids, int8_low_bit = _plan_deployment(model, nonuniform, low_bit_weights)
    grids.update(dyn.depthwise_int8_grids(model, int8_low_bit))
    arrays = None if representative_data is None else _as_input_list(model, representative_data)
    with exporting(grids, int8_low_bit):
        flatbuffer = _convert(model, arrays, tf.float32, tf.float32, False, dynamic=True)
    hybrid_notes, problems = dyn.check_hybrid(flatbuffer, model)
    if problems:
        raise ExportError("The dynamic-range flatbuffer is not what was asked: "
                          + "; ".join(problems) + ".")
    notes += hybrid_notes
    summary = inspect_flatbuffer(flatbuffer)
    agreement, num_samples = None, 0
    if arrays is not None:
        reference = _keras_outputs(model, arrays, batch_size, grids, int8_low_bit)
        litert = run_litert(flatbuffer, _by_input_name(model, arrays), batch_size=batch_size)
        agreement = compare_outputs(reference[0], litert[0], None)["argmax_agreement"]
        notes.append(dyn.difference_note(reference, litert))
        num_samples = len(arrays[0])
    if path is not None:
        atomic_write(path, flatbuffer)
    return ExportReport(
        flatbuffer=flatbuffer, path=path, size_bytes=len(flatbuffer),
        op_counts=summary.op_counts(),
        weight_dtypes={name: info.type_name for name, info in summary.weight_tensors().items()},
        float_ops=[], argmax_agreement=agreement, num_samples=num_samples, notes=notes,
        summary=summary)


def _output_checks(flatbuffer, inputs, reference, litert, lsbs, batch_size, notes):
    """Per output: how many LiteRT (XNNPACK) values differ from the integer-exact model
    (expected: none) and from the float simulation, in output steps."""
    missing = unsupported(flatbuffer)
    integer = None
    if missing is None:
        integer = run_integer_model(IntegerModel(flatbuffer, "xnnpack"), inputs, batch_size)
    else:
        notes.append(f"integer-exact check not run: {missing}")
    checks = []
    for k, (ref, out, lsb) in enumerate(zip(reference, litert, lsbs)):
        if not lsb:
            continue
        steps = lambda a: np.round(np.abs(np.asarray(a, np.float64) - out) / lsb)  # noqa: E731
        checks.append(OutputCheck(
            output=k, num_values=int(np.size(out)),
            differ_from_float=int(np.count_nonzero(steps(ref))),
            differ_from_integer=None if integer is None else int(np.count_nonzero(
                steps(integer[k])))))
    return checks


def integer_model(model, backend="xnnpack", **export_kwargs):
    """The integer-exact model of `model` for one LiteRT backend: a Keras model whose
    forward pass computes the integers LiteRT computes (docs/ARCHITECTURE.md §5), so
    `evaluate` on it gives the on-device accuracy without a device.

    Args:
      model: a quantized Keras model (exported first with
        `export_tflite(model, **export_kwargs)`), an `ExportReport`, or flatbuffer bytes.
      backend: "xnnpack" (LiteRT's default CPU path) or "builtin" (TFLite's own
        kernels, `OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`).

    Returns:
      An `IntegerModel`: float inputs and outputs for a float-interface export (the
      outputs are LiteRT's dequantized int8 values).
    """
    check_choice("integer_model", "backend", backend, BACKENDS)
    if isinstance(model, ExportReport):
        model = model.flatbuffer
    elif not isinstance(model, (bytes, bytearray, memoryview)):
        model = export_tflite(model, **export_kwargs).flatbuffer
    return IntegerModel(bytes(model), backend)
