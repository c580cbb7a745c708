"""Weight-only ("dynamic range") export: int8/INT4 weights, float activations, LiteRT's
hybrid kernels quantizing each input at run time (`export_tflite(..., activations="dynamic")`).

The converter's DYNAMIC QDQ mode keeps the integers and per-channel scales of the
weight fake-quant ops; this module plans what it cannot take (INT4 DEPTHWISE_CONV_2D:
LiteRT 'Type FLOAT32 with filter type INT4 not currently supported', so those kernels
go onto the finest int8 grid holding the same values), checks that every compute op is
hybrid and that its weights are the Keras model's, and bounds LiteRT's difference.
"""

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

from tfquant.export.flatbuffer import builtin_op_name, tensor_type_name
from tfquant.export.int2 import INT4, unpack_int4
from tfquant.export.integer_grid import find_integer_grid
from tfquant.keras.slots import quantizer_slots
from tfquant.quantizers.base import Deployment

# Ops whose constant filter a hybrid kernel reads as int8/INT4.
HYBRID_OPS = frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"})
# LiteRT quantizes every hybrid input to int8 per row (asymmetric): each layer adds about
# half an input step, ~0.2 % of the row's range; measured max |Keras − LiteRT| was 0.5–1.5 %
# of max |output| (demo CNN, ViT). The export notes outputs beyond this fraction.
TOLERANCE = 0.03
_INT8 = 9


def activation_quantizer_problems(model):
    """Activation quantizers of `model` that quantize (a dynamic export would drop them)."""
    return sorted({f"{s.layer.name} ({type(s.quantizer).__name__})"
                   for s in quantizer_slots(model, weights=False)
                   if s.quantizer.deployment() is not Deployment.FLOAT})


def depthwise_int8_grids(model, int8_low_bit):
    """{(layer, kernel): WeightGrid} putting INT4 depthwise kernels onto int8 grids."""
    grids = {}
    for layer in model.layers:
        if not hasattr(layer, "deployed_kernels") or int8_low_bit:
            continue
        if layer.weight_quantizer.deployment() is not Deployment.INT4:
            continue
        for name, (values, axis) in layer.deployed_kernels().items():
            if layer.kernel_layout(name) == "depthwise":
                grids[(layer.name, name)] = find_integer_grid(values, axis, min_bits=8)
    return grids


def _filters(flatbuffer):
    """[(op name, input type, filter type, integers [C, -1], scales [C])] of the hybrid
    ops' constant filters (channel-major, as `quantized_dimension` says)."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = builtin_op_name(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name not in HYBRID_OPS:
                continue
            data_in, weight_in = (2, 1) if name == "TRANSPOSE_CONV" else (0, 1)
            x, w = subgraph.tensors[op.inputs[data_in]], subgraph.tensors[op.inputs[weight_in]]
            raw = model.buffers[w.buffer].data
            ints = scales = None
            if raw is not None and len(raw) and w.type in (INT4, _INT8):
                shape = tuple(int(d) for d in w.shape)
                ints = (unpack_int4(raw, int(np.prod(shape))).reshape(shape) if w.type == INT4
                        else np.frombuffer(bytes(raw), np.int8).reshape(shape))
                ints = np.moveaxis(ints, w.quantization.quantizedDimension, 0)
                ints = ints.reshape(ints.shape[0], -1)
                scales = np.asarray(w.quantization.scale, np.float32)
            found.append((name, tensor_type_name(x.type), tensor_type_name(w.type), ints, scales))
    return found


def check_hybrid(flatbuffer, model):
    """(notes, problems): every hybrid-op filter int8/INT4 per channel with a float
    input, and every quantized kernel of `model` stored as exactly its integers × scales
    (the export's grid: the same values; depthwise INT4 as int8)."""
    filters, problems = _filters(flatbuffer), []
    for name, x_type, w_type, ints, scales in filters:
        if x_type != "FLOAT32" or ints is None:
            problems.append(f"{name} reads a {x_type} input and a {w_type} filter, not a "
                            "float input and an int8/INT4 constant filter")
        elif scales.size != ints.shape[0]:
            problems.append(f"{name}: its {w_type} filter is not per channel")
    unmatched = []
    for layer in model.layers:
        if not hasattr(layer, "deployed_kernels"):
            continue
        for kernel_name, (values, axis) in layer.deployed_kernels().items():
            values = np.moveaxis(np.asarray(values, np.float32), axis, 0)
            values = values.reshape(values.shape[0], -1)
            if not any(ints is not None and ints.shape == values.shape
                       and _same_weights(ints, scales, values)
                       for _, _, _, ints, scales in filters):
                unmatched.append(f"{layer.name}.{kernel_name}")
    if unmatched:
        problems.append("no hybrid filter holds exactly the Keras quantized weights of "
                        + ", ".join(unmatched))
    types = sorted({w for _, _, w, _, _ in filters})
    notes = [f"hybrid ops: {len(filters)} ({', '.join(types) or 'none'} filters, float "
             "activations quantized by LiteRT at run time); every quantized kernel's "
             "integers and scales checked against the Keras model"]
    return notes, problems


def _same_weights(ints, scales, values):
    """Integers `ints` × per-row `scales` are `values` (to float32 rounding), and the
    integers are those of `values` on that grid."""
    step = scales.astype(np.float64)[:, None]
    return (np.array_equal(ints, np.round(values / step))
            and np.max(np.abs(ints * step - values), initial=0.0) <= 1e-4 * np.max(step))  # float32 rounding of k·s


def difference_note(reference, litert):
    """The note on max |Keras − LiteRT| of each output against `TOLERANCE`."""
    parts = []
    for k, (ref, out) in enumerate(zip(reference, litert)):
        scale = max(float(np.max(np.abs(ref))), 1e-12)
        rel = float(np.max(np.abs(np.asarray(ref, np.float64) - out))) / scale
        verdict = "within" if rel <= TOLERANCE else "BEYOND"
        parts.append(f"output {k}: {rel:.3%} of max |output| ({verdict} the expected "
                     f"{TOLERANCE:.0%} of dynamic activation quantization)")
    return "max |Keras − LiteRT|: " + "; ".join(parts)
