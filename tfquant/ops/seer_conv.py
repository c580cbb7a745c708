"""SeerNet's convolution (Cao et al., "SeerNet: Predicting Convolutional Neural Network
Feature-Map Sparsity through Low-Bit Quantization", CVPR 2019).

`seer_conv2d` computes `relu(conv2d(x, filter) + bias)` (with `pool=2`, followed by a 2×2
max-pool of stride 2, VALID) but runs the float convolution only where a low-bit copy of
the layer predicts a non-zero output:

    pred = conv2d(q8(x), q_b(filter)) + bias          # packed 2/4-bit weights, int8 x
    y[p, c] = relu(conv2d(x, filter)[p, c] + bias[c])  if pred[p, c] > threshold
              0                                         otherwise

With `pool=2` only the window's largest prediction is computed, so at most a quarter of
the convolution runs. `q8` is the packed matmul's per-pixel dynamic int8 quantization of
the im2col patch and `q_b` the symmetric per-channel quantizer of `quantize_weights`
(cc_ops/kernels/seer_conv.h). An output differs from the dense layer only where the
prediction was wrong; a negative `threshold` trades speed for fewer misses. Inference
only: no gradient, and LiteRT has no such kernel (export the dense layer).
"""

import numpy as np
import tensorflow as tf

from tfquant.ops import _library
from tfquant.ops.arguments import check_choice
from tfquant.ops.packed import check_packed_bits, pack_weights, quantize_weights

_ops = _library.load_op_library()

SEER_POOLS = (1, 2)
SEER_PADDINGS = ("same", "valid")


def seer_predictor(kernel, bits=4):
    """The predictor of a float Keras kernel [kh, kw, cin, cout] (numpy): (packed uint8,
    per-channel scales float32 [cout]) of its symmetric `bits`-bit quantization."""
    bits = check_packed_bits(bits)
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be [kh, kw, cin, cout]; got shape {kernel.shape}")
    q, scales = quantize_weights(kernel.reshape(-1, kernel.shape[-1]), bits)
    return pack_weights(q, bits).numpy(), scales.reshape(-1)


def seer_conv2d(x, filter, bias, predictor, predictor_scales, strides=(1, 1),
                padding="same", pool=1, bits=4, threshold=0.0, name=None):
    """SeerNet Conv2D + bias + ReLU (+ 2×2 max-pool) of NHWC float32 `x`.

    Args:
      x: float32 [batch, h, w, cin]. filter: float32 [kh, kw, cin, cout]. bias: [cout].
      predictor, predictor_scales: from `seer_predictor(filter, bits)`.
      strides: (sh, sw). padding: "same" or "valid" (TF's rules). pool: 1 or 2.
      threshold: outputs whose prediction is at most this are not computed.
    Returns:
      (y float32 [batch, h', w', cout], computed int64: outputs the float convolution ran).
    """
    padding = check_choice("seer_conv2d", "padding", str(padding).lower(), SEER_PADDINGS)
    pool = check_choice("seer_conv2d", "pool", pool, SEER_POOLS)
    bits = check_packed_bits(bits)
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    if np.isnan(threshold):
        raise ValueError(f"seer_conv2d: threshold={threshold!r} is not supported; allowed: "
                         "a number or ±inf.")
    return _ops.tfquant_seer_conv2d(
        tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(filter, tf.float32),
        tf.convert_to_tensor(bias, tf.float32), tf.convert_to_tensor(predictor, tf.uint8),
        tf.convert_to_tensor(predictor_scales, tf.float32), stride_h=int(sh),
        stride_w=int(sw), padding=padding.upper(), pool=int(pool), bits=bits,
        threshold=float(threshold), name=name)
