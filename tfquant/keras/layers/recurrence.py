"""`Recurrence`: an LSTM or GRU unrolled over the time steps from shared quantized Dense
layers and `keras.ops`, with a quantizer after every op (used by
`tfquant.keras.layers.recurrent`'s handlers).

The input projection `W·x_t + b` does not depend on the state: it runs once for the whole
sequence (RESHAPE to batch × steps rows, FULLY_CONNECTED, RESHAPE, UNPACK into the steps),
so its bias is stored once — the converter stores a FULLY_CONNECTED's int32 bias once per
op. Then per step, with the flatbuffer's ops on the right:

LSTM (Keras's gate order i, f, c, o in the kernel, the recurrent kernel and the bias):
    z = (W·x_t + b) + U·h_{t−1}                 FULLY_CONNECTED, ADD
    i, f, g, o = split(z)                        SPLIT
    c_t = σ(f)·c_{t−1} + σ(i)·tanh(g)            LOGISTIC ×2, TANH, MUL ×2, ADD
    h_t = σ(o)·tanh(c_t)                         LOGISTIC, TANH, MUL

GRU (gates z, r, h; U split into U_zr and U_h):
    x_zr, x_h = split(W·x_t + b)                 SPLIT_V
    z, r = split(σ(x_zr + U_zr·h_{t−1}))         FULLY_CONNECTED, ADD, LOGISTIC, SPLIT
    n = tanh(x_h + r·(U_h·h_{t−1} + b_h))        FULLY_CONNECTED, MUL, ADD, TANH
    h_t = n + z·(h_{t−1} − n)                    SUB, MUL, ADD
  `h_t` is Keras's `z·h_{t−1} + (1 − z)·n` with one op fewer. With `reset_after=True`
  (Keras's default) the layer has an input and a recurrent bias: the recurrent z and r
  biases are only ever added to the input ones and join `b`, the recurrent h bias is
  `b_h`. With `reset_after=False` (one bias) the candidate is
  `n = tanh(x_h + U_h·(r·h_{t−1}))`.

The Dense layers (`QuantizedConvolution`, per-channel weights) are shared by all time
steps, so training updates one set of weights and the flatbuffer stores them once; so
are the quantizers: each tensor of a step (the gate sums, each gate, the cell state, the
hidden state, ...) has one range for all steps, which also gives every h_t the one scale
that PACK (the stacked `return_sequences` output) requires. σ and tanh outputs take
TFLite's fixed int8 ranges. `go_backwards` runs the steps in reverse order (and, like
Keras, returns the sequence in the order it was processed).

The zero initial state drops out of the first step (no recurrent projections, no
`f·c_{t−1}`, `h = n − z·n`; only the gates used are sliced out), except for `r·b_h` of a
GRU with `reset_after=True`: its U_h reads an exact zero there (`0·x` on a fixed range,
one MUL). An `initial_state` argument is used as given.

An LSTM's cell state is int8 with 8-bit activations, its range capped at ±4
(`CappedRangeQuantizer`, see CELL_STATE_LIMIT): h reads it through tanh, which is
saturated there, and a calibrated range follows the rare large values. A 16-bit cell
state in an otherwise int8 model does not convert: the converter inserts no int8↔int16
requantization, and TANH and MUL refuse operands of mixed types.

A quantizer shared by the steps sees every step: PTQ calibrates it on all of them, and
in QAT a moving-average range takes one update per step (T per batch).
"""

import keras

from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.keras.quantized_convolution import QuantizedConvolution
from tfquant.quantizers.uniform import (
    INT8_FIXED_OUTPUT_RANGES,
    CappedRangeQuantizer,
    FixedRangeQuantizer,
    MovingAverageQuantizer,
)

_L = keras.layers
ops = keras.ops

# The largest range of an LSTM's cell state (and of f·c_{t−1}) quantized to 8 bits or
# fewer. h reads c through tanh, and 1 − tanh(4) = 6.7e-4 is under a tenth of the int8
# tanh output step (1/128): clipping c at ±4 leaves h as it is. A calibrated range instead
# follows the rare large |c| of a trained LSTM — ±20 for 64 units on Fashion-MNIST rows,
# whose median |c| is 0.7 — and leaves every other value a step of 0.16: LiteRT
# accuracy after PTQ 84.96 % against 87.54 % with the cap (float 87.59 %).
CELL_STATE_LIMIT = 4.0


def function_name(function):
    """The registered name of an activation function ("linear" for None)."""
    if function is None:
        return "linear"
    return function if isinstance(function, str) else keras.activations.serialize(function)


class Recurrence:
    """The quantized layers of one LSTM or GRU direction, shared by all its time steps
    (and all nodes of a shared layer): the projections and one activation quantizer per
    tensor of a step, made when first needed.

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
        self.activation = function_name(cell.activation)
        self.recurrent_activation = function_name(cell.recurrent_activation)
        self.reset_after = (not self.is_lstm) and bool(cell.reset_after)
        self.dtype = rnn.dtype_policy
        self.quantizers = {}  # role → ActivationFakeQuant
        self.spec = context.config.layer_spec(
            node.operation, first_or_last_weights=context.graph.is_first_or_last(node))
        if self.is_lstm:
            self._lstm_projections(cell)
        else:
            self._gru_projections(cell)

    def _lstm_projections(self, cell):
        # Cell weights: kernel (in, 4·units), recurrent_kernel (units, 4·units), bias
        # (4·units), gates i, f, c, o along the last axis — as the split of the sum reads
        # them. The bias goes with the input projection, computed once for the sequence.
        units, use_bias = self.units, bool(cell.use_bias)
        self.input_projection = self._projection(4 * units, use_bias, "input", cell,
                                                 lambda w: w[0:1] + w[2:3])
        self.recurrent_projection = self._projection(4 * units, False, "recurrent", cell,
                                                     lambda w: [w[1]])

    def _gru_projections(self, cell):
        # Cell weights: kernel (in, 3·units), recurrent_kernel (units, 3·units), gates
        # z, r, h along the last axis, and a bias: (3·units), or with reset_after=True
        # (2, 3·units), an input and a recurrent row. The recurrent z and r biases are
        # only added to the input ones: they join the input projection, whose bias is
        # stored once, while a recurrent projection's int32 bias is stored once per step
        # in the flatbuffer. The recurrent kernel splits into U_zr (z and r) and U_h (the
        # candidate, with the recurrent h bias under reset_after=True).
        units, use_bias = self.units, bool(cell.use_bias)
        reset_after = self.reset_after

        def input_weights(w):
            if not use_bias:
                return [w[0]]
            if not reset_after:
                return [w[0], w[2]]
            recurrent_zr = w[2][1].copy()
            recurrent_zr[2 * units:] = 0.0
            return [w[0], w[2][0] + recurrent_zr]

        def candidate_weights(w):
            kernel = w[1][:, 2 * units:]
            return [kernel, w[2][1][2 * units:]] if use_bias and reset_after else [kernel]

        self.input_projection = self._projection(3 * units, use_bias, "input", cell,
                                                 input_weights)
        self.recurrent_projection = self._projection(2 * units, False, "recurrent", cell,
                                                     lambda w: [w[1][:, :2 * units]])
        self.candidate_projection = self._projection(units, use_bias and reset_after,
                                                     "candidate", cell, candidate_weights)

    def _projection(self, units, use_bias, role, cell, weights):
        """A quantized Dense(`units`) taking `weights(cell weights)` once the model is
        built."""
        name = self.context.unique_name(f"{self.name}_{role}_projection")
        dense = _L.Dense(units, use_bias=use_bias, name=name, dtype=self.dtype)
        wrapper = QuantizedConvolution(
            dense, weight_quantizer=self.spec.weight_quantizer_for(-1),
            output_quantizer=self.context.output_quantizer(self.node), name=name)
        self.context.copy_weights(wrapper.layer, cell, weights)
        return wrapper

    # -- quantized ops --------------------------------------------------------------------

    def quantized(self, role, tensor, activation=None):
        """`tensor` through the quantizer of `role` (one per role, shared by all steps);
        `activation`: the activation `tensor` ends with (fixed int8 ranges)."""
        if role not in self.quantizers:
            quantizer = self.context.output_quantizer(self.node, activation)
            if role in ("cell", "forget_cell"):
                quantizer = cell_state_quantizer(quantizer)
            self.quantizers[role] = ActivationFakeQuant(
                quantizer, name=self.context.unique_name(f"{self.name}_{role}_quant"),
                dtype=self.dtype)
        return self.quantizers[role](tensor)

    def activated(self, role, tensor, activation):
        """`activation` (a name) of `tensor`, quantized (a linear one needs nothing)."""
        if activation == "linear":
            return tensor
        return self.quantized(role, keras.activations.get(activation)(tensor), activation)

    def zero_state(self, like):
        """An exact zero of `like`'s shape, on a fixed range: the zero initial state where
        a projection's bias still counts (a GRU's candidate under reset_after=True). A
        fixed range observes nothing, so the zeros shrink no calibrated range."""
        if "zero_state" not in self.quantizers:
            bits = 16 if self.spec.activation_bits == 16 else 8
            self.quantizers["zero_state"] = ActivationFakeQuant(
                FixedRangeQuantizer(*INT8_FIXED_OUTPUT_RANGES["tanh"], num_bits=bits),
                name=self.context.unique_name(f"{self.name}_zero_state_quant"),
                dtype=self.dtype)
        return self.quantizers["zero_state"](ops.multiply(like, 0.0))

    # -- the time steps -------------------------------------------------------------------

    def run(self, sequence, initial_state, backwards):
        """Unrolls the recurrence over `sequence` (batch, steps, features), in reverse
        order if `backwards`; `initial_state`: the states to start from ([h, c] for an
        LSTM, [h] for a GRU), or None for zeros. Returns (the hidden states in processing
        order, the final states)."""
        steps, features = int(sequence.shape[1]), int(sequence.shape[2])
        # The input projection of all steps at once: one FULLY_CONNECTED over
        # batch × steps rows (a Dense on the last axis is the same per step) with its
        # bias stored once; UNPACK then hands each step its row.
        flat = ops.reshape(sequence, (-1, features))
        projected = self.input_projection(flat)
        projected = ops.reshape(projected, (-1, steps, int(projected.shape[-1])))
        projected = ops.unstack(projected, axis=1)
        order = list(range(steps))[::-1] if backwards else list(range(steps))
        step = self._lstm_step if self.is_lstm else self._gru_step
        state = initial_state
        hidden = []
        for index in order:
            state = step(projected[index], state)
            hidden.append(state[0])
        return hidden, state

    def _lstm_step(self, projected, state):
        """One LSTM step on the step's input projection; `state`: [h, c] or None (zeros).
        Returns [h, c]."""
        units = self.units
        if state is None:
            # The forget gate has no c_{t−1} to keep: only i, c and o are sliced out (an
            # unused SPLIT output has no range, and the converter may leave it float).
            forget_gate = None
            input_gate, candidate, output_gate = (
                projected[:, k * units:(k + 1) * units] for k in (0, 2, 3))
        else:
            hidden, cell = state
            gates = self.quantized("gates",
                                   ops.add(projected, self.recurrent_projection(hidden)))
            input_gate, forget_gate, candidate, output_gate = ops.split(gates, 4, axis=-1)
        sigma = self.recurrent_activation
        input_gate = self.activated("input_gate", input_gate, sigma)
        candidate = self.activated("candidate", candidate, self.activation)
        output_gate = self.activated("output_gate", output_gate, sigma)
        if state is None:
            cell = self.quantized("cell", ops.multiply(input_gate, candidate))
        else:
            forget_gate = self.activated("forget_gate", forget_gate, sigma)
            kept = self.quantized("forget_cell", ops.multiply(forget_gate, cell))
            added = self.quantized("input_cell", ops.multiply(input_gate, candidate))
            cell = self.quantized("cell", ops.add(kept, added))
        cell_activation = self.activated("cell_activation", cell, self.activation)
        hidden = self.quantized("hidden", ops.multiply(output_gate, cell_activation))
        return [hidden, cell]

    def _gru_step(self, projected, state):
        """One GRU step on the step's input projection; `state`: [h] or None (zeros).
        Returns [h]."""
        units = self.units
        x_zr, x_h = ops.split(projected, [2 * units], axis=-1)
        previous = None if state is None else state[0]
        # The reset gate scales U_h·h_{t−1} (+ b_h with reset_after=True): at the zero
        # initial state it only matters for r·b_h.
        reset_bias = self.reset_after and self.candidate_projection.layer.use_bias
        sigma = self.recurrent_activation
        if previous is not None:
            update_reset = self.quantized(
                "update_reset_sum", ops.add(x_zr, self.recurrent_projection(previous)))
            update_gate, reset_gate = ops.split(
                self.activated("update_reset_gates", update_reset, sigma), 2, axis=-1)
        elif reset_bias:
            update_gate, reset_gate = ops.split(
                self.activated("update_reset_gates", x_zr, sigma), 2, axis=-1)
        else:
            # Only z is sliced out (an unused SPLIT output has no range, and the converter
            # may leave it float).
            update_gate = self.activated("update_reset_gates", x_zr[:, :units], sigma)
            reset_gate = None
        reset = None
        if previous is not None and self.reset_after:
            reset = self.quantized("reset_recurrent", ops.multiply(
                reset_gate, self.candidate_projection(previous)))
        elif previous is not None:
            reset = self.candidate_projection(
                self.quantized("reset_hidden", ops.multiply(reset_gate, previous)))
        elif reset_bias:
            reset = self.quantized("reset_recurrent", ops.multiply(
                reset_gate, self.candidate_projection(self.zero_state(x_h))))
        candidate = x_h if reset is None else self.quantized("candidate_sum",
                                                             ops.add(x_h, reset))
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


def cell_state_quantizer(quantizer):
    """The quantizer of an LSTM's cell state: the configured one, its range capped at
    ±CELL_STATE_LIMIT when it is a moving-average quantizer of 8 bits or fewer (learned
    ranges — LSQ, PACT, ... — find their own clip; 16 bits have the steps to spare)."""
    if type(quantizer) is not MovingAverageQuantizer or quantizer.num_bits > 8:
        return quantizer
    return CappedRangeQuantizer(CELL_STATE_LIMIT, **quantizer.get_config())
