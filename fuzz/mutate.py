"""Byte-level mutations of a .tflite flatbuffer, aimed at the fields the delegate reads.

`targets(data)` finds, through LiteRT's generated schema, where each tensor's shape,
type, buffer index and quantization parameters, each operator's input/output indices
and FULLY_CONNECTED options, the operator codes and the buffers lie in the file;
`mutate(data, targets, rng)` changes a few of them (or, now and then, any byte) in place
of a copy: flipped bits, random bytes, or boundary integers and floats.
"""

import struct

import numpy as np
from ai_edge_litert import schema_py_generated as schema

INTS = (0, 1, -1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 127, 128, -128, 255, 256, 4096,
        16384, 16385, 65536, 65537, 2 ** 30, 2 ** 31 - 1, -2 ** 31, -2)
FLOATS = (0.0, -0.0, -1.0, 1.0, float("nan"), float("inf"), float("-inf"), 1e-45, 1e-38,
          1e-30, 1e30, 3.4028235e38, 2.0 ** 31, 2.0 ** -31, 1e-10)


def _field(obj, slot):
    """Absolute position of scalar field `slot` (the vtable offset) or None if absent."""
    offset = obj._tab.Offset(slot)
    return obj._tab.Pos + offset if offset else None


def _vector(obj, slot):
    """(start, length) of vector field `slot`, or None."""
    offset = obj._tab.Offset(slot)
    return (obj._tab.Vector(offset), obj._tab.VectorLen(offset)) if offset else None


def targets(data):
    """{label: [(position, width, kind)]}; kind is 'int', 'float', 'enum' or 'byte'."""
    found = {}

    def add(label, pos, width, kind):
        if pos is not None and 0 <= pos and pos + width <= len(data):
            found.setdefault(label, []).append((pos, width, kind))

    def add_vector(label, obj, slot, width, kind, length_too=True):
        vec = _vector(obj, slot)
        if vec is None:
            return
        start, length = vec
        if length_too:
            add(label + "_length", start - 4, 4, "int")
        for i in range(min(length, 4096)):
            add(label, start + i * width, width, kind)

    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        add("opcode", _field(code, 4), 1, "enum")
        add("opcode", _field(code, 10), 4, "int")
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        add_vector("graph_io", graph, 6, 4, "int", length_too=False)
        add_vector("graph_io", graph, 8, 4, "int", length_too=False)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            add_vector("shape", tensor, 4, 4, "int")
            add_vector("shape", tensor, 18, 4, "int", length_too=False)  # shape_signature
            add("type", _field(tensor, 6), 1, "enum")
            add("buffer_index", _field(tensor, 8), 4, "int")
            quant = tensor.Quantization()
            if quant is not None:
                add_vector("quant_scale", quant, 8, 4, "float")
                add_vector("quant_zero_point", quant, 10, 8, "int")
                add("quant_dim", _field(quant, 16), 4, "int")
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            add("opcode_index", _field(op, 4), 4, "int")
            add_vector("op_io", op, 6, 4, "int")
            add_vector("op_io", op, 8, 4, "int")
            options = op.BuiltinOptions()
            if options is not None and op.BuiltinOptionsType() == \
                    schema.BuiltinOptions.FullyConnectedOptions:
                fc = schema.FullyConnectedOptions()
                fc.Init(options.Bytes, options.Pos)
                for slot in (4, 6, 8, 10, 12):
                    add("fc_options", _field(fc, slot), 1, "enum")
                add("fc_options", _field(op, 10), 1, "enum")  # the options' type tag
    for b in range(model.BuffersLength()):
        buffer = model.Buffers(b)
        add_vector("buffer_data", buffer, 4, 1, "byte")
        add("buffer_offset", _field(buffer, 6), 8, "int")
        add("buffer_offset", _field(buffer, 8), 8, "int")
    return found


def _write(out, pos, width, kind, rng):
    mode = rng.integers(3)
    if mode == 0:  # flip one bit
        out[pos + int(rng.integers(width))] ^= 1 << int(rng.integers(8))
    elif mode == 1 or kind == "byte":  # one random byte
        out[pos + int(rng.integers(width))] = int(rng.integers(256))
    elif kind == "float":
        out[pos:pos + 4] = struct.pack("<f", float(rng.choice(FLOATS)))
    elif kind == "enum":
        out[pos] = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 127, 255]))
    else:
        value = int(rng.choice(INTS))
        fmt = {1: "<b", 4: "<i", 8: "<q"}[width]
        if width == 1:
            value = max(-128, min(127, value))
        out[pos:pos + width] = struct.pack(fmt, value)


def mutate(data, found, rng, anywhere=0.1):
    """A mutated copy of `data` and the labels of what was changed."""
    out = bytearray(data)
    labels = sorted(found)
    changed = []
    for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3, 4]))):
        if rng.random() < anywhere or not labels:
            out[int(rng.integers(len(out)))] = int(rng.integers(256))
            changed.append("anywhere")
            continue
        label = labels[int(rng.integers(len(labels)))]
        pos, width, kind = found[label][int(rng.integers(len(found[label])))]
        _write(out, pos, width, kind, rng)
        changed.append(label)
    return bytes(out), changed


if __name__ == "__main__":
    import sys
    with open(sys.argv[1], "rb") as handle:
        blob = handle.read()
    for name, spots in sorted(targets(blob).items()):
        print(f"{name:18s} {len(spots)}")
    print(mutate(blob, targets(blob), np.random.default_rng(0))[1])
