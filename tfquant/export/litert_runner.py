"""Run a flatbuffer in the LiteRT interpreter over a whole evaluation set.

Float inputs are quantized for integer-input models and integer outputs are
dequantized, so callers always hand in and get back float values that compare
directly with the Keras model.

Output order: the converter does not keep Keras' output order in the subgraph
(a two-output model came out reversed), but the serving signature names them
``output_0``, ``output_1``, ... in Keras order. When the signature has those
names, outputs are returned in that order; otherwise in subgraph order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional, Sequence, Union

import numpy as np

from tfquant.export.flatbuffer import FlatbufferSummary, inspect_flatbuffer
from tfquant.ops.arguments import check_choice

_QUANTIZED_TYPES = {"INT8", "UINT8", "INT16"}
_QUANTIZED_DTYPES = (np.int8, np.uint8, np.int16)
_POSITIONAL_OUTPUT = re.compile(r"output_(\d+)$")

ArrayOrArrays = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]


BACKENDS = ("xnnpack", "builtin")


def _make_interpreter(data: bytes, num_threads: Optional[int], backend: str = "xnnpack"):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # AUTO applies LiteRT's default delegate (XNNPACK); the other runs TFLite's kernels.
    resolver = (OpResolverType.AUTO if backend == "xnnpack"
                else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return Interpreter(model_content=bytes(data), num_threads=num_threads,
                       experimental_op_resolver_type=resolver)


def ordered_output_tensors(summary: FlatbufferSummary) -> list[int]:
    """Tensor indices of the main subgraph's outputs, in the model's output order."""
    main = summary.main
    for sig in summary.signatures:
        if sig.subgraph_index != 0 or len(sig.outputs) != len(main.outputs):
            continue
        positions = {}
        for name, tensor in sig.outputs:
            match = _POSITIONAL_OUTPUT.match(name)
            if match:
                positions[int(match.group(1))] = tensor
        complete = sorted(positions) == list(range(len(main.outputs)))
        if complete and set(positions.values()) == set(main.outputs):
            return [positions[k] for k in range(len(main.outputs))]
    return list(main.outputs)


def _quant_params(detail) -> tuple[np.ndarray, np.ndarray, int]:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float64)
    zero_points = np.asarray(params.get("zero_points", []), dtype=np.int64)
    if scales.size == 0:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        scales = np.asarray([scale] if scale else [], dtype=np.float64)
        zero_points = np.asarray([zero_point], dtype=np.int64)
    return scales, zero_points, int(params.get("quantized_dimension", 0))


def _broadcast(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if values.size <= 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _quantize(x: np.ndarray, detail) -> np.ndarray:
    scales, zero_points, axis = _quant_params(detail)
    dtype = np.dtype(detail["dtype"])
    scaled = x.astype(np.float64) / _broadcast(scales, x.ndim, axis)
    # TFLite's QUANTIZE rounds half away from zero.
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    q = rounded + _broadcast(zero_points, x.ndim, axis)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, detail) -> np.ndarray:
    scales, zero_points, axis = _quant_params(detail)
    if scales.size == 0:
        return q.astype(np.float32)
    x = (q.astype(np.float64) - _broadcast(zero_points, q.ndim, axis)) * _broadcast(scales, q.ndim, axis)
    return x.astype(np.float32)


def _describe_input(detail) -> str:
    sig = detail.get("shape_signature")
    shape = list(sig) if sig is not None and len(sig) else list(detail["shape"])
    dims = ", ".join(["N"] + [str(d) if d >= 0 else "?" for d in shape[1:]]) if shape else ""
    return f"{detail['name']!r} [{dims}] {np.dtype(detail['dtype']).name}"


def _match_inputs(inputs: ArrayOrArrays, details: list[dict], summary: FlatbufferSummary) -> list:
    wanted = "; ".join(_describe_input(d) for d in details)
    if isinstance(inputs, Mapping):
        by_name = {}
        for sig in summary.signatures:
            if sig.subgraph_index == 0:
                by_name.update({name: tensor for name, tensor in sig.inputs})
        by_name.update({d["name"]: d["index"] for d in details})
        unknown = [k for k in inputs if k not in by_name]
        if unknown:
            raise ValueError(f"unknown model input name(s) {unknown}; the model's inputs are: {wanted}")
        given = {by_name[k]: v for k, v in inputs.items()}
        missing = [d for d in details if d["index"] not in given]
        if missing:
            raise ValueError(
                f"no array given for model input(s) {[d['name'] for d in missing]}; "
                f"the model's inputs are: {wanted}"
            )
        return [given[d["index"]] for d in details]
    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    if len(arrays) != len(details):
        raise ValueError(
            f"the model has {len(details)} input(s) ({wanted}) but {len(arrays)} array(s) were given"
        )
    return arrays


def _convert_input(array, detail, position: int) -> np.ndarray:
    x = np.asarray(array)
    label = f"input {position} ({_describe_input(detail)})"
    model_dtype = np.dtype(detail["dtype"])
    sig = detail.get("shape_signature")
    model_shape = list(sig) if sig is not None and len(sig) else list(detail["shape"])
    if len(model_shape) == 0:
        raise ValueError(f"{label}: scalar model inputs have no batch dimension to run over")
    if x.ndim != len(model_shape) or any(
        want >= 0 and got != want for got, want in zip(x.shape[1:], model_shape[1:])
    ):
        hint = " (add a batch dimension)" if x.ndim == len(model_shape) - 1 else ""
        raise ValueError(f"{label}: got an array of shape {x.shape}{hint}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{label}: got dtype {x.dtype}, which is not numeric")

    quantized = model_dtype in _QUANTIZED_DTYPES and _quant_params(detail)[0].size > 0
    if quantized:
        if x.dtype.kind == "f":
            return _quantize(x, detail)
        if x.dtype == model_dtype:
            return x  # already quantized values
        raise ValueError(
            f"{label}: got {x.dtype} values; pass float values (they are quantized with the "
            f"input's scale) or already-quantized {model_dtype.name} values"
        )
    if model_dtype.kind == "f":
        return x.astype(model_dtype)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x) & (x == np.round(x))):
        raise ValueError(f"{label}: got non-integer {x.dtype} values for a {model_dtype.name} input")
    if x.dtype.kind in "iu" and x.size:
        info = np.iinfo(model_dtype) if model_dtype.kind in "iu" else None
        if info is not None and (x.min() < info.min or x.max() > info.max):
            raise ValueError(f"{label}: values {x.min()}..{x.max()} do not fit {model_dtype.name}")
    return x.astype(model_dtype)


class _Session:
    """One interpreter at one batch size; a short last batch is zero-padded.

    ``batch`` None keeps the model's own batch size. Inputs are sized to the
    data's sample shape, which matters for dynamic non-batch dimensions.
    """

    def __init__(self, data, num_threads, batch: Optional[int], sample_shapes, backend):
        self.interpreter = _make_interpreter(data, num_threads, backend)
        self.inputs = self.interpreter.get_input_details()
        for d, sample_shape in zip(self.inputs, sample_shapes):
            target = [d["shape"][0] if batch is None else batch, *sample_shape]
            if list(d["shape"]) != target:
                self.interpreter.resize_tensor_input(d["index"], target)
        self.interpreter.allocate_tensors()
        self.batch = max(1, int(self.interpreter.get_input_details()[0]["shape"][0]))

    def run(self, chunk: list[np.ndarray], outputs: list[dict]) -> list[np.ndarray]:
        rows = chunk[0].shape[0]
        if rows < self.batch:
            pad = self.batch - rows
            chunk = [np.concatenate([c, np.zeros((pad, *c.shape[1:]), c.dtype)]) for c in chunk]
        for d, c in zip(self.inputs, chunk):
            self.interpreter.set_tensor(d["index"], c)
        self.interpreter.invoke()
        results = []
        for d in outputs:
            y = self.interpreter.get_tensor(d["index"])
            results.append(y[:rows] if y.ndim and y.shape[0] == self.batch else y)
        return results


def _start_session(data, num_threads, batch, arrays, out_details, backend):
    """A session at ``batch`` rows if the model takes it, else at its own batch size.

    A resize can be accepted yet wrong (a reshape that folds the batch away), so the
    first batch is run at once and its output batch dimension checked; its outputs
    are returned so they are not computed twice.
    """
    if batch > 1:
        try:
            session = _Session(data, num_threads, batch, [a.shape[1:] for a in arrays], backend)
            first = session.run([a[:batch] for a in arrays], out_details)
            if all(y.ndim and y.shape[0] == batch for y in first):
                return session, first
        except (ValueError, RuntimeError):
            pass
    return _Session(data, num_threads, None, [a.shape[1:] for a in arrays], backend), None


def run_litert(
    data: bytes,
    inputs: ArrayOrArrays,
    batch_size: int = 256,
    num_threads: Optional[int] = None,
    backend: str = "xnnpack",
) -> list[np.ndarray]:
    """Run ``data`` over every sample of ``inputs``; float32 outputs, one per model output.

    ``inputs``: one array, a list of arrays in the model's input order, or a dict
    keyed by signature input name or input tensor name. The first axis is the
    sample axis of every array. ``backend``: "xnnpack" (LiteRT's default, XNNPACK
    delegate) or "builtin" (TFLite's own kernels only).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_choice("run_litert", "backend", backend, BACKENDS)
    summary = inspect_flatbuffer(data)
    probe = _make_interpreter(data, num_threads, backend)
    in_details = probe.get_input_details()
    out_by_index = {d["index"]: d for d in probe.get_output_details()}
    out_details = [out_by_index[i] for i in ordered_output_tensors(summary)]

    arrays = _match_inputs(inputs, in_details, summary)
    arrays = [_convert_input(a, d, i) for i, (a, d) in enumerate(zip(arrays, in_details))]
    counts = {a.shape[0] for a in arrays}
    if len(counts) > 1:
        raise ValueError(
            f"the input arrays hold different numbers of samples: {[a.shape[0] for a in arrays]}"
        )
    n = arrays[0].shape[0]
    if n == 0:
        return [np.zeros((0, *d["shape"][1:]), np.float32) for d in out_details]

    session, first = _start_session(data, num_threads, min(batch_size, n), arrays, out_details,
                                    backend)
    pieces = [[y] for y in first] if first is not None else [[] for _ in out_details]
    start = 0 if first is None else session.batch
    for begin in range(start, n, session.batch):
        chunk = [a[begin : begin + session.batch] for a in arrays]
        for acc, y in zip(pieces, session.run(chunk, out_details)):
            acc.append(y)
    results = []
    for acc, d in zip(pieces, out_details):
        joined = np.concatenate(acc) if acc[0].ndim else np.stack(acc)
        if np.dtype(d["dtype"]) in _QUANTIZED_DTYPES:
            results.append(_dequantize(joined, d))
        else:
            results.append(joined.astype(np.float32))
    return results


def output_lsb(data: bytes) -> list[Optional[float]]:
    """Per model output, the scale of the quantized tensor that carries it.

    That is the output itself when it is int8/uint8/int16, or the quantized input of
    the DEQUANTIZE that produces it; None when the output is computed in float.
    Per-channel outputs report their largest scale.
    """
    summary = inspect_flatbuffer(data)
    main = summary.main
    lsbs = []
    for index in ordered_output_tensors(summary):
        tensor = main.tensors[index]
        if tensor.type_name not in _QUANTIZED_TYPES or tensor.quantization is None:
            producer = main.producer(index)
            tensor = None
            if producer is not None and producer.name == "DEQUANTIZE" and producer.inputs:
                source = main.tensors[producer.inputs[0]]
                if source.type_name in _QUANTIZED_TYPES and source.quantization is not None:
                    tensor = source
        lsbs.append(None if tensor is None else float(max(tensor.quantization.scales)))
    return lsbs


def compare_outputs(reference: np.ndarray, litert: np.ndarray, lsb: Optional[float]) -> dict:
    """Differences between a reference output and the LiteRT output of the same samples."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(litert, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(
            f"cannot compare outputs of different shapes: reference {ref.shape}, litert {got.shape}"
        )
    if ref.size == 0:
        raise ValueError("cannot compare empty outputs")
    diff = np.abs(ref - got)
    max_abs = float(np.max(diff))
    agreement = None
    if ref.ndim >= 1 and ref.shape[-1] > 1:
        agreement = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(got, axis=-1)))
    return {
        "max_abs_diff": max_abs,
        "max_abs_diff_lsb": None if not lsb else max_abs / lsb,
        "mean_abs_diff": float(np.mean(diff)),
        "argmax_agreement": agreement,
    }
