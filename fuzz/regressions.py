"""The mutations that found bugs in the delegate, made on purpose (fuzz_delegate.py
--regressions runs each through every delegate variant).

Each changes a field of the first FULLY_CONNECTED node whose fused activation is RELU6
(the seed MLPs' `d1`). Before the fixes in cc_ops/delegate and cc_ops/kernels/packed_int8_fc
each ended in a sanitizer report inside cc_ops/ or, the zero point, in outputs unlike the
builtin kernel's. The random fuzzer found output_index_minus_one, filter_scale_inf,
dangling_fc_output and the zero point; the others are their neighbours, found reading the
fixed code (the two RELU6 overflows checked with UBSan on the old code):
  output_index_*     heap-buffer-overflow reading tensors[-1] / past the end
                     (BuildNodeKernel did not check the output and bias indices)
  filter_scale_*     float-cast-overflow in QuantizeMultiplier (an Inf/NaN multiplier)
  tiny_scales_relu6  float-cast-overflow: RELU6's bound 6 / 1e-38 cast to int32
  zero_point_max     signed overflow: output zero point 2^31-1 plus RELU6's bound
  input_zero_point_16393  outputs unlike the builtin kernel's (a zero point outside
                     int8: its int32 arithmetic wraps, ours did not)
  dangling_fc_output SEGV writing a null output: nothing reads the last FC's output,
                     so LiteRT never allocates it
"""

import struct

from ai_edge_litert import schema_py_generated as schema

from fuzz.mutate import _vector

FULLY_CONNECTED = 9


def _relu6_fc(model):
    graph = model.Subgraphs(0)
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != FULLY_CONNECTED:
            continue
        options = schema.FullyConnectedOptions()
        table = op.BuiltinOptions()
        if table is None:
            continue
        options.Init(table.Bytes, table.Pos)
        if options.FusedActivationFunction() == schema.ActivationFunctionType.RELU6:
            return graph, op
    raise ValueError("no FULLY_CONNECTED with RELU6 in this model")


def _fcs(model):
    graph = model.Subgraphs(0)
    ops = [graph.Operators(o) for o in range(graph.OperatorsLength())]
    return [op for op in ops if max(model.OperatorCodes(op.OpcodeIndex()).BuiltinCode(),
                                    model.OperatorCodes(op.OpcodeIndex()).DeprecatedBuiltinCode())
            == FULLY_CONNECTED]


def _consumer_input(model, tensor):
    """Position of the first operator input that reads `tensor`."""
    graph = model.Subgraphs(0)
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        start, length = _vector(op, 6)
        for i in range(length):
            if op.Inputs(i) == tensor:
                return start + 4 * i
    raise ValueError(f"no operator reads tensor {tensor}")


def _tensor(graph, op, which):
    """(tensor, its index) of the node's input 0/1/2 or, which == 'out', output 0."""
    index = op.Outputs(0) if which == "out" else op.Inputs(which)
    return graph.Tensors(index), index


def _put(out, pos, fmt, value):
    out[pos:pos + struct.calcsize(fmt)] = struct.pack(fmt, value)


def _scale(out, tensor, value):
    start, _ = _vector(tensor.Quantization(), 8)
    _put(out, start, "<f", value)


def apply(name, data):
    """`data` (a seed model) with the mutation `name`."""
    model = schema.Model.GetRootAs(data, 0)
    graph, op = _relu6_fc(model)
    out = bytearray(data)
    outputs, _ = _vector(op, 8)
    inputs, _ = _vector(op, 6)
    if name == "output_index_minus_one":
        _put(out, outputs, "<i", -1)
    elif name == "output_index_past_end":
        _put(out, outputs, "<i", graph.TensorsLength() + 7)
    elif name == "bias_index_past_end":
        _put(out, inputs + 8, "<i", graph.TensorsLength() + 3)
    elif name in ("filter_scale_inf", "filter_scale_nan"):
        _scale(out, _tensor(graph, op, 1)[0], float("inf" if name.endswith("inf") else "nan"))
    elif name == "tiny_scales_relu6":
        _scale(out, _tensor(graph, op, 0)[0], 1e-38)
        _scale(out, _tensor(graph, op, "out")[0], 1e-38)
    elif name == "zero_point_max":
        start, _ = _vector(_tensor(graph, op, "out")[0].Quantization(), 10)
        _put(out, start, "<q", 2 ** 31 - 1)
    elif name == "input_zero_point_16393":
        start, _ = _vector(_tensor(graph, op, 0)[0].Quantization(), 10)
        _put(out, start, "<q", 16393)
    elif name == "dangling_fc_output":  # the last FC's reader reads the first FC's output
        fcs = _fcs(model)
        _put(out, _consumer_input(model, fcs[-1].Outputs(0)), "<i", fcs[0].Outputs(0))
    else:
        raise KeyError(name)
    return bytes(out)


NAMES = ("output_index_minus_one", "output_index_past_end", "bias_index_past_end",
         "filter_scale_inf", "filter_scale_nan", "tiny_scales_relu6", "zero_point_max",
         "input_zero_point_16393", "dangling_fc_output")
