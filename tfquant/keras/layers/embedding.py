"""`Embedding` with an int8 table: `QuantizedEmbedding` fake-quantizes the table per
tensor (symmetric, narrow range) and looks it up; TFLite runs a GATHER on the int8
table, whose output has the table's scale, so the lookup needs no quantizer of its own.
"""

import keras
from keras import ops

from tfquant.keras.dtypes import float32_math, to_compute_dtype
from tfquant.keras.layers.registry import LayerHandler, register_layer_handler
from tfquant.keras.slots import OneQuantizerLayer
from tfquant.quantizers.base import deserialize_quantizer
from tfquant.quantizers.uniform import MinMaxWeightQuantizer


@keras.saving.register_keras_serializable(package="tfquant")
class QuantizedEmbedding(OneQuantizerLayer, keras.layers.Wrapper):
    """An `Embedding` whose table is fake-quantized in every call.

    Args:
      layer: the float `keras.layers.Embedding` (`mask_zero=False`).
      weight_quantizer: the table's quantizer; default 8-bit per-tensor
        `MinMaxWeightQuantizer` (a GATHER output has one scale, the table's).
    """

    QUANTIZER = "weight_quantizer"
    QUANTIZER_VARIABLES = "table_variables"
    QUANTIZER_ROLE = "weights:embeddings"

    def __init__(self, layer, weight_quantizer=None, **kwargs):
        if not isinstance(layer, keras.layers.Embedding):
            raise ValueError(f"QuantizedEmbedding wraps an Embedding layer; got "
                             f"{layer.name!r} ({type(layer).__name__}).")
        if layer.mask_zero:
            raise ValueError(f"Embedding {layer.name!r} has mask_zero=True; tfquant quantizes "
                             "embeddings without masks.")
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.weight_quantizer = deserialize_quantizer(weight_quantizer) or \
            MinMaxWeightQuantizer(8, per_channel=False)
        if getattr(self.weight_quantizer, "per_channel", False):
            raise ValueError(f"QuantizedEmbedding {self.name!r}: the table needs a per-tensor "
                             "quantizer (a TFLite GATHER output has one scale).")

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.build_quantizer(tuple(self.layer.embeddings.shape), "embeddings")
        self.built = True

    def call(self, inputs, training=None):
        with float32_math():
            table = self.weight_quantizer(ops.convert_to_tensor(self.layer.embeddings),
                                          bool(training), self.table_variables)
            outputs = ops.take(table, ops.cast(inputs, "int32"), axis=0)
        return to_compute_dtype(outputs, self)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)



class EmbeddingHandler(LayerHandler):
    quantizes_weights = True
    replaces_layer = True

    def unsupported_reason(self, layer):
        if layer.mask_zero:
            return "mask_zero=True (tfquant quantizes embeddings without masks)"
        return None

    def rebuild(self, context, node, args, kwargs):
        bits = max(8, context.config.layer_spec(node.operation).weight_bits)
        wrapper = context.wrapped(node.operation, lambda clone: QuantizedEmbedding(
            clone, MinMaxWeightQuantizer(bits, per_channel=False)))
        return wrapper(*args, **kwargs)


register_layer_handler(keras.layers.Embedding, EmbeddingHandler())
