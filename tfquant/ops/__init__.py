"""TensorFlow ops backed by tfquant's C++ kernels."""

from tfquant.ops.fake_quant import fake_quant
from tfquant.ops.packed import pack_weights, packed_matmul, unpack_weights

__all__ = ["fake_quant", "pack_weights", "packed_matmul", "unpack_weights"]
