"""Layers that only move, select or drop values: their integer output has their input's
scale and zero point, so they get no quantizer."""

import keras

from tfquant.keras.layers.registry import LayerHandler, PassThrough, register_layer_handler

_L = keras.layers

for _cls in (_L.InputLayer, _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D,
             _L.SpatialDropout3D, _L.GaussianNoise, _L.GaussianDropout, _L.AlphaDropout,
             _L.Flatten, _L.Reshape, _L.Permute, _L.Identity, _L.ZeroPadding1D,
             _L.ZeroPadding2D, _L.ZeroPadding3D, _L.Cropping1D, _L.Cropping2D,
             _L.Cropping3D, _L.UpSampling1D, _L.UpSampling3D, _L.RepeatVector):
    register_layer_handler(_cls, PassThrough())


class UpSampling2DHandler(LayerHandler):
    """Nearest-neighbour upsampling repeats values; bilinear computes new ones."""

    def passes_through(self, layer):
        return layer.interpolation == "nearest"

    def non_negative(self, layer, inputs_non_negative):
        return inputs_non_negative

    def rebuild(self, context, node, args, kwargs):
        outputs = context.replacement(node.operation)(*args, **kwargs)
        if self.passes_through(node.operation):
            return outputs
        return context.quantize_output(node, outputs)


register_layer_handler(_L.UpSampling2D, UpSampling2DHandler())
