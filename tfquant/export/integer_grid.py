"""Integer grids for weights whose quantizer has no uniform deployment (docs/ARCHITECTURE.md §3.4).

Ternary, binary, DoReFa and similar quantizers produce a few levels per output channel.
When those levels are integer multiples of one step per channel (TWN's {−α, 0, α},
XNOR's {−s, s}, DoReFa's odd multiples of 1/(2^k − 1)) the weights ARE an integer
tensor: the export stores them exactly, as INT4 (|k| ≤ 7) or int8 (|k| ≤ 127). Levels
that are not (TTQ with W_p ≠ W_n, LQ-Nets' learned basis) can only be rounded to the
nearest int8 grid; that changes the model, so it happens only when asked, with the
measured error.
"""

import dataclasses

import numpy as np

# |k − round(k)| below this counts as an integer (float32 levels carry rounding noise).
_INTEGER_TOLERANCE = 1e-4


@dataclasses.dataclass
class WeightGrid:
    """Per-channel steps and the integer width that holds the weights."""

    scales: np.ndarray  # one step per output channel
    num_bits: int  # 4 (INT4) or 8
    exact: bool  # False: the nearest int8 grid, which changes the values
    relative_error: float  # ||grid(w) − w|| / ||w||


def _channels_last(values, axis):
    return np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis])


def _channel_step(values):
    """The largest step of which every value is an integer multiple (≤ 127 of it), or
    None. The smallest |value| is k steps for some k (DoReFa's 2-bit levels ±1/3, ±1 may
    have only ±1 in a channel), so try k = 1, 2, ... in turn."""
    nonzero = np.abs(values[values != 0])
    if nonzero.size == 0:
        return 1.0
    smallest = nonzero.min()
    for k in range(1, 128):
        step = smallest / k
        multiples = values / step
        if np.max(np.abs(multiples)) > 127.5:
            return None
        if np.max(np.abs(multiples - np.round(multiples))) <= _INTEGER_TOLERANCE * k:
            return step
    return None


def find_integer_grid(values, axis=-1, min_bits=4):
    """The per-channel integer grid that holds `values` exactly, or None; INT4 where the
    levels fit unless `min_bits` is 8."""
    channels = _channels_last(np.asarray(values, np.float64), axis)
    scales = np.ones(channels.shape[1])
    for c in range(channels.shape[1]):
        step = _channel_step(channels[:, c])
        if step is None:
            return None
        scales[c] = step
    largest = (np.max(np.abs(np.round(channels / scales)), axis=0) if channels.size
               else np.zeros(channels.shape[1]))
    num_bits = 4 if min_bits <= 4 and np.max(largest, initial=0) <= 7 else 8
    # Per channel the finest step that still holds its largest level: TFLite stores the
    # bias with step `input scale × weight scale`, so a ternary {−1, 0, 1}·α stored as
    # {−7, 0, 7} gets a 7× finer bias (see `uniform.deployable_weight_grid`).
    finer = np.maximum((2 ** (num_bits - 1) - 1) // np.maximum(largest, 1), 1)
    return WeightGrid((scales / finer).astype(np.float32), num_bits, True, 0.0)


def nearest_int8_grid(values, axis=-1):
    """The symmetric per-channel int8 grid closest to `values`, with its error."""
    values = np.asarray(values, np.float64)
    channels = _channels_last(values, axis)
    limits = np.max(np.abs(channels), axis=0)
    scales = np.where(limits > 0, limits / 127.0, 1.0)
    rounded = np.round(channels / scales) * scales
    norm = np.linalg.norm(channels)
    error = float(np.linalg.norm(rounded - channels) / norm) if norm > 0 else 0.0
    return WeightGrid(scales.astype(np.float32), 8, False, error)
