"""`QuantizedConvolution`: a Dense or convolution layer with fake-quantized kernels,
optionally with the following BatchNormalization folded in.

BN folding follows Jacob et al. 2018 (and TF contrib's `fold_batch_norms` with freeze):
the quantized kernel is always the deployed one, `w·γ/σ_mv`, and a training step runs one
convolution. Before the freeze, training uses batch statistics of the float layer's output
up to the kernel's quantization error (ARCHITECTURE.md §3): the one convolution runs with
the quantized kernel rescaled by `σ_mv/γ`, `x' = conv(x, q(w·γ/σ_mv)·σ_mv/γ)`, and
TensorFlow's fused batch norm in training mode makes `γ·(x' − mean x')/sqrt(var x' + ε) + β`
and the batch statistics that update the moving ones — conv→BN in training mode up to
quantization, at the cost of float training's BN. After the freeze, and always at
inference, the layer is `conv(x, q(w·γ/σ_mv)) + β + γ(b − μ_mv)/σ_mv`: exactly what the
exported integer model computes.
"""
import keras
import tensorflow as tf
from keras import ops

from tfquant.keras.activation_fake_quant import add_switches, apply_switch
from tfquant.keras.kernel_layout import (
    flat_kernel,
    kernel_kind,
    kernel_layout,
    kernel_names,
    output_axis,
    scale_output_channels,
)
from tfquant.keras.dtypes import float32_math, to_compute_dtype, to_float32
from tfquant.keras.integer_bias import deployed_step, input_quantizer_slot, integer_bias
from tfquant.keras.slots import QuantizerSlot
from tfquant.quantizers.base import (
    deserialize_quantizer,
    export_weight_grid,
    serialize_quantizer,
)
from tfquant.quantizers.export_graph import export_fake_quant
from tfquant.quantizers.uniform import MinMaxWeightQuantizer

# Activations that TFLite fuses into CONV_2D/FULLY_CONNECTED/..., so that no
# quantizer is needed between the layer and the activation.
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


def activation_name(layer):
    """The name of a layer's `activation` attribute ("linear" when it has none)."""
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return keras.activations.serialize(activation) if not isinstance(activation, str) else activation


def _quantize_kernel(kernel, quantizer, kind, training, weights, grid=None):
    """Quantizes `kernel` (depthwise: with its channels flattened); `grid`: the integer
    grid the export stores it on (see tfquant.export.integer_grid)."""
    flat = flat_kernel(kernel, kind)
    quantized = quantizer(flat, training, weights)
    if grid is not None:
        limit = grid.scales * float(2 ** (grid.num_bits - 1) - 1)
        quantized = export_fake_quant(quantized, -limit, limit, grid.num_bits, True,
                                      output_axis(kind))
    return ops.reshape(quantized, ops.shape(kernel)) if kind == "depthwise" else quantized


def _replicas_in_sync():
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def batch_moments(x, axes):
    """Mean and variance of `x` over `axes` — over the global batch under tf.distribute
    (the sums of all replicas are added up), so every replica folds the same batch
    statistics and keeps the same moving statistics (synchronized BN)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return ops.moments(x, axes=axes)
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    total, squares, count = context.all_reduce(
        tf.distribute.ReduceOp.SUM,
        [tf.reduce_sum(x, axis=axes), tf.reduce_sum(tf.square(x), axis=axes), count])
    mean = total / count
    return mean, tf.maximum(squares / count - tf.square(mean), 0.0)


def normalize_with_batch_statistics(x, gamma, beta, epsilon, moments=None):
    """BatchNormalization in training mode over the last axis of `x`:
    `γ·(x − mean)/sqrt(var + ε) + β`, and the batch (mean, biased variance).

    `moments` given (synchronized under tf.distribute): the normalization from them.
    Otherwise TensorFlow's FusedBatchNormV3, which reads `x` once for both statistics and
    has a fused gradient (its variance output is Bessel-corrected: undone here, so the
    moving statistics are those of `ops.moments`, as in Keras's BatchNormalization).
    """
    if moments is not None:
        mean, variance = moments
        return (x - mean) * (gamma * tf.math.rsqrt(variance + epsilon)) + beta, mean, variance
    channels = x.shape[-1]
    shape = tf.shape(x)
    # The fused op takes NHWC: any rank as [rows, 1, 1, channels].
    images = x if len(x.shape) == 4 else tf.reshape(x, [-1, 1, 1, channels])
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        images, gamma, beta, epsilon=epsilon, is_training=True)
    count = tf.cast(tf.size(images) // channels, x.dtype)
    variance = variance * tf.math.divide_no_nan(count - 1.0, count)
    return (y if len(x.shape) == 4 else tf.reshape(y, shape)), mean, variance


@keras.saving.register_keras_serializable(package="tfquant")
class QuantizedConvolution(keras.layers.Wrapper):
    """Fake-quantizes the kernel(s) of a Dense/Conv layer, folds a BatchNormalization.

    Args:
      layer: the float layer (Dense, Conv1D/2D/3D, DepthwiseConv1D/2D,
        SeparableConv1D/2D, Conv1D/2D/3DTranspose), `channels_last`.
      batch_norm: a BatchNormalization over the layer's output channels to fold in.
      weight_quantizer: quantizer of the kernel (of both kernels of a separable layer);
        default per-channel 8-bit `MinMaxWeightQuantizer` on the output-channel axis.
      output_quantizer: quantizer of the output (after the activation), or None when a
        following layer quantizes it (e.g. a ReLU that TFLite fuses into this layer).
      intermediate_quantizer: for separable layers, the quantizer of the depthwise output
        (a real tensor between DEPTHWISE_CONV_2D and CONV_2D in TFLite).
      pre_activation_quantizer: for an activation TFLite cannot fuse (sigmoid, tanh, ...),
        the quantizer of its input.
      integer_bias: round the (folded) bias to the int32 grid LiteRT stores it on, step
        input step × weight step (`tfquant.keras.integer_bias`), once BN uses moving
        statistics and at inference; needs the input to come from an activation
        quantizer (through pooling, reshapes, padding). Dense, Conv and DepthwiseConv.
    """

    def __init__(self, layer, batch_norm=None, weight_quantizer=None, output_quantizer=None,
                 intermediate_quantizer=None, pre_activation_quantizer=None,
                 quantize_switch=False, integer_bias=True, **kwargs):
        kind = kernel_kind(layer)
        if kind is None:
            raise ValueError(
                f"QuantizedConvolution wraps Dense and convolution layers; got "
                f"{layer.name!r} ({type(layer).__name__})."
            )
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) uses "
                f"data_format={layer.data_format!r}; TFLite kernels are channels_last. "
                "Rebuild the model with data_format='channels_last'."
            )
        if getattr(layer, "groups", 1) != 1:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has groups={layer.groups}; "
                "grouped convolutions do not convert to TFLite integer kernels."
            )
        kwargs.setdefault("name", layer.name)
        kwargs.setdefault("dtype", layer.dtype_policy)  # its output dtype is the layer's
        super().__init__(layer, **kwargs)
        self.quantize_switch = bool(quantize_switch)
        self.integer_bias = bool(integer_bias)
        self.weights_quantize_enabled = None
        self.activations_quantize_enabled = None
        self.kind = kind
        self.batch_norm = batch_norm
        self.weight_quantizer = deserialize_quantizer(weight_quantizer) or MinMaxWeightQuantizer(
            8, per_channel=True, axis=output_axis(kind))
        self.output_quantizer = deserialize_quantizer(output_quantizer)
        self.intermediate_quantizer = deserialize_quantizer(intermediate_quantizer)
        self.pre_activation_quantizer = deserialize_quantizer(pre_activation_quantizer)
        self.activation = activation_name(layer)
        if kind == "separable" and self.intermediate_quantizer is None:
            raise ValueError(
                f"Separable layer {layer.name!r} needs an intermediate_quantizer for the "
                "tensor between its depthwise and pointwise convolutions."
            )
        if self.activation not in FUSABLE_ACTIVATIONS and self.pre_activation_quantizer is None:
            raise ValueError(
                f"Layer {layer.name!r} has activation {self.activation!r}, which TFLite does "
                "not fuse: give a pre_activation_quantizer for its input."
            )

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(output_shape)
        self.kernel_variables = {}
        for name in self.kernel_names():
            shape = tuple(getattr(self.layer, name).shape)
            if name == "depthwise_kernel" or self.kind == "depthwise":
                # The quantizer sees the kernel with [in, multiplier] flattened into one
                # axis of output channels (see _quantize_kernel).
                shape = shape[:-2] + (shape[-2] * shape[-1],)
            self.kernel_variables[name] = self.weight_quantizer.build(shape, name, self)
        self._bn_frozen = None
        if self.batch_norm is not None:
            # 1.0 once FreezeBatchNorm (or freeze_batch_norm) has switched the layer to
            # moving statistics; a variable so it is saved and read inside tf.function.
            self._bn_frozen = self.add_weight(
                name="batch_norm_frozen", shape=(), initializer="zeros", trainable=False)
        self.intermediate_variables = {}
        if self.intermediate_quantizer is not None:
            self.intermediate_variables = self.intermediate_quantizer.build(
                output_shape, "intermediate", self)
        self.pre_activation_variables = {}
        if self.pre_activation_quantizer is not None:
            self.pre_activation_variables = self.pre_activation_quantizer.build(
                output_shape, "pre_activation", self)
        self.output_variables = {}
        if self.output_quantizer is not None:
            self.output_variables = self.output_quantizer.build(output_shape, "output", self)
        if self.quantize_switch:  # last: the order a switch added after build has too
            self._make_switches()
        self.built = True

    def kernel_names(self):
        return kernel_names(self.layer)

    # -- the float math of each kind, on given kernels -------------------------------

    def convolve(self, inputs, kernels, training, quantized):
        layer = self.layer
        if self.kind == "dense":
            return ops.matmul(inputs, kernels["kernel"])
        if self.kind == "conv":
            return layer.convolution_op(inputs, kernels["kernel"])
        if self.kind == "depthwise":
            return ops.depthwise_conv(inputs, kernels["kernel"], strides=layer.strides,
                                      padding=layer.padding, dilation_rate=layer.dilation_rate,
                                      data_format=layer.data_format)
        if self.kind == "transpose":
            return ops.conv_transpose(inputs, kernels["kernel"], strides=list(layer.strides),
                                      padding=layer.padding, output_padding=layer.output_padding,
                                      dilation_rate=layer.dilation_rate,
                                      data_format=layer.data_format)
        depthwise = ops.depthwise_conv(inputs, kernels["depthwise_kernel"],
                                       strides=layer.strides, padding=layer.padding,
                                       dilation_rate=layer.dilation_rate,
                                       data_format=layer.data_format)
        if quantized:
            depthwise = apply_switch(
                self.activations_quantize_enabled,
                self.intermediate_quantizer(depthwise, training, self.intermediate_variables),
                depthwise)
        return ops.conv(depthwise, kernels["pointwise_kernel"], strides=1, padding="valid",
                        data_format=layer.data_format)

    def _float_kernels(self):
        return {name: getattr(self.layer, name) for name in self.kernel_names()}

    def _quantized_kernels(self, kernels, training):
        quantized = {}
        for name, kernel in kernels.items():
            grid = None if training else export_weight_grid(self.name, name)
            values = _quantize_kernel(kernel, self.weight_quantizer, self.kernel_layout(name),
                                      training, self.kernel_variables[name], grid)
            quantized[name] = apply_switch(self.weights_quantize_enabled, values, kernel)
        return quantized

    def kernel_layout(self, name):
        return kernel_layout(self.kind, name)

    def folded_kernel_name(self):
        return "pointwise_kernel" if self.kind == "separable" else "kernel"

    def layer_bias(self):
        if getattr(self.layer, "use_bias", False) and self.layer.bias is not None:
            return self.layer.bias
        return None

    # -- call --------------------------------------------------------------------------

    def call(self, inputs, training=None):
        # Under a mixed-precision policy the whole layer computes in float32 (the
        # quantizers are float32-only, and the fake-quantized kernel must hold the exact
        # values the integer export stores); the output is cast to the compute dtype.
        with float32_math():
            outputs = self._call_float32(to_float32(inputs), bool(training))
        return to_compute_dtype(outputs, self)

    def _call_float32(self, inputs, training):
        if self.batch_norm is None:
            kernels = self._quantized_kernels(self._float_kernels(), training)
            outputs = self.convolve(inputs, kernels, training, quantized=True)
            bias = self.layer_bias()
            if bias is not None:
                outputs = outputs + self._deployed_bias(bias, self._float_kernels())
            return self._activate_and_quantize(outputs, training)
        folded, folded_bias = self.folded_kernels_and_bias()
        kernels = self._quantized_kernels(folded, training)
        if not training:
            outputs = self.convolve(inputs, kernels, training, quantized=True)
            return self._activate_and_quantize(
                outputs + self._deployed_bias(folded_bias, folded), training)
        frozen = tf.convert_to_tensor(self._bn_frozen) > 0.5
        # One convolution either way, outside tf.cond (XLA ran a convolution inside it
        # 15x slower): with the deployed kernel once BN is frozen, else with it divided
        # by the fold factor, which gives the float layer's output.
        factor, known = self._known_fold_factor()
        outputs = self.convolve(inputs, self._training_kernels(kernels, factor, frozen),
                                training, quantized=True)
        # Under tf.distribute the batch statistics are summed across replicas, a
        # synchronization point that may not sit inside tf.cond: they are computed
        # before it (also after the freeze, where they go unused).
        moments = (batch_moments(outputs, list(range(len(outputs.shape) - 1)))
                   if _replicas_in_sync() > 1 else None)
        outputs = tf.cond(frozen,
                          lambda: outputs + self._deployed_bias(folded_bias, folded),
                          lambda: self._with_batch_statistics(outputs, known, moments))
        return self._activate_and_quantize(outputs, training)

    def batch_norm_parameters(self):
        bn = self.batch_norm
        gamma = bn.gamma if bn.scale else ops.ones_like(bn.moving_mean)
        beta = bn.beta if bn.center else ops.zeros_like(bn.moving_mean)
        return gamma, beta

    def fold_factor(self):
        """γ/σ_mv per output channel of the folded BN (what the deployed kernel of
        `folded_kernel_name()` is multiplied by), or None without one."""
        if self.batch_norm is None:
            return None
        gamma, _ = self.batch_norm_parameters()
        return gamma / self._moving_sigma()

    def _moving_sigma(self):
        bn = self.batch_norm
        return ops.sqrt(ops.convert_to_tensor(bn.moving_variance) + bn.epsilon)

    def _folded_kernels(self, gamma, sigma_mv):
        kernels = self._float_kernels()
        name = self.folded_kernel_name()
        kernels[name] = scale_output_channels(kernels[name], gamma / sigma_mv,
                                              self.kernel_layout(name))
        return kernels

    def _deployed_bias(self, bias, float_kernels):
        """`bias` on LiteRT's int32 grid when `integer_bias` can find both steps."""
        if not self.integer_bias or self.kind not in ("dense", "conv", "depthwise"):
            return bias
        source = input_quantizer_slot(self)
        if source is None:
            return bias
        input_step = deployed_step(source.quantizer, tf.zeros([1, 1]), source.variables,
                                   False)
        name = self.folded_kernel_name()
        weight_steps = deployed_step(self.weight_quantizer,
                                     flat_kernel(float_kernels[name], self.kind),
                                     self.kernel_variables[name], source.quantizer.num_bits < 8)
        if input_step is None or weight_steps is None:
            return bias
        rounded = integer_bias(bias, input_step, weight_steps)
        return apply_switch(self.weights_quantize_enabled, rounded, bias)

    def _known_fold_factor(self):
        """(γ/σ_mv with 1 where γ = 0, where γ ≠ 0): a channel with γ = 0 has no
        statistics in the deployed kernel's output."""
        factor = self.fold_factor()
        known = ops.abs(factor) > 1e-30
        return ops.where(known, factor, ops.ones_like(factor)), known

    def _training_kernels(self, kernels, factor, frozen):
        """The quantized deployed kernels, with the folded one divided by the fold factor
        unless `frozen`: convolved, the float layer's output (bias aside) up to the
        kernel's quantization error, whose batch statistics BN trains with. `factor`: the
        first of `_known_fold_factor()`."""
        name = self.folded_kernel_name()
        selected = dict(kernels)
        rescaled = scale_output_channels(kernels[name], 1.0 / factor, self.kernel_layout(name))
        selected[name] = tf.where(frozen, kernels[name], rescaled)
        return selected

    def _with_batch_statistics(self, float_outputs, known, moments=None):
        """BN in training mode on the float layer's output; updates the moving statistics
        with its batch statistics where `known` (γ ≠ 0, see `_known_fold_factor`)."""
        bn = self.batch_norm
        gamma, beta = self.batch_norm_parameters()
        outputs, mean, variance = normalize_with_batch_statistics(
            float_outputs, gamma, beta, bn.epsilon, moments)
        bias = self.layer_bias()
        batch_mean = ops.where(known, mean + (0.0 if bias is None else bias), bn.moving_mean)
        batch_variance = ops.where(known, variance, bn.moving_variance)
        momentum = bn.momentum
        bn.moving_mean.assign(bn.moving_mean * momentum + batch_mean * (1.0 - momentum))
        bn.moving_variance.assign(
            bn.moving_variance * momentum + batch_variance * (1.0 - momentum))
        return outputs

    def _activate_and_quantize(self, outputs, training):
        switch = self.activations_quantize_enabled
        if self.pre_activation_quantizer is not None:
            outputs = apply_switch(switch, self.pre_activation_quantizer(
                outputs, training, self.pre_activation_variables), outputs)
        if self.activation != "linear":
            outputs = self.layer.activation(outputs)
        if self.output_quantizer is not None:
            outputs = apply_switch(switch, self.output_quantizer(
                outputs, training, self.output_variables), outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["batch_norm"] = (keras.saving.serialize_keras_object(self.batch_norm)
                                if self.batch_norm is not None else None)
        config["weight_quantizer"] = serialize_quantizer(self.weight_quantizer)
        config["output_quantizer"] = serialize_quantizer(self.output_quantizer)
        config["intermediate_quantizer"] = serialize_quantizer(self.intermediate_quantizer)
        config["pre_activation_quantizer"] = serialize_quantizer(self.pre_activation_quantizer)
        config["quantize_switch"] = self.quantize_switch
        config["integer_bias"] = self.integer_bias
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(
            config["layer"], custom_objects=custom_objects)
        if config.get("batch_norm") is not None:
            config["batch_norm"] = keras.saving.deserialize_keras_object(
                config["batch_norm"], custom_objects=custom_objects)
        return cls(**config)

    # -- used by callbacks and export ----------------------------------------------------

    def quantizer_slots(self):
        """The kernel quantizer once per kernel, then the activation quantizers."""
        slots = [QuantizerSlot(self, "weight_quantizer", f"weights:{name}", variables)
                 for name, variables in self.kernel_variables.items()]
        for role in ("intermediate", "pre_activation", "output"):
            if getattr(self, f"{role}_quantizer") is not None:
                slots.append(QuantizerSlot(self, f"{role}_quantizer", role,
                                           getattr(self, f"{role}_variables")))
        return slots

    @property
    def batch_norm_frozen(self):
        """True once the folded BN uses moving statistics in training too."""
        return self._bn_frozen is not None and float(self._bn_frozen.numpy()) > 0.5

    def freeze_batch_norm(self, frozen=True):
        """Switches the folded BN to moving statistics (and stops updating them)."""
        if self._bn_frozen is not None:
            self._bn_frozen.assign(1.0 if frozen else 0.0)

    def _make_switches(self):
        # Switches (1.0 = on) read inside the graph: at 0 the kernels (resp. the
        # activations: intermediate, pre-activation and output tensors) are used in float,
        # while their quantizers still run and observe. Made by `build` when the config
        # has quantize_switch=True, or by the first set_quantize_enabled (QuantizationDelay,
        # TwoStageQuantization); export always quantizes.
        self.weights_quantize_enabled = self.add_weight(
            name="weights_quantize_enabled", shape=(), initializer="ones", trainable=False)
        self.activations_quantize_enabled = self.add_weight(
            name="activations_quantize_enabled", shape=(), initializer="ones",
            trainable=False)

    def set_quantize_enabled(self, weights=None, activations=None):
        """Turns fake quantization of the kernels and/or the activations on or off
        (None: leave that switch as it is). Returns True when the switch variables were
        created now (traced functions must be retraced)."""
        created = False
        if self.weights_quantize_enabled is None:
            if not (weights is False or activations is False):
                return False  # no switches: always quantized
            created = add_switches(self)
        if weights is not None:
            self.weights_quantize_enabled.assign(1.0 if weights else 0.0)
        if activations is not None:
            self.activations_quantize_enabled.assign(1.0 if activations else 0.0)
        return created

    def deployed_kernels(self):
        """{kernel name: (quantized values, output-channel axis)} as the export sees them,
        BN folded in; a depthwise kernel with its channels flattened."""
        if self.batch_norm is None:
            kernels = self._float_kernels()
        else:
            gamma, _ = self.batch_norm_parameters()
            kernels = self._folded_kernels(gamma, self._moving_sigma())
        result = {}
        for name, kernel in kernels.items():
            kind = self.kernel_layout(name)
            flat = flat_kernel(kernel, kind)
            values = self.weight_quantizer(flat, False, self.kernel_variables[name])
            result[name] = (ops.convert_to_numpy(values), output_axis(kind))
        return result

    def folded_kernels_and_bias(self):
        """The deployed float kernel(s) and bias, BN folded in (before quantization)."""
        kernels = self._float_kernels()
        bias = self.layer_bias()
        if self.batch_norm is None:
            return kernels, bias
        gamma, beta = self.batch_norm_parameters()
        mean = ops.convert_to_tensor(self.batch_norm.moving_mean)
        sigma_mv = self._moving_sigma()
        shift = mean if bias is None else mean - bias
        return self._folded_kernels(gamma, sigma_mv), beta - gamma * shift / sigma_mv
