"""INT2 storage for 2-bit FULLY_CONNECTED weights in a TFLite flatbuffer.

The converter stores a 2-bit weight grid {−1, 0, 1}·s as INT4 (holding {−1, 0, 1} with
scale s, or {−7, 0, 7} with scale s/7 when it re-spreads the grid, docs/ARCHITECTURE.md §4). `to_int2_fully_connected` rewrites such FULLY_CONNECTED
filters as INT2 (TensorType 19) holding {−1, 0, 1} with scale s — the same real weights,
a quarter of an int8 buffer; their int32 bias follows the coarser accumulator step s·input
scale, rounded (outputs within one output step of the INT4 file's) — using TensorFlow's schema module
(`tensorflow.lite.tools.flatbuffer_utils`), never a hand-written parser.

Packing (checked against the LiteRT interpreter in tests/test_packed_export.py): INT4
is two values a byte, low nibble first; INT2 is four values a byte, the first value in
the lowest two bits (value i of the flattened tensor in bits 2·(i mod 4) of byte i // 4),
two's complement, the last byte zero-padded.
"""

import numpy as np

INT4 = 17
INT2 = 19
INT32 = 2
FULLY_CONNECTED = 9


def unpack_int4(raw, count):
    raw = np.frombuffer(bytes(raw), np.int8)
    values = np.stack([(raw << 4).astype(np.int8) >> 4, raw >> 4], -1).ravel()
    return values[:count].astype(np.int8)


def pack_int2(values):
    """Signed values in [-2, 1] → bytes, four a byte, first value in the low bits."""
    values = np.asarray(values, np.int8).ravel()
    if values.size and (values.min() < -2 or values.max() > 1):
        raise ValueError("INT2 values must lie in [-2, 1]")
    padded = np.zeros(-(-values.size // 4) * 4, np.uint8)
    padded[:values.size] = values.astype(np.uint8) & 3
    fields = padded.reshape(-1, 4)
    return (fields[:, 0] | fields[:, 1] << 2 | fields[:, 2] << 4 | fields[:, 3] << 6).astype(np.uint8)


def unpack_int2(raw, count):
    raw = np.frombuffer(bytes(raw), np.uint8)
    fields = np.stack([(raw >> s) & 3 for s in (0, 2, 4, 6)], -1).ravel()[:count]
    return np.where(fields >= 2, fields.astype(np.int16) - 4, fields).astype(np.int8)


def builtin_code(model, op):
    """The builtin operator code of `op` in a flatbuffer_utils model object."""
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def to_int2_fully_connected(flatbuffer):
    """Returns (new flatbuffer bytes, names of the filters rewritten to INT2).

    A FULLY_CONNECTED filter is rewritten when it is a constant INT4 tensor whose values
    are, per scale (output channel or tensor), all in {−c, 0, c} (a 2-bit grid: c = 1,
    or 7 when the converter re-spread it); the values become {−1, 0, 1} and the scale
    is multiplied by c. Other tensors
    and ops are untouched; a filter shared with another op is left as it is.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    rewritten = []
    for subgraph in model.subgraphs:
        users = {}
        for op in subgraph.operators:
            for index in op.inputs:
                if index >= 0:
                    users[index] = users.get(index, 0) + 1
        for op in subgraph.operators:
            if builtin_code(model, op) != FULLY_CONNECTED or len(op.inputs) < 2:
                continue
            index = op.inputs[1]
            if index < 0 or users.get(index, 0) != 1:
                continue
            tensor = subgraph.tensors[index]
            buffer = model.buffers[tensor.buffer]
            if tensor.type != INT4 or buffer.data is None or len(buffer.data) == 0:
                continue
            q = tensor.quantization
            if q is None or q.scale is None or np.any(np.asarray(q.zeroPoint) != 0):
                continue
            count = int(np.prod(tensor.shape))
            values = unpack_int4(buffer.data, count)
            scales = np.asarray(q.scale, np.float64)
            if len(scales) == 1:
                rows = values.reshape(1, -1)
            elif len(scales) == tensor.shape[0] and q.quantizedDimension == 0:
                rows = values.reshape(len(scales), -1)
            else:
                continue
            steps = np.abs(rows).max(axis=1, keepdims=True).astype(np.int8)
            steps = np.maximum(steps, 1)
            if not np.all((rows == 0) | (np.abs(rows) == steps)):
                continue
            bias = _int32_bias(model, subgraph, op, users)
            if bias is None and np.any(steps > 1) and len(op.inputs) > 2 and op.inputs[2] >= 0:
                continue  # a bias we cannot rescale with the filter's scale
            buffer.data = pack_int2((rows // steps).ravel())
            q.scale = [float(s) for s in (scales * steps.ravel()).astype(np.float32)]
            if bias is not None:
                _rescale_bias(model, bias, steps.ravel())
            tensor.type = INT2
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            rewritten.append(name)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), rewritten


def _int32_bias(model, subgraph, op, users):
    """The op's constant int32 bias tensor used by this op only, else None."""
    if len(op.inputs) < 3 or op.inputs[2] < 0 or users.get(op.inputs[2], 0) != 1:
        return None
    tensor = subgraph.tensors[op.inputs[2]]
    data = model.buffers[tensor.buffer].data
    if tensor.type != INT32 or data is None or len(data) == 0 or tensor.quantization is None:
        return None
    return tensor


def _rescale_bias(model, tensor, steps):
    """Follows a filter scale multiplied by `steps`: the kernel adds the int32 bias to
    accumulators of step `input scale × filter scale`, so the bias moves to that coarser
    step too (rounded: within half a step of the new accumulator, the price of INT2)."""
    buffer = model.buffers[tensor.buffer]
    bias = np.frombuffer(bytes(buffer.data), np.int32)
    steps = np.broadcast_to(steps, bias.shape).astype(np.float64)
    buffer.data = np.round(bias / steps).astype(np.int32).view(np.uint8)
    q = tensor.quantization
    scales = np.broadcast_to(np.asarray(q.scale, np.float64), bias.shape)
    q.scale = [float(s) for s in (scales * steps).astype(np.float32)]
    q.zeroPoint = [0] * len(q.scale)
    q.quantizedDimension = 0
