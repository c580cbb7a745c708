"""Recurrent layers: LSTM and GRU (also `keras.layers.RNN` over one LSTMCell or GRUCell),
Bidirectional over them, and TimeDistributed(Dense).

Keras converts an LSTM or GRU to a WHILE loop, of which the TFLite converter makes no
full-integer model; `unroll=True` unrolls it, but the tensors inside have no ranges from
the Keras model. `quantize_model` therefore rebuilds the recurrence unrolled over the
time steps (the sequence length must be static), from quantized Dense layers and
`keras.ops`, with a quantizer after every op: every int8 tensor of the flatbuffer has its
range from the Keras model, and LiteRT computes what the Keras model computes. The
unrolled steps are built by `Recurrence` (`tfquant.keras.layers.recurrence`, which
documents the ops of each step).

Not supported: masks (`Embedding(mask_zero=True)`, `Masking`, a `mask=` argument: the
unrolled steps have no masked-step logic), `stateful=True`, unknown sequence lengths.
`dropout` and `recurrent_dropout` only act in training; the quantized model does not
apply them (QAT fine-tunes without them).

TimeDistributed(Dense) is a Dense on the last axis — the same function — and is
quantized as one (`tfquant.keras.layers.dense_forms`).
"""

import keras
from keras.src.backend.common.masking import get_keras_mask

from tfquant.keras.layers.activations import SINGLE_OP
from tfquant.keras.layers.recurrence import Recurrence, function_name
from tfquant.keras.layers.registry import LayerHandler, register_layer_handler

_L = keras.layers
ops = keras.ops

# Activations a cell may use: one TFLite op each (softmax-like ones make no sense here).
CELL_ACTIVATIONS = tuple(name for name in SINGLE_OP if name not in ("softmax", "log_softmax"))

# The merge modes of keras.layers.Bidirectional.
MERGE_MODES = ("concat", "sum", "ave", "mul", None)


def _sequence_input(node):
    """The sequence tensor a recurrent or Bidirectional node reads."""
    return node.input_tensors[0]


def _node_mask(node):
    """True when the node's call receives a mask (an argument, or one Keras carries on
    the input tensor from an Embedding(mask_zero=True) or a Masking layer)."""
    if node.arguments.kwargs.get("mask") is not None:
        return True
    return get_keras_mask(_sequence_input(node)) is not None


_MASK_REASON = (
    "a masked input (Embedding(mask_zero=True), Masking or a mask= argument); the unrolled "
    "quantized recurrence has no masked-step logic. Pad with a value the layer can learn "
    "to ignore, or keep this layer in float")


def _cell_reason(rnn):
    """Why the cell of the recurrent layer `rnn` cannot be unrolled, or None."""
    cell = rnn.cell
    if not isinstance(cell, (_L.LSTMCell, _L.GRUCell)):
        return (f"a recurrent layer over {type(cell).__name__}; tfquant unrolls LSTM and GRU "
                "cells (keras.layers.LSTM, GRU, or RNN over one LSTMCell/GRUCell)")
    if rnn.stateful:
        return ("stateful=True (the state carried from batch to batch lives outside the "
                "unrolled graph); rebuild the layer with stateful=False")
    for attribute in ("activation", "recurrent_activation"):
        name = function_name(getattr(cell, attribute))
        if name not in CELL_ACTIVATIONS:
            return (f"{attribute}={name!r}, which TFLite does not compute with one integer "
                    f"op; supported: {', '.join(CELL_ACTIVATIONS)}")
    return None


def _nodes_reason(layer):
    """Why the calls of `layer` (a recurrent or Bidirectional layer) cannot be unrolled:
    a mask or a sequence of unknown length; or None."""
    for node in layer._inbound_nodes:
        if _node_mask(node):
            return _MASK_REASON
        shape = tuple(_sequence_input(node).shape)
        if shape[1] is None:
            return (f"a sequence of unknown length (input shape {shape}): the quantized "
                    "recurrence is unrolled over a static number of time steps; give the "
                    "model input a fixed length, e.g. keras.Input((steps, features))")
    return None


def _initial_state_arguments(args, kwargs):
    """The `initial_state` tensors of a recurrent call (filled in), or None."""
    state = kwargs.get("initial_state")
    if state is None and len(args) > 1:
        state = args[1]
    if state is None:
        return None
    return list(state) if isinstance(state, (list, tuple)) else [state]


def _check_no_mask(layer, kwargs):
    if kwargs.get("mask") is not None:
        raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) is called with "
                         f"{_MASK_REASON}.")


def _recurrence(context, node, rnn, name):
    """The `Recurrence` replacing `rnn` (made once, shared by all nodes of `rnn`)."""
    return context.replacement(rnn, lambda _: Recurrence(context, node, rnn, name))


class RecurrentHandler(LayerHandler):
    """LSTM and GRU, and `keras.layers.RNN` over one LSTMCell or GRUCell: unrolled over
    the time steps (see the module docstring)."""

    quantizes_weights = True
    replaces_layer = True

    def unsupported_reason(self, layer):
        return _cell_reason(layer) or _nodes_reason(layer)

    def quantizes_several_outputs(self, layer):
        # With return_state=True an LSTM has three outputs; the recurrence quantizes each.
        return True

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        _check_no_mask(layer, kwargs)
        sequence = args[0] if args else kwargs["sequences"]
        recurrence = _recurrence(context, node, layer, layer.name)
        processed, state = recurrence.run(
            sequence, _initial_state_arguments(args, kwargs), layer.go_backwards)
        output = ops.stack(processed, axis=1) if layer.return_sequences else state[0]
        return [output] + list(state) if layer.return_state else output


class BidirectionalHandler(RecurrentHandler):
    """Bidirectional over an LSTM or GRU: both directions unrolled, the backward one in
    reverse order, its sequence stacked back in time order as Keras does; the merged
    output is quantized (CONCATENATION, ADD, MUL)."""

    def unsupported_reason(self, layer):
        if layer.merge_mode not in MERGE_MODES:
            return (f"merge_mode={layer.merge_mode!r}; supported: "
                    + ", ".join(map(repr, MERGE_MODES)))
        return (_cell_reason(layer.forward_layer) or _cell_reason(layer.backward_layer)
                or _nodes_reason(layer))

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        _check_no_mask(layer, kwargs)
        sequence = args[0] if args else kwargs["sequences"]
        initial_state = _initial_state_arguments(args, kwargs)
        half = None if initial_state is None else len(initial_state) // 2
        results = []
        for direction, rnn in (("forward", layer.forward_layer),
                               ("backward", layer.backward_layer)):
            recurrence = _recurrence(context, node, rnn, f"{layer.name}_{direction}")
            if initial_state is None:
                state = None
            else:
                state = initial_state[:half] if direction == "forward" else initial_state[half:]
            processed, final = recurrence.run(sequence, state, rnn.go_backwards)
            # Keras reverses the backward layer's sequence (in its processing order) along
            # time: stacked in the reverse of that order, without a REVERSE op.
            if direction == "backward":
                processed = processed[::-1]
            output = ops.stack(processed, axis=1) if layer.return_sequences else final[0]
            results.append((output, final))
        (forward, forward_states), (backward, backward_states) = results
        outputs = self._merged(context, node, forward, backward)
        outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
        if layer.return_state:
            outputs += list(forward_states) + list(backward_states)
        return outputs if len(outputs) > 1 else outputs[0]

    @staticmethod
    def _merged(context, node, forward, backward):
        mode = node.operation.merge_mode
        if mode is None:
            return forward, backward
        if mode == "concat":
            return context.quantize_output(node, ops.concatenate([forward, backward], axis=-1))
        if mode == "mul":
            return context.quantize_output(node, ops.multiply(forward, backward))
        total = context.quantize_output(node, ops.add(forward, backward))
        if mode == "sum":
            return total
        return context.quantize_output(node, ops.multiply(total, 0.5))


for _cls in (_L.RNN, _L.LSTM, _L.GRU):
    register_layer_handler(_cls, RecurrentHandler())
register_layer_handler(_L.Bidirectional, BidirectionalHandler())
