"""How `quantize_model` quantizes each layer family: one module per family, each
registering a `LayerHandler` for its classes (`registry`)."""

from tfquant.keras.layers import (  # noqa: F401  (each module registers its handlers)
    activations,
    attention,
    channel_affine,
    convolution,
    dense_forms,
    embedding,
    merging,
    normalization,
    operations,
    pooling,
    recurrent,
    reshaping,
    scaling,
)
from tfquant.keras.layers.channel_affine import ChannelAffine
from tfquant.keras.layers.registry import (
    LayerHandler,
    PassThrough,
    QuantizedOutput,
    handler_for,
    register_layer_handler,
)

__all__ = ["ChannelAffine", "LayerHandler", "PassThrough", "QuantizedOutput", "handler_for",
           "register_layer_handler"]
