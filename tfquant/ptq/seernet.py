"""SeerNet (Cao et al., "SeerNet: Predicting Convolutional Neural Network Feature-Map
Sparsity through Low-Bit Quantization", CVPR 2019) as a post-training transformation.

    fast = tfquant.ptq.seernet(model, bits=4)
    fast.predict(x)   # each Conv2D (+BN) + ReLU (+ 2×2 max-pool) computed sparsely

`seernet` folds BatchNormalization into the convolutions, then replaces each eligible
Conv2D with a `SeerNetConv2D` that computes the Conv2D, its ReLU and a following
MaxPooling2D(2, 2) in one op (`tfquant.ops.seer_conv.seer_conv2d`): a `bits`-bit copy
of the kernel (packed weights, per-pixel-block int8 input) predicts the sign of every
output, or which position wins each pooling window, and the float convolution runs only
there. Outputs differ from the model's only where the prediction is wrong, so accuracy
usually moves by tenths of a point; `threshold < 0` computes more outputs to miss fewer.

Inference only (the layers have no gradient) and TF only: LiteRT has no such kernel, so
export the original model.
"""

import keras
import numpy as np

from tfquant.keras.quantized_convolution import activation_name
from tfquant.ops.arguments import check_choice, check_count, check_pair
from tfquant.ops.packed import check_packed_bits, pack_weights, packed_size
from tfquant.ops.seer_conv import SEER_PADDINGS, SEER_POOLS, seer_conv2d, seer_predictor
from tfquant.ptq import _graph as g
from tfquant.ptq.equalization import fold_batch_norm
from tfquant.quantizers.ternary import TernaryQuantizer

_L = keras.layers


@keras.saving.register_keras_serializable(package="tfquant")
class SeerNetConv2D(_L.Layer):
    """SeerNet's Conv2D + bias + ReLU (`pool=2`: + MaxPooling2D(2, 2, "valid")).

    `y = relu(conv2d(x, kernel) + bias)` where a `bits`-bit predictor
    (`seer_predictor(kernel, bits)`) says the output is positive (with the pool, at the
    window's predicted maximum), 0 elsewhere (tfquant/ops/seer_conv.py).

    Args:
      filters, kernel_size, strides, padding: as in `keras.layers.Conv2D`
        (channels_last, no dilation, no groups).
      pool: 1, or 2 for a fused 2×2 max-pool of stride 2.
      bits: the predictor's weight bits, 2 or 4.
      threshold: outputs predicted at or below it are not computed (0: the ReLU's).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", pool=1, bits=4,
                 threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        if filters is None:
            raise ValueError("SeerNetConv2D: filters=None is not supported; allowed: a "
                             "whole number ≥ 1.")
        self.filters = check_count("SeerNetConv2D", "filters", filters, minimum=1)
        self.kernel_size = check_pair("SeerNetConv2D", "kernel_size", kernel_size)
        self.strides = check_pair("SeerNetConv2D", "strides", strides)
        self.padding = check_choice("SeerNetConv2D", "padding", str(padding).lower(),
                                    SEER_PADDINGS)
        self.pool = check_choice("SeerNetConv2D", "pool", pool, SEER_POOLS)
        self.bits = check_packed_bits(bits)
        self.threshold = float(threshold)
        if np.isnan(self.threshold):
            raise ValueError("SeerNetConv2D: threshold=nan is not supported; allowed: a "
                             "number or ±inf.")

    def build(self, input_shape):
        kh, kw = self.kernel_size
        cin = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(kh, kw, cin, self.filters),
                                      initializer="glorot_uniform", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros",
                                    trainable=False)
        self.predictor = self.add_weight(
            name="predictor", shape=(packed_size(kh * kw * cin, self.filters, self.bits),),
            initializer="zeros", dtype="uint8", trainable=False)
        self.predictor_scales = self.add_weight(name="predictor_scales",
                                                shape=(self.filters,), initializer="ones",
                                                trainable=False)

    def call(self, inputs):
        return self.call_counting(inputs)[0]

    def call_counting(self, inputs):
        """(y, computed): the output and how many convolution outputs were computed."""
        return seer_conv2d(inputs, self.kernel, self.bias, self.predictor,
                           self.predictor_scales, self.strides, self.padding, self.pool,
                           self.bits, self.threshold)

    def set_float_weights(self, kernel, bias):
        """Sets the float kernel [kh, kw, cin, filters] and bias, and the predictor made
        from the kernel (`predictor_weights`)."""
        kernel = np.asarray(kernel, np.float32)
        packed, scales = predictor_weights(kernel, self.bits)
        self.kernel.assign(kernel)
        self.bias.assign(np.asarray(bias, np.float32))
        self.predictor.assign(packed)
        self.predictor_scales.assign(scales)

    def compute_output_shape(self, input_shape):
        spatial = []
        for size, k, s in zip(input_shape[1:3], self.kernel_size, self.strides):
            if size is None:
                spatial.append(None)
                continue
            conv = -(-size // s) if self.padding == "same" else (size - k) // s + 1
            spatial.append(conv // self.pool)
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, padding=self.padding, pool=self.pool,
                      bits=self.bits, threshold=self.threshold)
        return config


def predictor_weights(kernel, bits):
    """(packed, per-channel scales) of the predictor of a float kernel [kh, kw, cin, cout].

    4 bits: the symmetric grid `q = round(w / s)`, `s = max|w| / 7` (`seer_predictor`).
    2 bits: ternary, TWN's `q = sign(w)·[|w| > Δ]`, `Δ = 0.7·E|w|`, scale
    `α = mean(|w| where |w| > Δ)` per channel (`TernaryQuantizer`): the max-scaled
    2-bit grid {−1, 0, 1}·max|w| rounds most weights to 0 and cost 10.8 points on the
    benchmark CNN, TWN's 2.5 (BENCHMARKS.md, "SeerNet").
    """
    bits = check_packed_bits(bits)
    if bits == 4:
        return seer_predictor(kernel, 4)
    w = np.asarray(kernel, np.float32).reshape(-1, kernel.shape[-1])
    delta, alpha = TernaryQuantizer(per_channel=True).threshold_and_scale(w, axis=-1)
    q = np.sign(w) * (np.abs(w) > delta.numpy())
    return pack_weights(q.astype(np.int8), 2).numpy(), alpha.numpy().astype(np.float32)


def _is_plain_relu(layer):
    if type(layer) is _L.ReLU:
        return layer.negative_slope == 0 and layer.threshold == 0 and layer.max_value is None
    return type(layer) is _L.Activation and activation_name(layer) == "relu"


def _is_pool2(layer):
    return (type(layer) is _L.MaxPooling2D and tuple(layer.pool_size) == (2, 2)
            and tuple(layer.strides) == (2, 2) and layer.padding == "valid"
            and layer.data_format == "channels_last")


def _why_not_eligible(layer):
    """None if SeerNetConv2D can compute `layer` (a Conv2D), else the reason."""
    if layer.data_format != "channels_last":
        return "data_format is channels_first"
    if tuple(layer.dilation_rate) != (1, 1):
        return f"dilation_rate={tuple(layer.dilation_rate)}"
    if layer.groups != 1:
        return f"groups={layer.groups}"
    return None


def seernet(model, bits=4, threshold=0.0, layers=None, min_input_channels=16):
    """`model` with each Conv2D (+ BatchNormalization) + ReLU (+ MaxPooling2D(2, 2)) as a
    `SeerNetConv2D` (BN folded first, `fold_batch_norm`).

    Args:
      model: a Sequential or Functional Keras model.
      bits: predictor weight bits, 2 or 4. threshold: see `SeerNetConv2D`.
      layers: names of the Conv2D layers to convert (default: every eligible one).
      min_input_channels: convolutions reading fewer channels stay dense unless named
        in `layers` (the sparse kernel reads 16 channels at a time; on a 1-channel
        first layer it was 4× slower than TF's, BENCHMARKS.md "SeerNet").
    Returns:
      A new Functional model; the original is unchanged.
    """
    bits = check_packed_bits(bits)
    folded = fold_batch_norm(model)
    graph = g.graph_of(folded)
    wanted = None if layers is None else set(layers)
    replace, skip, refused = {}, set(), []
    for node in graph.nodes:
        layer = node.operation
        if type(layer) is not _L.Conv2D or (wanted is not None and layer.name not in wanted):
            continue
        reason = _why_not_eligible(layer) or (
            "it is shared by several calls" if graph.is_shared(layer) else None)
        if reason is None and wanted is None and layer.input.shape[-1] < min_input_channels:
            reason = (f"{layer.input.shape[-1]} input channels < min_input_channels="
                      f"{min_input_channels}")
        tail = node
        if reason is None and activation_name(layer) != "relu":
            relu = graph.sole_consumer(node) if activation_name(layer) == "linear" else None
            if relu is None or not _is_plain_relu(relu.operation) \
                    or graph.is_shared(relu.operation):
                reason = "no ReLU follows it"
            else:
                tail = relu
        if reason is not None:
            refused.append(f"{layer.name} ({reason})")
            continue
        pool = graph.sole_consumer(tail)
        pool = pool if pool is not None and _is_pool2(pool.operation) \
            and not graph.is_shared(pool.operation) else None
        if tail is not node:
            skip.add(id(tail.operation))
        if pool is not None:
            skip.add(id(pool.operation))
        new = SeerNetConv2D(layer.filters, layer.kernel_size, layer.strides, layer.padding,
                            pool=2 if pool is not None else 1, bits=bits, threshold=threshold,
                            name=layer.name)
        replace[id(layer)] = (new, _setter(layer))
    if wanted is not None:
        missing = wanted - {layer.name for layer in folded.layers}
        if missing:
            raise ValueError(f"seernet: no layer named {sorted(missing)} in {model.name!r}.")
    if not replace:
        raise ValueError(
            f"seernet: {model.name!r} has no Conv2D followed by a ReLU that SeerNetConv2D "
            "can compute" + (f"; refused: {', '.join(refused)}" if refused else "") + ".")
    return g.rebuild(folded, replace, skip, name=f"{model.name}_seernet")


def _setter(conv):
    def setter(new_layer):
        bias = g.get_bias(conv)
        new_layer.set_float_weights(g.get_kernel(conv),
                                    np.zeros(conv.filters, np.float32) if bias is None else bias)
    return setter
