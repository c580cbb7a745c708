"""Packed signed 4-bit and 2-bit weights and the matmul that reads them.

Format (cc_ops/kernels/packed.h): integers q [K, N] (4-bit: -8..7, 2-bit: -2..1)
in 64-byte tiles of 16 output channels × 32/bits input features, offset binary;
real weights are `q · scales` with one scale per output channel (scales [N] or
[1, N]) or per group of `group_size` ∈ {32, 64, 128} input features
(scales [K / group_size, N]).

`packed_matmul(x, ...)` quantizes each row of x dynamically to int8
(`s = max|x_row| / 127`, round half to even), accumulates in int32 and returns
float32 `≈ x @ (q · scales) + bias`. The only error against the float product
with the same weights is the activation rounding: per output
`|err| ≤ 0.5 · s_row · Σ_k |w[k, n]|` (`s_row = max|x_row| / 127`).
"""


import numpy as np
import tensorflow as tf

from tfquant.ops import _library
from tfquant.ops.arguments import check_bits

_ops = _library.load_op_library()

PACKED_BITS = (2, 4)
GROUP_SIZES = (0, 32, 64, 128)


def check_packed_bits(bits):
    """bits as an int if it is a packed width (2 or 4), else ValueError."""
    return check_bits(None, bits, PACKED_BITS, arg="bits")


def packed_size(k, n, bits):
    """Bytes of the packed weights of a [k, n] matrix."""
    check_packed_bits(bits)
    kb = 32 // bits
    return -(-n // 16) * 16 * (-(-k // kb) * kb) * bits // 8


def pack_weights(q, bits, name=None):
    """Packs integer weights q [K, N] (any integer dtype) into a 1-D uint8 tensor."""
    bits = check_packed_bits(bits)
    q = tf.convert_to_tensor(q)
    if not q.dtype.is_integer:
        raise ValueError(f"q must hold integers; got dtype {q.dtype.name}")
    return _ops.tfquant_pack_weights(tf.cast(q, tf.int32), bits=bits, name=name)


def unpack_weights(packed, bits, k, n, name=None):
    """Inverse of `pack_weights`: int8 [k, n]."""
    bits = check_packed_bits(bits)
    return _ops.tfquant_unpack_weights(tf.convert_to_tensor(packed, tf.uint8), bits=bits,
                                       k=int(k), n=int(n), name=name)


def packed_matmul(x, packed, scales, bias=None, bits=4, n=None, group_size=0, name=None):
    """`x [..., K] @ (q · scales) [K, n] (+ bias)` with packed 2/4-bit weights.

    Args:
      x: float32 [..., K] (other float dtypes are computed in float32 and cast back).
      packed: the uint8 output of `pack_weights` for a [K, n] matrix.
      scales: float32 [n] or [1, n] (per output channel) or [K / group_size, n].
      bias: float32 [n] or None.
      bits: 2 or 4. n: output channels (default: the last dimension of scales).
      group_size: 0 (per channel), 32, 64 or 128.
    Returns:
      float [..., n].
    """
    bits = check_packed_bits(bits)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size={group_size!r} is not supported; allowed: 0, 32, 64, 128")
    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    if not dtype.is_floating:
        raise ValueError(f"x must be a float tensor; got {dtype.name}")
    scales = tf.convert_to_tensor(scales, tf.float32)
    if n is None:
        n = scales.shape[-1]
        if n is None:
            raise ValueError("n is required when the last dimension of scales is unknown")
    n = int(n)
    x32 = tf.cast(x, tf.float32)
    k = x32.shape[-1]
    if k is None:
        raise ValueError("the last dimension of x (K) must be known")
    lead = tf.shape(x32)[:-1]
    flat = tf.reshape(x32, [-1, k])
    has_bias = bias is not None
    bias_t = tf.convert_to_tensor(bias, tf.float32) if has_bias else tf.zeros([0], tf.float32)
    y = _ops.tfquant_packed_matmul(flat, tf.convert_to_tensor(packed, tf.uint8), scales, bias_t,
                                   bits=bits, n=n, group_size=int(group_size),
                                   has_bias=has_bias, name=name)
    y = tf.reshape(y, tf.concat([lead, [n]], 0))
    if x.shape.rank is not None:
        y.set_shape(x.shape[:-1].concatenate([n]))
    return tf.cast(y, dtype)


def quantize_weights(w, bits, group_size=0):
    """Symmetric narrow-range quantization of float weights w [K, N] (numpy):
    returns (q int8 [K, N], scales float32 [groups, N]) with
    `scale = max|w| / (2^(bits-1) − 1)` per output channel or per group."""
    bits = check_packed_bits(bits)
    w = np.asarray(w, np.float32)
    k, n = w.shape
    g = k if group_size == 0 else group_size
    if group_size not in GROUP_SIZES or k % g:
        raise ValueError(f"group_size={group_size!r} does not divide K={k} or is not one of "
                         "0, 32, 64, 128")
    qmax = 2 ** (bits - 1) - 1
    blocks = w.reshape(k // g, g, n)
    scales = np.max(np.abs(blocks), axis=1) / qmax
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[:, None, :]), -qmax, qmax).astype(np.int8)
    return q.reshape(k, n), scales
