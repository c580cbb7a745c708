"""Packed 2/4-bit inference models: `PackedDense` and `to_packed_keras`.

`to_packed_keras(qmodel)` turns a QAT model from `tfquant.quantize_model` into an
inference model whose Dense layers with ≤ 4-bit weights run `tfquant.ops.packed_matmul`
on packed weights (cc_ops/kernels/packed.h); every other layer is the QAT model's own
layer, called with `training=False`.

Numbers. The packed weights are exactly the QAT model's deployed weights (`q · s`, BN
folded), so the only difference is that `packed_matmul` quantizes each row of its input
dynamically to int8 (`s_x = max|x_row| / 127`): per output of one layer
`|y_packed − y_qat| ≤ 0.5 · s_x · Σ_k |w[k, n]|` (plus float rounding). The layer's
activation and output quantizer then run as in the QAT model; an output quantizer
absorbs most of that error or moves an output by one of its steps. Tested tolerance
(tests/test_packed_export.py, 3-layer MLP, 2 and 4 bits): max |Δ| ≤ 5 % and mean |Δ|
≤ 1 % of max |output|, argmax agreement ≥ 95 %.

The inference model is for running in this process (its packed layers keep a reference
to the QAT layer's output quantizer); save the QAT model, not this one.
"""

import keras
import numpy as np
import tensorflow as tf

from tfquant.ops.packed import pack_weights, packed_matmul

PACKABLE_BITS = (2, 4)


@keras.saving.register_keras_serializable(package="tfquant")
class PackedDense(keras.layers.Layer):
    """Dense inference layer with packed signed 2/4-bit weights.

    `y = activation(x @ (q · scales) + bias)` computed by `tfquant.ops.packed_matmul`
    (input rows quantized to int8 dynamically).

    Args:
      units: output channels N. bits: 2 or 4. group_size: 0 (per channel), 32, 64, 128.
      q: int [K, N] weights (optional: else `set_weights` later). scales: [groups, N].
      bias: [N] or None. activation: a Keras activation applied after the bias.
    """

    def __init__(self, units, bits=4, group_size=0, q=None, scales=None, bias=None,
                 use_bias=True, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.bits = int(bits)
        self.group_size = int(group_size)
        self.use_bias = bool(use_bias) if bias is None else True
        self.activation = keras.activations.get(activation)
        self._init_values = (q, scales, bias)
        self.post = None  # set by to_packed_keras: the QAT layer's activation + quantizer

    def build(self, input_shape):
        k = int(input_shape[-1])
        groups = 1 if self.group_size == 0 else k // self.group_size
        q, scales, bias = self._init_values
        if q is None:
            q = np.zeros((k, self.units), np.int8)
        if tuple(np.shape(q)) != (k, self.units):
            raise ValueError(f"{self.name}: q has shape {np.shape(q)}, expected {(k, self.units)}")
        packed = pack_weights(np.asarray(q), self.bits).numpy()
        self.packed = self.add_weight(name="packed", shape=packed.shape, dtype="uint8",
                                      trainable=False, initializer="zeros")
        self.packed.assign(packed)
        self.scales = self.add_weight(name="scales", shape=(groups, self.units),
                                      trainable=False, initializer="ones")
        if scales is not None:
            self.scales.assign(np.asarray(scales, np.float32).reshape(groups, self.units))
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.units,), trainable=False,
                                        initializer="zeros")
            if bias is not None:
                self.bias.assign(np.asarray(bias, np.float32))
        self._init_values = (None, None, None)
        self.k = k

    def call(self, inputs):
        y = packed_matmul(inputs, tf.convert_to_tensor(self.packed),
                          tf.convert_to_tensor(self.scales),
                          None if self.bias is None else tf.convert_to_tensor(self.bias),
                          bits=self.bits, n=self.units, group_size=self.group_size)
        if self.post is not None:
            return self.post(y)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, bits=self.bits, group_size=self.group_size,
                      use_bias=self.use_bias,
                      activation=keras.activations.serialize(self.activation))
        return config


def integer_grid(values, bits, axis=-1):
    """(q int8, scales float32 [1, N]) with `q · scales == values` (to float rounding)
    for a kernel on a symmetric `bits` grid, per output channel, else per tensor;
    None if the values are on neither."""
    values = np.asarray(values, np.float32)
    qmax = 2 ** (bits - 1) - 1
    reduce = tuple(a for a in range(values.ndim) if a != values.ndim - 1)
    for scale in (np.max(np.abs(values), axis=reduce, keepdims=True),
                  np.full((1,) * values.ndim, np.max(np.abs(values)))):
        scale = np.where(scale > 0, scale / qmax, 1.0).astype(np.float32)
        q = np.rint(values / scale)
        if np.abs(q).max() > qmax:
            continue
        tolerance = 1e-5 * np.maximum(scale, 1e-30) * qmax
        if np.all(np.abs(q * scale - values) <= tolerance):
            scales = np.broadcast_to(scale, (1, values.shape[-1])).astype(np.float32)
            return q.astype(np.int8), np.ascontiguousarray(scales)
    return None


def _weight_bits(quantizer):
    for name in ("num_bits", "_num_bits"):
        value = getattr(quantizer, name, None)
        if isinstance(value, int):
            return value
    return None


def packed_dense_for(layer):
    """A `PackedDense` equal to a QAT Dense wrapper (`QuantizedConvolution`), or None
    when its weights are not a ≤ 4-bit uniform grid."""
    from tfquant.keras.quantized_convolution import QuantizedConvolution

    if not isinstance(layer, QuantizedConvolution) or layer.kind != "dense":
        return None
    bits = _weight_bits(layer.weight_quantizer)
    if bits is None or bits > 4:
        return None
    (values, axis), = layer.deployed_kernels().values()
    if axis != -1 or np.ndim(values) != 2:
        return None
    pack_bits = 2 if bits == 2 else 4
    grid = integer_grid(values, bits)
    if grid is None:
        return None
    q, scales = grid
    _, bias = layer.folded_kernels_and_bias()
    bias = None if bias is None else keras.ops.convert_to_numpy(bias).astype(np.float32)
    packed = PackedDense(q.shape[1], bits=pack_bits, q=q, scales=scales, bias=bias,
                         use_bias=bias is not None, name=layer.name)
    packed.build((None, q.shape[0]))
    packed.post = lambda y, layer=layer: layer._activate_and_quantize(y, False)
    return packed


def to_packed_keras(qmodel):
    """An inference model computing `qmodel(x, training=False)` with its ≤ 4-bit Dense
    layers packed (`PackedDense`); other layers are shared with `qmodel`.

    Returns the model; its attribute `packed_layers` lists the names of the packed ones.
    """
    if not isinstance(qmodel, keras.Model):
        raise ValueError(f"to_packed_keras takes a keras.Model, got {type(qmodel).__name__}.")
    packed_names = []

    def clone(layer):
        packed = packed_dense_for(layer)
        if packed is None:
            return layer
        packed_names.append(layer.name)
        return packed

    model = keras.models.clone_model(qmodel, clone_function=clone)
    model.packed_layers = packed_names
    return model
