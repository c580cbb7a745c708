"""TensorFlow ops backed by tfquant's C++ kernels."""

from tfquant.ops.fake_quant import fake_quant
from tfquant.ops.packed import pack_weights, packed_matmul, unpack_weights
from tfquant.ops.ranges import moving_average_range
from tfquant.ops.seer_conv import seer_conv2d, seer_predictor

__all__ = ["fake_quant", "moving_average_range", "pack_weights", "packed_matmul",
           "seer_conv2d", "seer_predictor", "unpack_weights"]
