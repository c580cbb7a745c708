"""Recurrent layers: LSTM and GRU (also `keras.layers.RNN` over one LSTMCell or GRUCell),
Bidirectional over them, and TimeDistributed(Dense).

Keras converts an LSTM or GRU to a WHILE loop, of which the TFLite converter makes no
full-integer model; `unroll=True` unrolls it, but the tensors inside have no ranges from
the Keras model. `quantize_model` therefore rebuilds the recurrence unrolled over the
time steps (the sequence length must be static), from quantized Dense layers and
`keras.ops`, with a quantizer after every op: every int8 tensor of the flatbuffer has its
range from the Keras model, and LiteRT computes what the Keras model computes. One step,
with the flatbuffer's ops on the right:

LSTM (Keras's gate order i, f, c, o in the kernel, the recurrent kernel and the bias):
    z = (W·x_t + b) + U·h_{t−1}                FULLY_CONNECTED ×2, ADD
    i, f, g, o = split(z)                       SPLIT
    c_t = σ(f)·c_{t−1} + σ(i)·tanh(g)           LOGISTIC ×2, TANH, MUL ×2, ADD
    h_t = σ(o)·tanh(c_t)                        LOGISTIC, TANH, MUL

GRU (gates z, r, h; `reset_after=True`, Keras's default, has an input bias b_x and a
recurrent bias b_u):
    x_zr, x_h = split(W·x_t + b_x)              FULLY_CONNECTED, SPLIT_V
    u_zr, u_h = split(U·h_{t−1} + b_u)          FULLY_CONNECTED, SPLIT_V
    z, r = split(σ(x_zr + u_zr))                ADD, LOGISTIC, SPLIT
    n = tanh(x_h + r·u_h)                       MUL, ADD, TANH
    h_t = n + z·(h_{t−1} − n)                   SUB, MUL, ADD
  `h_t` is Keras's `z·h_{t−1} + (1 − z)·n` with one op fewer. With `reset_after=False`
  (one bias) the candidate is `n = tanh(x_h + U_h·(r·h_{t−1}))`: U is split into the
  Dense layers U_zr and U_h.

The Dense layers (`QuantizedConvolution`, per-channel weights) are shared by all time
steps — one input and one recurrent projection per direction — so training updates one
set of weights and the flatbuffer stores them once; so are the quantizers: each tensor of
a step (the gate sums, each gate, the cell state, the hidden state, ...) has one range
for all steps, which also gives every h_t the one scale that PACK (the stacked
`return_sequences` output) requires. σ and tanh outputs take TFLite's fixed int8 ranges.
The time steps are read with UNPACK and stacked with PACK; `go_backwards` reads them in
reverse order (and, like Keras, returns the sequence in the order it was processed).

The zero initial state drops out of the first step (no recurrent projection, no
`f·c_{t−1}`, `h_0 = n − z·n`), except that a GRU with `reset_after=True` needs its
recurrent bias there: its first recurrent projection reads an exact zero (`0·x`, on a
fixed range, one MUL). An `initial_state` argument is used as given.

The cell state is quantized like the other activations (int8 with 8-bit activations):
the converter takes one activation type for the whole model, so a 16-bit cell state in
an int8 model does not convert (`QuantConfig(activation_bits=16)` makes every activation
int16, the cell state included).

Not supported: masks (`Embedding(mask_zero=True)`, `Masking`, a `mask=` argument: the
unrolled steps have no masked-step logic), `stateful=True`, unknown sequence lengths.
`dropout` and `recurrent_dropout` only act in training; the quantized model does not
apply them (QAT fine-tunes without them).

TimeDistributed(Dense) is a Dense on the last axis — the same function — and is
quantized as one.
"""

import keras
from keras.src.backend.common.masking import get_keras_mask

from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.keras.layers.activations import NON_NEGATIVE_ACTIVATIONS, SINGLE_OP
from tfquant.keras.layers.registry import LayerHandler, register_layer_handler
from tfquant.keras.quantized_convolution import (
    FUSABLE_ACTIVATIONS,
    QuantizedConvolution,
    activation_name,
)
from tfquant.quantizers.uniform import INT8_FIXED_OUTPUT_RANGES, FixedRangeQuantizer

_L = keras.layers
ops = keras.ops

# Activations a cell may use: one TFLite op each (softmax-like ones make no sense here).
CELL_ACTIVATIONS = tuple(name for name in SINGLE_OP if name not in ("softmax", "log_softmax"))

# Bidirectional merge modes (Keras's), and what each computes.
MERGE_MODES = ("concat", "sum", "ave", "mul", None)


def _function_name(function):
    """The registered name of an activation function ("linear" for None)."""
    if function is None:
        return "linear"
    return function if isinstance(function, str) else keras.activations.serialize(function)


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
        name = _function_name(getattr(cell, attribute))
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
        if len(shape) != 3 or shape[1] is None:
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


class Recurrence:
    """The quantized layers of one LSTM or GRU direction, shared by all its time steps
    (and all nodes of a shared layer): the input and recurrent projections and one
    activation quantizer per tensor of a step, made when first needed.

    Args:
      context: the `RebuildContext`.
      node: the node of the original model that the recurrence replaces (its config
        spec decides the quantizers).
      rnn: the LSTM/GRU (or RNN over an LSTMCell/GRUCell) layer whose weights it takes.
      name: the prefix of the names of its layers.
    """

    def __init__(self, context, node, rnn, name):
        cell = rnn.cell
        self.context = context
        self.node = node
        self.name = name
        self.is_lstm = isinstance(cell, _L.LSTMCell)
        self.units = int(cell.units)
        self.activation = _function_name(cell.activation)
        self.recurrent_activation = _function_name(cell.recurrent_activation)
        self.reset_after = (not self.is_lstm) and bool(cell.reset_after)
        self.dtype = rnn.dtype_policy
        self.quantizers = {}  # role → ActivationFakeQuant
        layer = node.operation
        self.spec = context.config.layer_spec(
            layer, first_or_last_weights=context.graph.is_first_or_last(node))
        use_bias = bool(cell.use_bias)
        units = self.units
        gates = 4 if self.is_lstm else 3
        # Cell weights: [kernel (in, gates·units), recurrent_kernel (units, gates·units),
        # bias] — a GRU with reset_after=True has a bias of shape (2, 3·units): input and
        # recurrent.
        self.input_projection = self._projection(gates * units, use_bias, "input")
        if self.is_lstm or not self.reset_after:
            input_weights = (lambda w: [w[0], w[2]]) if use_bias else (lambda w: [w[0]])
        else:
            input_weights = (lambda w: [w[0], w[2][0]]) if use_bias else (lambda w: [w[0]])
        context.copy_weights(self.input_projection.layer, cell, input_weights)
        if self.is_lstm:
            self.recurrent_projection = self._projection(gates * units, False, "recurrent")
            context.copy_weights(self.recurrent_projection.layer, cell, lambda w: [w[1]])
            self.candidate_projection = None
        elif self.reset_after:
            self.recurrent_projection = self._projection(gates * units, use_bias, "recurrent")
            context.copy_weights(self.recurrent_projection.layer, cell,
                                 (lambda w: [w[1], w[2][1]]) if use_bias else (lambda w: [w[1]]))
            self.candidate_projection = None
        else:
            self.recurrent_projection = self._projection(2 * units, False, "recurrent")
            context.copy_weights(self.recurrent_projection.layer, cell,
                                 lambda w: [w[1][:, :2 * units]])
            self.candidate_projection = self._projection(units, False, "candidate")
            context.copy_weights(self.candidate_projection.layer, cell,
                                 lambda w: [w[1][:, 2 * units:]])

    def _projection(self, units, use_bias, role):
        name = self.context.unique_name(f"{self.name}_{role}_projection")
        dense = _L.Dense(units, use_bias=use_bias, name=name, dtype=self.dtype)
        return QuantizedConvolution(
            dense, weight_quantizer=self.spec.weight_quantizer_for(-1),
            output_quantizer=self.context.output_quantizer(self.node), name=name)

    # -- quantized ops --------------------------------------------------------------------

    def quantized(self, role, tensor, activation=None):
        """`tensor` through the quantizer of `role` (one per role, shared by all steps);
        `activation`: the activation `tensor` ends with (fixed int8 ranges)."""
        if role not in self.quantizers:
            self.quantizers[role] = ActivationFakeQuant(
                self.context.output_quantizer(self.node, activation),
                name=self.context.unique_name(f"{self.name}_{role}_quant"), dtype=self.dtype)
        return self.quantizers[role](tensor)

    def activated(self, role, tensor, activation):
        """`activation` (a name) of `tensor`, quantized (a linear one needs nothing)."""
        if activation == "linear":
            return tensor
        return self.quantized(role, keras.activations.get(activation)(tensor), activation)

    def zero_state(self, like):
        """An exact zero of `like`'s shape, on a fixed range (a zero initial state that a
        recurrent projection reads: its bias is needed, its input is zero). A fixed range
        observes nothing, so the zeros shrink no calibrated range."""
        if "zero_state" not in self.quantizers:
            bits = 16 if self.spec.activation_bits == 16 else 8
            self.quantizers["zero_state"] = ActivationFakeQuant(
                FixedRangeQuantizer(*INT8_FIXED_OUTPUT_RANGES["tanh"], num_bits=bits),
                name=self.context.unique_name(f"{self.name}_zero_state_quant"),
                dtype=self.dtype)
        return self.quantizers["zero_state"](ops.multiply(like, 0.0))

    # -- one time step ------------------------------------------------------------------

    def step(self, inputs, state):
        """One time step on `inputs` (batch, features); `state`: the previous states
        ([h, c] for an LSTM, [h] for a GRU) or None for the zero initial state. Returns
        the new states (h first)."""
        if self.is_lstm:
            return self._lstm_step(inputs, state)
        return self._gru_step(inputs, state)

    def _lstm_step(self, inputs, state):
        gates = self.input_projection(inputs)
        if state is not None:
            hidden, cell = state
            gates = self.quantized("gates", ops.add(gates, self.recurrent_projection(hidden)))
        input_gate, forget_gate, candidate, output_gate = ops.split(gates, 4, axis=-1)
        sigma = self.recurrent_activation
        input_gate = self.activated("input_gate", input_gate, sigma)
        candidate = self.activated("candidate", candidate, self.activation)
        output_gate = self.activated("output_gate", output_gate, sigma)
        if state is None:
            # c_{t−1} = 0: the forget gate has nothing to keep.
            cell = self.quantized("cell", ops.multiply(input_gate, candidate))
        else:
            forget_gate = self.activated("forget_gate", forget_gate, sigma)
            kept = self.quantized("forget_cell", ops.multiply(forget_gate, cell))
            added = self.quantized("input_cell", ops.multiply(input_gate, candidate))
            cell = self.quantized("cell", ops.add(kept, added))
        cell_activation = self.activated("cell_activation", cell, self.activation)
        hidden = self.quantized("hidden", ops.multiply(output_gate, cell_activation))
        return [hidden, cell]

    def _gru_step(self, inputs, state):
        units = self.units
        x_zr, x_h = ops.split(self.input_projection(inputs), [2 * units], axis=-1)
        previous = None if state is None else state[0]
        # The recurrent projection's input: h_{t−1}, or for the zero initial state an
        # exact zero where the recurrent bias (reset_after=True) still counts.
        recurrent_input = previous
        if previous is None and self.reset_after:
            recurrent_input = self.zero_state(x_h)
        if recurrent_input is None:
            update_reset = x_zr
        elif self.reset_after:
            u_zr, u_h = ops.split(self.recurrent_projection(recurrent_input), [2 * units],
                                  axis=-1)
            update_reset = self.quantized("update_reset_sum", ops.add(x_zr, u_zr))
        else:
            update_reset = self.quantized(
                "update_reset_sum", ops.add(x_zr, self.recurrent_projection(recurrent_input)))
        update_reset = self.activated("update_reset_gates", update_reset,
                                      self.recurrent_activation)
        update_gate, reset_gate = ops.split(update_reset, 2, axis=-1)
        if recurrent_input is None:
            candidate = x_h
        else:
            if self.reset_after:
                reset = self.quantized("reset_recurrent", ops.multiply(reset_gate, u_h))
            else:
                reset = self.candidate_projection(
                    self.quantized("reset_hidden", ops.multiply(reset_gate, previous)))
            candidate = self.quantized("candidate_sum", ops.add(x_h, reset))
        candidate = self.activated("candidate", candidate, self.activation)
        if previous is None:
            # h_{t−1} = 0: h = n + z·(0 − n) = n − z·n.
            change = self.quantized("update_change", ops.multiply(update_gate, candidate))
            hidden = self.quantized("hidden", ops.subtract(candidate, change))
        else:
            difference = self.quantized("difference", ops.subtract(previous, candidate))
            change = self.quantized("update_change", ops.multiply(update_gate, difference))
            hidden = self.quantized("hidden", ops.add(candidate, change))
        return [hidden]

    def run(self, sequence, initial_state, backwards):
        """Unrolls the recurrence over `sequence` (batch, steps, features), in reverse
        order if `backwards`. Returns (the hidden states in the order of `sequence`'s
        time steps, the same in processing order, the final states)."""
        steps = ops.unstack(sequence, axis=1)
        order = list(range(len(steps)))[::-1] if backwards else list(range(len(steps)))
        state = initial_state
        hidden = {}
        for index in order:
            state = self.step(steps[index], state)
            hidden[index] = state[0]
        in_time_order = [hidden[index] for index in range(len(steps))]
        processed = [hidden[index] for index in order]
        return in_time_order, processed, state


def _recurrence(context, node, rnn, name):
    """The `Recurrence` replacing `rnn` (made once, shared by all nodes of `rnn`)."""
    return context.replacement(rnn, lambda _: Recurrence(context, node, rnn, name))


def _several_outputs(layer):
    return any(len(node.outputs) > 1 for node in layer._inbound_nodes)


class RecurrentHandler(LayerHandler):
    """LSTM and GRU, and `keras.layers.RNN` over one LSTMCell or GRUCell: unrolled over
    the time steps (see the module docstring)."""

    def unsupported_reason(self, layer):
        return _cell_reason(layer) or _nodes_reason(layer)

    def passes_through(self, layer):
        # `quantize_model` refuses layers with several outputs unless they pass values
        # through; the unrolled recurrence quantizes every output itself, and with
        # return_state=True an LSTM has three. Claiming a pass-through there only lets the
        # first/last-layer rules see through the layer.
        return _several_outputs(layer)

    def has_kernel(self, layer):
        return True

    def keeps_layer(self, layer):
        return False

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        _check_no_mask(layer, kwargs)
        sequence = args[0] if args else kwargs["sequences"]
        recurrence = _recurrence(context, node, layer, layer.name)
        in_time_order, processed, state = recurrence.run(
            sequence, _initial_state_arguments(args, kwargs), layer.go_backwards)
        output = ops.stack(processed, axis=1) if layer.return_sequences else state[0]
        return [output] + list(state) if layer.return_state else output


class BidirectionalHandler(LayerHandler):
    """Bidirectional over an LSTM or GRU: both directions unrolled, the backward one in
    reverse order, its sequence stacked back in time order as Keras does; the merged
    output is quantized (CONCATENATION, ADD, MUL)."""

    def unsupported_reason(self, layer):
        if layer.merge_mode not in MERGE_MODES:
            return (f"merge_mode={layer.merge_mode!r}; supported: "
                    + ", ".join(map(repr, MERGE_MODES)))
        return (_cell_reason(layer.forward_layer) or _cell_reason(layer.backward_layer)
                or _nodes_reason(layer))

    def passes_through(self, layer):
        # See RecurrentHandler.passes_through (merge_mode=None or return_state=True).
        return _several_outputs(layer)

    def has_kernel(self, layer):
        return True

    def keeps_layer(self, layer):
        return False

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
            in_time_order, _, final = recurrence.run(sequence, state, rnn.go_backwards)
            output = ops.stack(in_time_order, axis=1) if layer.return_sequences else final[0]
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


class TimeDistributedHandler(LayerHandler):
    """TimeDistributed(Dense): a Dense on the last axis, which is the same function,
    quantized as one (a ReLU/ReLU6 that follows is fused, as after a Dense)."""

    def unsupported_reason(self, layer):
        if not isinstance(layer.layer, _L.Dense):
            return (f"TimeDistributed over {type(layer.layer).__name__}; tfquant quantizes "
                    "TimeDistributed(Dense) (apply other layers to the merged batch and "
                    "time axes with Reshape, or keep this layer in float)")
        return None

    def output_activation(self, layer):
        return activation_name(layer.layer)

    def non_negative(self, layer, inputs_non_negative):
        return activation_name(layer.layer) in NON_NEGATIVE_ACTIVATIONS

    def has_kernel(self, layer):
        return True

    def keeps_layer(self, layer):
        return False

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        own_activation = activation_name(layer.layer)
        fuse_next = own_activation == "linear" and context.next_is_fused(node)

        def make(layer):
            config = layer.layer.get_config()
            config["name"] = layer.name
            dense = _L.Dense.from_config(config)
            spec = context.config.layer_spec(
                layer, first_or_last_weights=context.graph.is_first_or_last(node))
            wrapper = QuantizedConvolution(
                dense, weight_quantizer=spec.weight_quantizer_for(-1),
                output_quantizer=(None if fuse_next
                                  else context.output_quantizer(node, own_activation)),
                pre_activation_quantizer=(spec.activation_quantizer_for()
                                          if own_activation not in FUSABLE_ACTIVATIONS
                                          else None),
                name=layer.name)
            context.copy_weights(wrapper.layer, layer.layer)
            return wrapper

        inputs = args[0] if args else kwargs["inputs"]
        return context.replacement(layer, make)(inputs)


for _cls in (_L.RNN, _L.LSTM, _L.GRU):
    register_layer_handler(_cls, RecurrentHandler())
register_layer_handler(_L.Bidirectional, BidirectionalHandler())
register_layer_handler(_L.TimeDistributed, TimeDistributedHandler())
