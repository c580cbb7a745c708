"""What `inspect_flatbuffer` returns: a plain, immutable summary of a TFLite flatbuffer
(its subgraphs, tensors with types and quantization, operators and signatures), with the
questions the export asks of it (float compute ops, weight tensors, op counts)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Optional

QUANTIZE_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})


@dataclasses.dataclass(frozen=True)
class QuantizationInfo:
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    # -1 marks a dynamic dimension; None when the file has no signature.
    shape_signature: Optional[tuple[int, ...]]
    type_name: str
    buffer_index: int
    # Bytes of constant data (packed size for INT4/INT2); 0 for non-constant tensors.
    buffer_bytes: int
    quantization: Optional[QuantizationInfo]
    is_variable: bool = False

    @property
    def is_constant(self) -> bool:
        return self.buffer_bytes > 0


@dataclasses.dataclass(frozen=True)
class OperatorInfo:
    index: int
    subgraph_index: int
    # Builtin op name (e.g. "CONV_2D") or the custom code for CUSTOM ops.
    name: str
    inputs: tuple[int, ...]  # -1 marks an omitted optional input
    outputs: tuple[int, ...]
    builtin_code: int
    custom_code: Optional[str] = None
    version: int = 1

    @property
    def is_custom(self) -> bool:
        return self.custom_code is not None


@dataclasses.dataclass(frozen=True)
class WeightInfo:
    """A constant tensor that ops read (a weight, a bias, a lookup table)."""

    tensor_index: int
    subgraph_index: int
    type_name: str
    shape: tuple[int, ...]
    size_bytes: int
    used_by: tuple[str, ...]  # names of the ops that read it


@dataclasses.dataclass(frozen=True)
class SubgraphInfo:
    index: int
    name: str
    tensors: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]  # execution order
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def producer(self, tensor_index: int) -> Optional[OperatorInfo]:
        for op in self.operators:
            if tensor_index in op.outputs:
                return op
        return None

    def describe_op(self, op: OperatorInfo) -> str:
        """One line for a person: op name, position and the tensor it writes."""
        out = op.outputs[0] if op.outputs else -1
        out_name = self.tensors[out].name if 0 <= out < len(self.tensors) else "?"
        where = f"op {op.index}" if self.index == 0 else f"subgraph {self.index} op {op.index}"
        return f"{op.name} ({where}) -> {out_name!r}"


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    key: str
    subgraph_index: int
    inputs: tuple[tuple[str, int], ...]  # (signature name, tensor index)
    outputs: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True)
class FlatbufferSummary:
    """Everything `inspect_flatbuffer` read: the subgraphs (the first is the model's
    main one) and the signatures."""

    size_bytes: int
    version: int
    description: str
    subgraphs: tuple[SubgraphInfo, ...]
    # True when constant data sits after the flatbuffer (models > 2 GB).
    uses_buffer_offsets: bool = False
    signatures: tuple[SignatureInfo, ...] = ()

    @property
    def main(self) -> SubgraphInfo:
        return self.subgraphs[0]

    def operators(self):
        for sg in self.subgraphs:
            yield from sg.operators

    def op_counts(self) -> collections.Counter:
        return collections.Counter(op.name for op in self.operators())

    def weight_tensors(self) -> dict[str, WeightInfo]:
        """Constant tensors that ops read, keyed by tensor name.

        Converter names repeat (e.g. "tfl.pseudo_qconst"), so a repeated name gets
        its tensor index (and subgraph) appended to stay unique.
        """
        readers: dict[tuple[int, int], list[str]] = {}
        for sg in self.subgraphs:
            for op in sg.operators:
                for t in op.inputs:
                    if t >= 0 and sg.tensors[t].is_constant:
                        readers.setdefault((sg.index, t), []).append(op.name)
        weights: dict[str, WeightInfo] = {}
        for (sg_index, t_index), ops in readers.items():
            tensor = self.subgraphs[sg_index].tensors[t_index]
            key = tensor.name or f"tensor_{t_index}"
            if key in weights:
                key = f"{key}#{t_index}" if sg_index == 0 else f"{key}#{sg_index}:{t_index}"
            weights[key] = WeightInfo(
                tensor_index=t_index,
                subgraph_index=sg_index,
                type_name=tensor.type_name,
                shape=tensor.shape,
                size_bytes=tensor.buffer_bytes,
                used_by=tuple(dict.fromkeys(ops)),
            )
        return weights

    def float_compute_ops(self) -> list[OperatorInfo]:
        """Ops that compute in float: they read or write a float activation or
        read a float constant (e.g. a float filter). QUANTIZE/DEQUANTIZE are the
        expected float boundary and are left out."""
        found = []
        for sg in self.subgraphs:
            for op in sg.operators:
                if op.name in QUANTIZE_OPS:
                    continue
                tensors = [sg.tensors[t] for t in (*op.inputs, *op.outputs) if t >= 0]
                if any(t.type_name in FLOAT_TYPES for t in tensors):
                    found.append(op)
        return found

    def describe_op(self, op: OperatorInfo) -> str:
        return self.subgraphs[op.subgraph_index].describe_op(op)
