"""TensorFlow ops backed by tfquant's C++ kernels."""

from tfquant.ops.fake_quant import fake_quant

__all__ = ["fake_quant"]
