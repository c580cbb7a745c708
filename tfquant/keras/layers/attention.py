"""`MultiHeadAttention`, rebuilt from quantized Dense projections and `keras.ops`, with a
quantizer on every tensor TFLite computes:

    q, k, v = Dense(x_q)·(1/√d), Dense(x_k), Dense(x_v)     FULLY_CONNECTED (×3)
    scores  = q_h · k_hᵀ      per head                        BATCH_MATMUL
    probs   = softmax(scores)  on its fixed int8 range         SOFTMAX
    context = probs · v_h                                    BATCH_MATMUL
    output  = Dense(concat of the heads)                     FULLY_CONNECTED

The 1/√d scale of the queries is folded into the query projection (the same function,
one op fewer). Each projection is Keras's EinsumDense `abc,cde->abde` (`abcd,cde->abe`
for the output) as a Dense over the flattened heads, with per-channel weights.
"""

import keras
import numpy as np
from keras.src.backend import get_keras_mask
from keras.src.ops import nn as _nn
from keras.src.ops import numpy as _np

from tfquant.keras.layers.convolution import quantized_convolution
from tfquant.keras.layers.registry import LayerHandler, register_layer_handler

_MASK_ARGUMENTS = ("query_mask", "value_mask", "key_mask", "attention_mask")


def _flat_projection(values, scale=1.0):
    """EinsumDense `[in, heads, dim]` kernel and `[heads, dim]` bias → Dense weights."""
    kernel = values[0]
    weights = [kernel.reshape(kernel.shape[0], -1) * scale]
    if len(values) > 1:
        weights.append(values[1].reshape(-1) * scale)
    return weights


def _flat_output(values):
    """EinsumDense `[heads, dim, out]` kernel → Dense `[heads·dim, out]`; bias as it is."""
    kernel = values[0]
    return [kernel.reshape(-1, kernel.shape[-1])] + list(values[1:])


class MultiHeadAttentionHandler(LayerHandler):
    replaces_layer = True

    def unsupported_reason(self, layer):
        shapes = [t.shape for t in layer._inbound_nodes[0].input_tensors]
        if len(shapes[0]) != 3:
            return (f"a rank-{len(shapes[0])} query (tfquant quantizes [batch, sequence, "
                    "features])")
        if any(shape[1] is None for shape in shapes):
            return "a sequence of unknown length (give keras.Input a fixed sequence length)"
        if getattr(layer, "_use_gate", False):
            return "use_gate=True"
        if getattr(layer, "_sliding_window", None) is not None:
            return "a sliding window"
        if len(layer.output_dense.kernel.shape) != 3:
            return f"output_shape={layer._output_shape!r} (one output axis is supported)"
        return None

    def rebuild(self, context, node, args, kwargs):
        layer = node.operation
        for name in _MASK_ARGUMENTS + ("return_attention_scores", "use_causal_mask"):
            if kwargs.get(name) not in (None, False):
                raise ValueError(
                    f"Layer {layer.name!r} (MultiHeadAttention) is called with {name}; "
                    "tfquant quantizes attention without masks or returned scores. Keep it "
                    f"in float with QuantConfig(float_layers=[{layer.name!r}]).")
        names = ("query", "value", "key")
        inputs = dict(zip(names, args))
        inputs.update({k: kwargs[k] for k in names if kwargs.get(k) is not None})
        query, value = inputs["query"], inputs["value"]
        key = inputs.get("key", value)
        for tensor in node.input_tensors:
            if get_keras_mask(tensor) is not None:
                raise ValueError(
                    f"Layer {layer.name!r} (MultiHeadAttention) gets a masked input (from "
                    "Embedding(mask_zero=True) or a Masking layer); tfquant quantizes "
                    "attention without masks.")
        heads, key_dim = layer.num_heads, layer.key_dim
        value_dim = layer.value_dim or key_dim
        query_dense, key_dense, value_dense, output_dense, dropout = context.replacement(
            layer, lambda _: self._sublayers(context, node, layer))

        def quantized(tensor, activation=None):
            return context.quantize_output(node, tensor, activation)

        def heads_first(tensor, dim, transpose_to):
            split = _np.Reshape((-1, tensor.shape[1], heads, dim))(tensor)
            return _np.Transpose(transpose_to)(split)

        q = heads_first(query_dense(query), key_dim, (0, 2, 1, 3))   # [B, H, T, d]
        k = heads_first(key_dense(key), key_dim, (0, 2, 3, 1))       # [B, H, d, S]
        v = heads_first(value_dense(value), value_dim, (0, 2, 1, 3))  # [B, H, S, dv]
        probs = quantized(_nn.Softmax(axis=-1)(quantized(_np.Matmul()(q, k))), "softmax")
        if dropout is not None:
            probs = dropout(probs, training=kwargs.get("training"))
        attended = quantized(_np.Matmul()(probs, v))                   # [B, H, T, dv]
        attended = _np.Reshape((-1, query.shape[1], heads * value_dim))(
            _np.Transpose((0, 2, 1, 3))(attended))
        return output_dense(attended)

    @staticmethod
    def _sublayers(context, node, layer):
        """The four quantized projections and the dropout of the attention weights."""
        def projection(source, suffix, transform):
            units = source.kernel.shape[-1] if suffix == "output" else \
                int(np.prod(source.kernel.shape[1:]))
            dense = keras.layers.Dense(units, use_bias=source.bias is not None,
                                       name=context.unique_name(f"{layer.name}_{suffix}"),
                                       dtype=layer.dtype_policy)
            wrapper = quantized_convolution(context, node, dense,
                                            context.output_quantizer(node))
            context.copy_weights(wrapper.layer, source, transform)
            return wrapper

        scale = 1.0 / np.sqrt(float(layer.key_dim))
        return (projection(layer.query_dense, "query",
                           lambda values: _flat_projection(values, scale)),
                projection(layer.key_dense, "key", _flat_projection),
                projection(layer.value_dense, "value", _flat_projection),
                projection(layer.output_dense, "output", _flat_output),
                keras.layers.Dropout(layer.dropout,
                                     name=context.unique_name(f"{layer.name}_dropout"))
                if layer.dropout else None)


register_layer_handler(keras.layers.MultiHeadAttention, MultiHeadAttentionHandler())
