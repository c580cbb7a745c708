"""A Keras model that computes the integers LiteRT computes for a flatbuffer.

`IntegerModel(flatbuffer, backend)` (made by `tfquant.integer_model`) reads the int8
flatbuffer the export produced (its weights, int32 biases, scales and zero points are what
ships) and runs its operators with the kernels of `integer_products`, `integer_binary`,
`integer_arithmetic`, `integer_layout` and `integer_activations`, which follow the
arithmetic of the chosen LiteRT backend bit for bit (docs/ARCHITECTURE.md §5).
`model.evaluate` on it gives the on-device accuracy without a device; its float outputs
are the dequantized int8 outputs of LiteRT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

from tfquant.export import integer_activations, integer_arithmetic, integer_binary
from tfquant.export import integer_layout
from tfquant.export import integer_ops as ops
from tfquant.export import integer_products
from tfquant.export.flatbuffer import builtin_op_name, inspect_flatbuffer
from tfquant.export.int2 import builtin_code
from tfquant.export.integer_tensors import UnsupportedOperatorError, read_tensors
from tfquant.export.litert_runner import BACKENDS, ordered_output_tensors
from tfquant.ops.arguments import check_choice

__all__ = ["IntegerModel", "UnsupportedOperatorError", "run_integer_model", "unsupported"]

_OPERATORS: dict[str, Callable] = {
    **integer_products.OPERATORS,
    **integer_arithmetic.OPERATORS,
    **integer_binary.OPERATORS,
    **integer_layout.OPERATORS,
    **integer_activations.OPERATORS,
}
# int32 shape arithmetic whose result only feeds RESHAPE's shape input; the integer
# model reshapes to the output tensor's static shape instead.
_SHAPE_OPS = frozenset({"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER",
                        "REDUCE_PROD"})


def _shape_only_tensors(model, subgraph) -> set[int]:
    """Tensors computed by shape ops that reach nothing but RESHAPE shape inputs."""
    consumers: dict[int, list] = {}
    for op in subgraph.operators:
        for position, i in enumerate(op.inputs):
            consumers.setdefault(int(i), []).append((op, position))
    names = {id(op): builtin_op_name(builtin_code(model, op)) for op in subgraph.operators}
    shape_only: set[int] = set()
    outputs = {int(i) for i in subgraph.outputs}
    for op in reversed(subgraph.operators):  # consumers come after producers
        if names[id(op)] not in _SHAPE_OPS:
            continue
        for o in op.outputs:
            uses = consumers.get(int(o), [])
            if int(o) not in outputs and uses and all(
                    (names[id(c)] == "RESHAPE" and p == 1) or
                    (names[id(c)] in _SHAPE_OPS and all(int(x) in shape_only for x in c.outputs))
                    for c, p in uses):
                shape_only.add(int(o))
    return shape_only


@dataclasses.dataclass(frozen=True)
class ActivationTensor:
    """An int8 tensor an operator writes: flatbuffer index, name and shape, scale, zero
    point, and the operator (e.g. "CONV_2D")."""
    index: int
    name: str
    shape: tuple
    scale: float
    zero_point: int
    operator: str


def _operator_name(compute) -> str:
    return compute.__name__.lstrip("_").upper()


class IntegerModel(keras.Model):
    """Runs a flatbuffer's operators with one backend's integer arithmetic.

    Built by `integer_model`; inputs and outputs are those of the flatbuffer (float32
    for a float-interface export, int8 values as int32 otherwise).
    """

    def __init__(self, flatbuffer: bytes, backend: str = "xnnpack", **kwargs):
        super().__init__(**kwargs)
        check_choice("integer_model", "backend", backend, BACKENDS)
        self.backend = backend
        self.flatbuffer = bytes(flatbuffer)
        summary = inspect_flatbuffer(self.flatbuffer)  # validates the bytes
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(self.flatbuffer))
        subgraph = model.subgraphs[0]
        self._tensors = read_tensors(model, subgraph)
        self._steps = []
        shape_only = _shape_only_tensors(model, subgraph)
        for op in subgraph.operators:
            name = builtin_op_name(builtin_code(model, op))
            if name in _SHAPE_OPS and all(int(o) in shape_only for o in op.outputs):
                continue
            outputs_float = any(self._tensors[int(o)].dtype == np.float32 for o in op.outputs)
            if outputs_float and name != "DEQUANTIZE":
                raise UnsupportedOperatorError(
                    f"{name} (operator {len(self._steps)}) computes in float; integer_model "
                    "computes int8 flatbuffers")
            if name not in _OPERATORS:
                raise UnsupportedOperatorError(
                    f"integer_model does not compute {name} yet; it computes "
                    f"{', '.join(sorted(_OPERATORS))}")
            self._steps.append((_OPERATORS[name], op))
        self._input_indices = [int(i) for i in subgraph.inputs]
        self._output_indices = ordered_output_tensors(summary)
        # Inputs given by name: the signature's names, or the tensors' own.
        self._input_by_name = {self._tensors[i].name: i for i in self._input_indices}
        for signature in summary.signatures:
            if signature.subgraph_index == 0:
                self._input_by_name.update(dict(signature.inputs))

    def ordered_inputs(self, inputs) -> list:
        """`inputs` as a list in the flatbuffer's input order: a dict keyed by signature
        input name (or input tensor name) is put in that order; a list is taken as it is."""
        if not isinstance(inputs, Mapping):
            return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        by_index = {}
        for name, value in inputs.items():
            if name not in self._input_by_name:
                raise ValueError(f"integer_model: unknown input name {name!r}; the inputs "
                                 f"are {sorted(self._input_by_name)}")
            by_index[self._input_by_name[name]] = value
        missing = [self._tensors[i].name for i in self._input_indices if i not in by_index]
        if missing:
            raise ValueError(f"integer_model: no value for input(s) {missing}")
        return [by_index[i] for i in self._input_indices]

    def input_tensor_shape(self, position: int) -> tuple:
        """The static shape of input `position` in the flatbuffer (batch included)."""
        return self._tensors[self._input_indices[position]].shape

    def input_dtypes(self) -> list:
        """The numpy dtype of each input, in order."""
        return [self._tensors[i].dtype for i in self._input_indices]

    def output_quantization(self, position: int = 0) -> tuple[float, int]:
        """(scale, zero point) of output `position` (an int8 output's values are
        `scale · (q − zero point)`)."""
        tensor = self._tensors[self._output_indices[position]]
        return tensor.scale, tensor.zero_point

    def activation_tensors(self) -> list[ActivationTensor]:
        """The int8 tensors its operators write, in graph order."""
        found = []
        for compute, op in self._steps:
            tensor = self._tensors[int(op.outputs[0])]
            if tensor.dtype == np.int8 and tensor.scales.size == 1:
                found.append(ActivationTensor(tensor.index, tensor.name, tuple(tensor.shape),
                                              tensor.scale, tensor.zero_point,
                                              _operator_name(compute)))
        return found

    def tensor_values(self, inputs, indices) -> dict[int, np.ndarray]:
        """The dequantized values (float32) of the tensors `indices` for `inputs`."""
        values = self._run(inputs)
        return {i: np.asarray(ops.dequantize(values[i], self._tensors[i].scale,
                                             self._tensors[i].zero_point, "xnnpack"))
                for i in indices}

    def _run(self, inputs):
        inputs = self.ordered_inputs(inputs)
        values = {}
        for index, x in zip(self._input_indices, inputs):
            tensor = self._tensors[index]
            values[index] = tf.cast(x, tf.float32 if tensor.dtype == np.float32 else tf.int32)
        for compute, op in self._steps:
            args = [values.get(i) if i >= 0 else None for i in op.inputs]
            values[int(op.outputs[0])] = compute(op, self._tensors, args, self.backend)
        return values

    def call(self, inputs):
        values = self._run(inputs)
        outputs = [values[i] for i in self._output_indices]
        return outputs[0] if len(outputs) == 1 else outputs


def unsupported(flatbuffer: bytes) -> Optional[str]:
    """None if `IntegerModel` computes `flatbuffer`, else why not.

    The model also runs once on a zero input: some kernels can only tell from their
    operands' quantization whether they compute an operator (e.g. MINIMUM of two scales).
    """
    try:
        model = IntegerModel(flatbuffer)
        model._run([np.zeros(model.input_tensor_shape(i), dtype)
                    for i, dtype in enumerate(model.input_dtypes())])
    except UnsupportedOperatorError as error:
        return str(error)
    except tf.errors.InvalidArgumentError:
        pass  # the zero input is out of an operator's domain (RSQRT of a negative value)
    return None


def run_integer_model(model: IntegerModel, arrays, batch_size: int = 256) -> list[np.ndarray]:
    """`model` over every sample, `batch_size` at a time with the last batch zero-padded,
    as `run_litert` runs LiteRT (which values round which way depends on the batch).
    `arrays`: one array, a list in the flatbuffer's input order, or a dict by input name."""
    arrays = [np.asarray(a) for a in model.ordered_inputs(arrays)]
    n = len(arrays[0])
    pieces = []
    for begin in range(0, n, batch_size):
        chunk = [a[begin:begin + batch_size] for a in arrays]
        rows = len(chunk[0])
        if rows < batch_size and n > batch_size:
            chunk = [np.concatenate([c, np.zeros((batch_size - rows, *c.shape[1:]), c.dtype)])
                     for c in chunk]
        outputs = model(chunk if len(chunk) > 1 else chunk[0])
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        pieces.append([np.asarray(o)[:rows] for o in outputs])
    return [np.concatenate(parts) for parts in zip(*pieces)]
