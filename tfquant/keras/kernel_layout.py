"""Kernel layouts of the layers tfquant quantizes: which kernels a layer has, where their
output channels are, and the per-output-channel arithmetic of BN folding on them (one home
for the QAT wrapper, the regularizers, PTQ and the report)."""

import keras
import numpy as np
from keras import ops


def kernel_kind(layer):
    """The kernel layout of a layer tfquant can quantize, or None.

    "dense" and "conv": kernel `[..., in, out]`; "depthwise": `[..., in, multiplier]`
    with output channel `in·multiplier + m`; "transpose": `[..., out, in]`;
    "separable": a depthwise kernel and a pointwise `[1, 1, in·m, out]` kernel.
    """
    layers = keras.layers
    if isinstance(layer, layers.Dense):
        return "dense"
    # Order matters: the depthwise, separable and transposed bases are not BaseConv
    # subclasses in Keras 3, but check them first anyway to be independent of that.
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return "depthwise"
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        return "separable"
    if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose,
                          layers.Conv3DTranspose)):
        return "transpose"
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        return "conv"
    return None


def kernel_layout(kind, name):
    """The layout of kernel `name` of a layer of kernel kind `kind` (a separable layer's
    two kernels: "depthwise" and "conv")."""
    return {"depthwise_kernel": "depthwise", "pointwise_kernel": "conv"}.get(name, kind)


def kernel_names(layer):
    """The names of the kernel attributes of a Dense or convolution layer."""
    if kernel_kind(layer) == "separable":
        return ("depthwise_kernel", "pointwise_kernel")
    return ("kernel",)


def flatten_depthwise(kernel):
    """`[..., in, m]` → `[..., in·m]`: one axis of output channels."""
    shape = ops.shape(kernel)
    return ops.reshape(kernel, tuple(shape[:-2]) + (shape[-2] * shape[-1],))


def scale_output_channels(kernel, factor, kind):
    """Multiplies every output channel of `kernel` by the matching `factor`."""
    if kind == "depthwise":
        return ops.reshape(flatten_depthwise(kernel) * factor, ops.shape(kernel))
    if kind == "transpose":
        return kernel * ops.expand_dims(factor, -1)
    return kernel * factor


def output_axis(kind):
    """The output-channel axis of a kernel (of a depthwise one: after flattening)."""
    return -2 if kind == "transpose" else -1


def flat_kernel(kernel, kind):
    """`kernel` with one axis of output channels (a depthwise one flattened)."""
    return flatten_depthwise(kernel) if kind == "depthwise" else kernel


def flat_kernel_and_axis(kernel, kind, per_channel):
    """(`kernel` as float64 numpy with one axis of output channels, that axis or None when
    not `per_channel`): the form weight calibration and rounding work on."""
    flat = np.asarray(ops.convert_to_numpy(flat_kernel(kernel, kind)), np.float64)
    return flat, (output_axis(kind) % flat.ndim if per_channel else None)
