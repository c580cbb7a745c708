"""Packed 2/4-bit inference models: `PackedDense`, `PackedConv2D` and `to_packed_keras`.

`to_packed_keras(qmodel)` turns a QAT model from `tfquant.quantize_model` into an
inference model whose Dense and Conv2D layers with ≤ 4-bit weights run
`tfquant.ops.packed_matmul` on packed weights (cc_ops/kernels/packed.h), a Conv2D on
its im2col patches; every other layer (depthwise, separable, transposed, 1-D/3-D
convolutions among them) is the QAT model's own layer, called with `training=False`.

Numbers. The packed weights are exactly the QAT model's deployed weights (`q · s`, BN
folded), so the only difference is that `packed_matmul` quantizes each row of its input
dynamically to int8 (`s_x = max|x_row| / 127`): per output of one layer
`|y_packed − y_qat| ≤ 0.5 · s_x · Σ_k |w[k, n]|` (plus float rounding). The layer's
activation and output quantizer then run as in the QAT model; an output quantizer
absorbs most of that error or moves an output by one of its steps. Tested tolerance
(tests/test_packed_export.py, 3-layer MLP, 2 and 4 bits): max |Δ| ≤ 5 % and mean |Δ|
≤ 1 % of max |output|, argmax agreement ≥ 95 %.

A packed layer carries the QAT layer's pre-activation and output quantizers (their
configs and their ranges), so the inference model saves and loads as `.keras` like any
other and computes the same after loading.
"""

import keras
import numpy as np
import tensorflow as tf

from tfquant.quantizers.base import deserialize_quantizer, serialize_quantizer

from tfquant.ops.arguments import check_pair
from tfquant.ops.packed import GROUP_SIZES, check_packed_bits, pack_weights, packed_matmul


class PackedMatmulLayer(keras.layers.Layer):
    """What `PackedDense` and `PackedConv2D` share: the non-trainable `packed`, `scales`
    and `bias` weights of a K×`units` packed matmul, and
    `y = out_q(activation(pre_q(rows @ (q · scales) + bias)))`, where `pre_q` and `out_q`
    are the optional pre-activation and output quantizers (inference mode).

    q: int weights [K, N] (any shape with N last; optional: else `set_weights` later),
    scales: [groups, N], bias: [N] or None.
    """

    def __init__(self, units, bits, group_size, q, scales, bias, use_bias, activation,
                 pre_activation_quantizer=None, output_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.pre_activation_quantizer = deserialize_quantizer(pre_activation_quantizer)
        self.output_quantizer = deserialize_quantizer(output_quantizer)
        self.units = int(units)
        self.bits = check_packed_bits(bits)
        self.group_size = int(group_size)
        self.use_bias = bool(use_bias) if bias is None else True
        self.activation = keras.activations.get(activation)
        self._init_values = (q, scales, bias)

    def build_packed(self, k):
        """Adds the weights for K = k input features (called by the subclass's build)."""
        q, scales, bias = self._init_values
        n = self.units
        if self.group_size not in GROUP_SIZES or (self.group_size and k % self.group_size):
            raise ValueError(f"{self.name}: group_size={self.group_size} with K={k}; allowed: "
                             "0 (per channel) or 32, 64, 128 dividing K.")
        groups = 1 if self.group_size == 0 else k // self.group_size
        q = np.zeros((k, n), np.int8) if q is None else np.asarray(q)
        if q.size != k * n or q.shape[-1] != n:  # a conv kernel [kh, kw, C_in, N] is fine
            raise ValueError(f"{self.name}: q has shape {q.shape}, expected {(k, n)}")
        packed = pack_weights(q.reshape(k, n), self.bits).numpy()
        self.packed = self.add_weight(name="packed", shape=packed.shape, dtype="uint8",
                                      trainable=False, initializer="zeros")
        self.packed.assign(packed)
        self.scales = self.add_weight(name="scales", shape=(groups, n), trainable=False,
                                      initializer="ones")
        if scales is not None:
            self.scales.assign(np.asarray(scales, np.float32).reshape(groups, n))
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(n,), trainable=False,
                                        initializer="zeros")
            if bias is not None:
                self.bias.assign(np.asarray(bias, np.float32))
        self._init_values = (None, None, None)
        self.k = k
        self.pre_activation_variables, self.output_variables = {}, {}
        if self.pre_activation_quantizer is not None:
            self.pre_activation_variables = self.pre_activation_quantizer.build(
                (None, n), "pre_activation", self)
        if self.output_quantizer is not None:
            self.output_variables = self.output_quantizer.build((None, n), "output", self)

    def matmul_and_activate(self, rows):
        y = packed_matmul(rows, tf.convert_to_tensor(self.packed),
                          tf.convert_to_tensor(self.scales),
                          None if self.bias is None else tf.convert_to_tensor(self.bias),
                          bits=self.bits, n=self.units, group_size=self.group_size)
        if self.pre_activation_quantizer is not None:
            y = self.pre_activation_quantizer(y, False, self.pre_activation_variables)
        y = self.activation(y)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, False, self.output_variables)
        return y

    def get_config(self):
        config = super().get_config()
        config.update(bits=self.bits, group_size=self.group_size, use_bias=self.use_bias,
                      activation=keras.activations.serialize(self.activation),
                      pre_activation_quantizer=serialize_quantizer(self.pre_activation_quantizer),
                      output_quantizer=serialize_quantizer(self.output_quantizer))
        return config


@keras.saving.register_keras_serializable(package="tfquant")
class PackedDense(PackedMatmulLayer):
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
        super().__init__(units, bits, group_size, q, scales, bias, use_bias, activation,
                         **kwargs)

    def build(self, input_shape):
        self.build_packed(int(input_shape[-1]))

    def call(self, inputs):
        return self.matmul_and_activate(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


@keras.saving.register_keras_serializable(package="tfquant")
class PackedConv2D(PackedMatmulLayer):
    """2-D convolution inference layer with packed signed 2/4-bit weights (im2col).

    `y = activation(conv2d(x, q · scales) + bias)`, channels_last, computed as one
    `tfquant.ops.packed_matmul` whose rows are the input patches
    (`tf.image.extract_patches`, flattened in (row, column, channel) order, the order of
    a Keras kernel `[kh, kw, C_in, filters]` reshaped to `[kh·kw·C_in, filters]`); a
    1×1 kernel with stride 1 multiplies the pixels directly. Each patch is quantized to
    int8 on its own (dynamic, per row).

    Args:
      filters: output channels N. kernel_size, strides, dilation_rate: an int or a pair
        (strides and dilation above 1 not both, as in `keras.layers.Conv2D`).
      padding: "valid" or "same". bits: 2 or 4. group_size: 0 (per channel), 32, 64, 128
        dividing kh·kw·C_in.
      q: int weights `[kh·kw·C_in, N]` or `[kh, kw, C_in, N]` (optional). scales:
        [groups, N]. bias: [N] or None. activation: a Keras activation after the bias.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 bits=4, group_size=0, q=None, scales=None, bias=None, use_bias=True,
                 activation=None, **kwargs):
        super().__init__(filters, bits, group_size, q, scales, bias, use_bias, activation,
                         **kwargs)
        self.kernel_size = check_pair("PackedConv2D", "kernel_size", kernel_size)
        self.strides = check_pair("PackedConv2D", "strides", strides)
        self.dilation_rate = check_pair("PackedConv2D", "dilation_rate", dilation_rate)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"strides={self.strides} and dilation_rate={self.dilation_rate}: "
                             "one of them must be 1.")
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding={padding!r}; allowed: 'valid', 'same'.")

    def build(self, input_shape):
        self.build_packed(self.kernel_size[0] * self.kernel_size[1] * int(input_shape[-1]))

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        if self.kernel_size == (1, 1) and self.strides == (1, 1):
            patches = x
        else:
            patches = tf.image.extract_patches(
                x, sizes=[1, *self.kernel_size, 1], strides=[1, *self.strides, 1],
                rates=[1, *self.dilation_rate, 1], padding=self.padding.upper())
        return self.matmul_and_activate(patches)

    def compute_output_shape(self, input_shape):
        spatial = []
        for size, k, s, d in zip(input_shape[1:3], self.kernel_size, self.strides,
                                 self.dilation_rate):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append(-(-(size - (k - 1) * d) // s))
        return (input_shape[0], *spatial, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.units, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding, dilation_rate=self.dilation_rate)
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
            scales = np.broadcast_to(scale.reshape(1, -1), (1, values.shape[-1]))
            scales = scales.astype(np.float32)
            return q.astype(np.int8), np.ascontiguousarray(scales)
    return None


def packed_layer_for(layer):
    """A `PackedDense` or `PackedConv2D` equal to a QAT Dense or Conv2D wrapper
    (`QuantizedConvolution`), or None when it is another layer or its weights are not a
    ≤ 4-bit uniform grid."""
    from tfquant.keras.quantized_convolution import QuantizedConvolution

    if not isinstance(layer, QuantizedConvolution):
        return None
    conv2d = layer.kind == "conv" and isinstance(layer.layer, keras.layers.Conv2D)
    if layer.kind != "dense" and not conv2d:
        return None
    bits = getattr(layer.weight_quantizer, "num_bits", None)
    if not isinstance(bits, int) or bits > 4:
        return None
    (values, axis), = layer.deployed_kernels().values()
    if axis != -1 or np.ndim(values) != (4 if conv2d else 2):
        return None
    grid = integer_grid(values, bits)
    if grid is None:
        return None
    q, scales = grid
    q = q.reshape(-1, q.shape[-1])
    _, bias = layer.folded_kernels_and_bias()
    bias = None if bias is None else keras.ops.convert_to_numpy(bias).astype(np.float32)
    common = dict(bits=2 if bits == 2 else 4, q=q, scales=scales, bias=bias,
                  use_bias=bias is not None, name=layer.name, activation=layer.activation,
                  pre_activation_quantizer=serialize_quantizer(layer.pre_activation_quantizer),
                  output_quantizer=serialize_quantizer(layer.output_quantizer))
    if conv2d:
        inner = layer.layer
        packed = PackedConv2D(q.shape[1], inner.kernel_size, strides=inner.strides,
                              padding=inner.padding, dilation_rate=inner.dilation_rate,
                              **common)
        packed.build((None, None, None, np.shape(values)[2]))
    else:
        packed = PackedDense(q.shape[1], **common)
        packed.build((None, q.shape[0]))
    for packed_vars, qat_vars in ((packed.pre_activation_variables,
                                   layer.pre_activation_variables),
                                  (packed.output_variables, layer.output_variables)):
        for key, variable in packed_vars.items():
            variable.assign(qat_vars[key])
    return packed


def to_packed_keras(qmodel):
    """An inference model computing `qmodel(x, training=False)` with its ≤ 4-bit Dense
    and Conv2D layers packed (`PackedDense`, `PackedConv2D`); other layers are shared
    with `qmodel`.

    Returns the model; its attribute `packed_layers` lists the names of the packed ones.
    """
    if not isinstance(qmodel, keras.Model):
        raise ValueError(f"to_packed_keras takes a keras.Model, got {type(qmodel).__name__}.")
    packed_names = []

    def clone(layer):
        packed = packed_layer_for(layer)
        if packed is None:
            return layer
        packed_names.append(layer.name)
        return packed

    model = keras.models.clone_model(qmodel, clone_function=clone)
    model.packed_layers = packed_names
    return model
