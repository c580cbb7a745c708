"""Read a TFLite/LiteRT flatbuffer into a plain summary.

Types come from the flatbuffer itself (the schema's TensorType enum), because the
interpreter's ``get_tensor_details()`` reports packed INT4 weights as int8.
Parsing goes through TensorFlow's generated schema (``schema_py_generated``) and
``flatbuffer_utils``; this module only validates and summarizes.
"""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from tfquant.export.flatbuffer_summary import (
    FlatbufferSummary,
    OperatorInfo,
    QuantizationInfo,
    SignatureInfo,
    SubgraphInfo,
    TensorInfo,
)

FILE_IDENTIFIER = b"TFL3"
# 4-byte root offset followed by the 4-byte file identifier.
_MIN_FILE_SIZE = 8

class InvalidFlatbufferError(ValueError):
    """The bytes are not a readable TFLite flatbuffer."""


def _enum_names(enum_cls) -> dict[int, str]:
    return {
        value: name
        for name, value in vars(enum_cls).items()
        if not name.startswith("_") and isinstance(value, int)
    }


def _merged_enum_names(enum_name: str) -> dict[int, str]:
    """TF's schema first; LiteRT's newer schema fills codes TF does not know yet."""
    names = {}
    try:
        from ai_edge_litert import schema_py_generated as litert_schema

        names.update(_enum_names(getattr(litert_schema, enum_name)))
    except (ImportError, AttributeError):
        pass
    names.update(_enum_names(getattr(schema_fb, enum_name)))
    return names


_TENSOR_TYPE_NAMES = _merged_enum_names("TensorType")
_BUILTIN_OP_NAMES = _merged_enum_names("BuiltinOperator")
_CUSTOM_OP_CODE = schema_fb.BuiltinOperator.CUSTOM


def tensor_type_name(type_code: int) -> str:
    return _TENSOR_TYPE_NAMES.get(int(type_code), f"UNKNOWN_TYPE_{int(type_code)}")


def builtin_op_name(op_code: int) -> str:
    return _BUILTIN_OP_NAMES.get(int(op_code), f"UNKNOWN_OP_{int(op_code)}")


def _check_header(data: bytes) -> None:
    if len(data) == 0:
        raise InvalidFlatbufferError("not a TFLite flatbuffer: the data is empty (0 bytes)")
    if len(data) < _MIN_FILE_SIZE:
        raise InvalidFlatbufferError(
            f"not a TFLite flatbuffer: only {len(data)} bytes, a flatbuffer has at "
            f"least {_MIN_FILE_SIZE} (root offset and file identifier)"
        )
    identifier = bytes(data[4:8])
    if identifier != FILE_IDENTIFIER:
        raise InvalidFlatbufferError(
            f"not a TFLite flatbuffer: file identifier is {identifier!r}, "
            f"expected {FILE_IDENTIFIER!r}"
        )
    (root,) = struct.unpack_from("<I", data, 0)
    if root < _MIN_FILE_SIZE or root + 4 > len(data):
        raise InvalidFlatbufferError(
            f"corrupt TFLite flatbuffer: root table offset {root} lies outside "
            f"the {len(data)}-byte file (truncated?)"
        )


def _check_sizes(data: bytes) -> None:
    """Bound the work of a full unpack before doing it.

    The Python flatbuffer reader trusts vector lengths; in a corrupt file they can
    alias the same tables over and over and make unpacking take forever. In a valid
    file every element counted here occupies at least one byte of its own, so the
    element total cannot exceed the file size.
    """
    budget = len(data)

    def spend(count: int) -> None:
        nonlocal budget
        budget -= count
        if budget < 0:
            raise InvalidFlatbufferError(
                "corrupt TFLite flatbuffer: vector lengths add up to more elements "
                f"than the {len(data)}-byte file can hold"
            )

    model = schema_fb.Model.GetRootAs(data, 0)
    spend(model.OperatorCodesLength() + model.BuffersLength() + model.MetadataLength())
    spend(model.MetadataBufferLength() + model.SignatureDefsLength())
    spend(model.ExternalBuffersLength() + model.ExternalBufferGroupsLength())
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        spend(sig.InputsLength() + sig.OutputsLength())
    spend(model.SubgraphsLength())
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        spend(sg.TensorsLength() + sg.OperatorsLength() + sg.InputsLength() + sg.OutputsLength())
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            spend(tensor.ShapeLength() + tensor.ShapeSignatureLength())
            spend(tensor.VariantTensorsLength())
            q = tensor.Quantization()
            if q is not None:
                spend(q.ScaleLength() + q.ZeroPointLength() + q.MinLength() + q.MaxLength())
            sparsity = tensor.Sparsity()
            if sparsity is not None:
                spend(sparsity.TraversalOrderLength() + sparsity.BlockMapLength())
                spend(sparsity.DimMetadataLength())
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            spend(op.InputsLength() + op.OutputsLength() + op.IntermediatesLength())
            spend(op.MutatingVariableInputsLength())
            if op.CustomOptionsLength() > len(data):
                spend(len(data) + 1)
    for b in range(model.BuffersLength()):
        buf = model.Buffers(b)
        # Offsets > 1 point at data stored after the flatbuffer (1 is a placeholder).
        if buf.Offset() > 1 and buf.Offset() + buf.Size() > len(data):
            raise InvalidFlatbufferError(
                f"corrupt TFLite flatbuffer: buffer {b} points at bytes "
                f"{buf.Offset()}..{buf.Offset() + buf.Size()} of a {len(data)}-byte file"
            )
        if buf.DataLength() > len(data):
            spend(len(data) + 1)


def _as_tuple(values, cast) -> tuple:
    if values is None:
        return ()
    return tuple(cast(v) for v in np.asarray(values).reshape(-1))


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _quantization(q) -> Optional[QuantizationInfo]:
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    return QuantizationInfo(
        scales=_as_tuple(q.scale, float),
        zero_points=_as_tuple(q.zeroPoint, int),
        quantized_dimension=int(q.quantizedDimension),
    )


def _op_code_name(op_code) -> tuple[str, int, Optional[str]]:
    # Codes < 127 live in deprecated_builtin_code in old files; newer files put the
    # real code in builtin_code and 127 (placeholder) in the deprecated field.
    code = max(int(op_code.builtinCode), int(op_code.deprecatedBuiltinCode))
    if code == _CUSTOM_OP_CODE:
        custom = _text(op_code.customCode) or "CUSTOM"
        return custom, code, custom
    return builtin_op_name(code), code, None


def _signature(sig, subgraphs) -> SignatureInfo:
    if sig is None or not 0 <= sig.subgraphIndex < len(subgraphs):
        raise InvalidFlatbufferError(
            "corrupt TFLite flatbuffer: a signature refers to a missing subgraph"
        )
    key = _text(sig.signatureKey)
    n_tensors = len(subgraphs[sig.subgraphIndex].tensors)

    def tensor_map(entries):
        pairs = tuple((_text(e.name), int(e.tensorIndex)) for e in entries or [] if e is not None)
        if any(not 0 <= i < n_tensors for _, i in pairs):
            raise InvalidFlatbufferError(
                f"corrupt TFLite flatbuffer: signature {key!r} refers to a missing tensor"
            )
        return pairs

    return SignatureInfo(
        key=key,
        subgraph_index=int(sig.subgraphIndex),
        inputs=tensor_map(sig.inputs),
        outputs=tensor_map(sig.outputs),
    )


def _summarize(model, data_size: int, uses_offsets: bool) -> FlatbufferSummary:
    buffers = model.buffers or []
    buffer_bytes = [0 if b is None or b.data is None else len(b.data) for b in buffers]
    external_bytes = {int(e.id): int(e.length) for e in (model.externalBuffers or []) if e}
    op_codes = [_op_code_name(c) for c in (model.operatorCodes or [])]

    subgraphs = []
    for s_index, sg in enumerate(model.subgraphs or []):
        if sg is None:
            raise InvalidFlatbufferError(f"corrupt TFLite flatbuffer: subgraph {s_index} is missing")
        raw_tensors = sg.tensors or []
        tensors = []
        for t_index, t in enumerate(raw_tensors):
            if t is None:
                raise InvalidFlatbufferError(
                    f"corrupt TFLite flatbuffer: subgraph {s_index} tensor {t_index} is missing"
                )
            if not 0 <= t.buffer < max(len(buffers), 1):
                raise InvalidFlatbufferError(
                    f"corrupt TFLite flatbuffer: tensor {t_index} refers to buffer "
                    f"{t.buffer}, the file has {len(buffers)}"
                )
            size = buffer_bytes[t.buffer] if buffers else 0
            if not size and t.externalBuffer:
                size = external_bytes.get(int(t.externalBuffer), 0)
            tensors.append(
                TensorInfo(
                    index=t_index,
                    name=_text(t.name),
                    shape=_as_tuple(t.shape, int),
                    shape_signature=(
                        None if t.shapeSignature is None else _as_tuple(t.shapeSignature, int)
                    ),
                    type_name=tensor_type_name(t.type),
                    buffer_index=int(t.buffer),
                    buffer_bytes=int(size),
                    quantization=_quantization(t.quantization),
                    is_variable=bool(t.isVariable),
                )
            )

        def checked(indices, what, allow_omitted=False):
            out = _as_tuple(indices, int)
            for i in out:
                if not (0 <= i < len(tensors) or (allow_omitted and i == -1)):
                    raise InvalidFlatbufferError(
                        f"corrupt TFLite flatbuffer: {what} refers to tensor {i}, "
                        f"subgraph {s_index} has {len(tensors)} tensors"
                    )
            return out

        operators = []
        for o_index, op in enumerate(sg.operators or []):
            if op is None or not 0 <= op.opcodeIndex < len(op_codes):
                raise InvalidFlatbufferError(
                    f"corrupt TFLite flatbuffer: operator {o_index} of subgraph {s_index} "
                    f"has no valid operator code"
                )
            name, code, custom = op_codes[op.opcodeIndex]
            where = f"operator {o_index} ({name})"
            operators.append(
                OperatorInfo(
                    index=o_index,
                    subgraph_index=s_index,
                    name=name,
                    inputs=checked(op.inputs, where, allow_omitted=True),
                    outputs=checked(op.outputs, where, allow_omitted=True),
                    builtin_code=code,
                    custom_code=custom,
                    version=int(model.operatorCodes[op.opcodeIndex].version or 1),
                )
            )
        subgraphs.append(
            SubgraphInfo(
                index=s_index,
                name=_text(sg.name),
                tensors=tuple(tensors),
                operators=tuple(operators),
                inputs=checked(sg.inputs, "subgraph input"),
                outputs=checked(sg.outputs, "subgraph output"),
            )
        )
    if not subgraphs:
        raise InvalidFlatbufferError("not a usable TFLite flatbuffer: it has no subgraphs")

    signatures = tuple(_signature(sig, subgraphs) for sig in model.signatureDefs or [])
    return FlatbufferSummary(
        size_bytes=data_size,
        version=int(model.version),
        description=_text(model.description),
        subgraphs=tuple(subgraphs),
        uses_buffer_offsets=uses_offsets,
        signatures=signatures,
    )


def inspect_flatbuffer(data: bytes) -> FlatbufferSummary:
    """Summarize a TFLite flatbuffer; ValueError says what is wrong with bad bytes."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"inspect_flatbuffer wants bytes, got {type(data).__name__}")
    _check_header(data)
    try:
        _check_sizes(data)
        raw = schema_fb.Model.GetRootAs(data, 0)
        uses_offsets = any(raw.Buffers(i).Offset() > 1 for i in range(raw.BuffersLength()))
        # Resolves buffers stored by offset (models > 2 GB) into buffer.data.
        model = flatbuffer_utils.read_model_from_bytearray(data)
        return _summarize(model, len(data), uses_offsets)
    except InvalidFlatbufferError:
        raise
    except Exception as e:  # the generated reader raises whatever it trips over
        raise InvalidFlatbufferError(
            f"corrupt TFLite flatbuffer: could not parse it ({type(e).__name__}: {e})"
        ) from e
