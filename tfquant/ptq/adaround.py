"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"): per layer, learn whether each weight rounds up or down.

Soft weights `W̃ = s·clip(⌊W/s⌋ + h(V), −Q, Q)` with the rectified sigmoid
`h(V) = clip(σ(V)·1.2 − 0.1, 0, 1)`, V initialised so that h equals the fractional part
of W/s (W̃ = W inside the clip). Minimise the layer's output reconstruction error
`E ||W̃x̂ − Wx||²` (summed over output channels, averaged over samples and positions),
where x is the layer's input in the float model and x̂ its input in the quantized model
with the earlier layers already rounded (the paper's asymmetric reconstruction, which
lets a layer make up for the error upstream), plus `λ·Σ(1 − |2h − 1|^β)`, which drives
h to 0 or 1: λ = 0.01, no regulariser for the first 20 % of the iterations, then β
decays linearly from 20 to 2 (Adam). Finally the soft rounding is made hard:
`W_q = s·clip(⌊W/s⌋ + [h(V) ≥ ½], −Q, Q)` (`h ≥ ½ ⇔ V ≥ 0`).

The paper runs 10k iterations per layer at Adam's default step 1e-3; here the default is
2000 iterations at 1e-2, which drives h to 0/1 within that budget on CPU.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfquant.keras.kernel_layout import flat_kernel_and_axis
from tfquant.ptq import _sites as s
from tfquant.quantizers.calibration import weight_clip


def _rectified_sigmoid(v):
    return tf.clip_by_value(tf.sigmoid(v) * 1.2 - 0.1, 0.0, 1.0)


@dataclasses.dataclass
class AdaRoundResult:
    """codes: the learned integer codes. nearest_error / adaround_error: the
    reconstruction error `E ||W_q x̂ − Wx||²` of round-to-nearest and of the learned
    hard rounding over all given samples. losses: the reconstruction loss of the soft
    weights on each iteration's batch. flipped: the fraction of weights rounded
    differently from round-to-nearest (set by `adaround_wrapper`)."""

    codes: np.ndarray
    nearest_error: float
    adaround_error: float
    losses: np.ndarray
    flipped: float = None


def adaround_kernel(convolve, kernel, inputs, num_bits, scale, target_inputs=None,
                    iterations=2000, batch_size=32, learning_rate=1e-2, reg_lambda=0.01,
                    beta_range=(20.0, 2.0), warmup=0.2, seed=0):
    """Learns integer codes for `kernel` (numpy, any layout) with step `scale`
    (broadcastable to the kernel). `convolve(x, kernel)` computes the layer's linear
    part; `inputs` (numpy, first axis = samples) are what the rounded layer sees,
    `target_inputs` (default `inputs`) what the float layer sees, sample for sample.
    Returns an `AdaRoundResult`."""
    qmax = float(2 ** (num_bits - 1) - 1)
    kernel = np.asarray(kernel, np.float32)
    scale = np.broadcast_to(np.asarray(scale, np.float32), kernel.shape).astype(np.float32)
    floor = np.floor(kernel / scale)
    rest = np.clip(kernel / scale - floor, 0.0, 1.0)
    p = (rest + 0.1) / 1.2
    v = tf.Variable(np.log(p / (1.0 - p)).astype(np.float32))
    w = tf.constant(kernel)
    s_t, floor_t = tf.constant(scale), tf.constant(floor.astype(np.float32))
    m1, m2 = tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))
    step_count = tf.Variable(0.0)
    inputs = np.asarray(inputs, np.float32)
    target_inputs = inputs if target_inputs is None else np.asarray(target_inputs, np.float32)
    if len(target_inputs) != len(inputs):
        raise ValueError(f"adaround_kernel: {len(inputs)} inputs but {len(target_inputs)} "
                         "target inputs; they must be the same samples.")
    targets = np.concatenate([convolve(tf.constant(target_inputs[i:i + 256]), w).numpy()
                              for i in range(0, len(inputs), 256)])

    def reconstruction(x, target, weights):
        return tf.reduce_mean(tf.reduce_sum(tf.square(convolve(x, weights) - target), axis=-1))

    @tf.function
    def step(x, target, beta, lam):
        with tf.GradientTape() as tape:
            h = _rectified_sigmoid(v)
            recon = reconstruction(x, target, s_t * tf.clip_by_value(floor_t + h, -qmax, qmax))
            reg = tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta))
            loss = recon + lam * reg
        grad = tape.gradient(loss, v)
        # Adam (β1 = 0.9, β2 = 0.999).
        step_count.assign_add(1.0)
        m1.assign(0.9 * m1 + 0.1 * grad)
        m2.assign(0.999 * m2 + 0.001 * tf.square(grad))
        m1_hat = m1 / (1.0 - tf.pow(0.9, step_count))
        m2_hat = m2 / (1.0 - tf.pow(0.999, step_count))
        v.assign_sub(learning_rate * m1_hat / (tf.sqrt(m2_hat) + 1e-8))
        return recon

    def error(codes):
        weights = tf.constant((codes * scale).astype(np.float32))
        total = sum(float(reconstruction(tf.constant(inputs[i:i + 256]), targets[i:i + 256],
                                         weights)) * len(inputs[i:i + 256])
                    for i in range(0, len(inputs), 256))
        return total / len(inputs)

    rng = np.random.default_rng(seed)
    count = len(inputs)
    warm = int(warmup * iterations)
    start, end = beta_range
    losses = np.zeros(iterations)
    for t in range(iterations):
        index = rng.choice(count, min(batch_size, count), replace=False)
        if t < warm:
            beta, lam = start, 0.0
        else:
            progress = (t - warm) / max(1, iterations - warm)
            beta, lam = end + (start - end) * max(0.0, 1.0 - progress), reg_lambda
        losses[t] = float(step(tf.constant(inputs[index]), tf.constant(targets[index]),
                               tf.constant(beta, tf.float32), tf.constant(lam, tf.float32)))
    codes = np.clip(floor + (v.numpy() >= 0), -qmax, qmax)
    nearest = np.clip(np.floor(kernel / scale + 0.5), -qmax, qmax)
    return AdaRoundResult(codes, error(nearest), error(codes), losses)


def adaround_wrapper(wrapper, inputs, clip_method="minmax", target_inputs=None, **kwargs):
    """AdaRounds the kernel of a QuantizedConvolution (Dense, conv, depthwise or
    transposed conv with a `MinMaxWeightQuantizer`) and stores the result so that the
    weight quantizer reproduces it exactly (the element with the largest |w| of each
    range stays on the grid's end). `inputs`: the layer's inputs in the quantized model;
    `target_inputs`: in the float model (default: `inputs`). Returns the
    `AdaRoundResult`."""
    quantizer = wrapper.weight_quantizer
    kind = wrapper.kernel_layout("kernel")
    kernel = s.folded_kernels(wrapper)["kernel"]
    flat, axis = flat_kernel_and_axis(kernel, kind, quantizer.per_channel)
    bits = quantizer.num_bits
    qmax = float(2 ** (bits - 1) - 1)
    clip = weight_clip(flat, bits, clip_method, axis)
    scale = np.asarray(clip, np.float64) / qmax
    if axis is not None:
        shape = [1] * flat.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    scale = np.broadcast_to(scale, flat.shape)

    def convolve(x, k):
        k = tf.reshape(k, kernel.shape)
        return wrapper.convolve(x, {"kernel": k}, False, quantized=False)

    result = adaround_kernel(convolve, flat, inputs, bits, scale, target_inputs, **kwargs)
    # Keep the largest |w| of every range on the grid's end: the min-max weight quantizer
    # then finds exactly this scale again.
    codes = result.codes
    moved = np.moveaxis(flat, axis, 0).reshape(flat.shape[axis], -1) if axis is not None \
        else flat.reshape(1, -1)
    code_rows = np.moveaxis(codes, axis, 0).reshape(moved.shape) if axis is not None \
        else codes.reshape(1, -1)
    top = np.abs(moved).argmax(axis=1)
    rows = np.arange(moved.shape[0])
    code_rows[rows, top] = np.sign(moved[rows, top]) * qmax
    if axis is not None:
        codes = np.moveaxis(code_rows.reshape(np.moveaxis(flat, axis, 0).shape), 0, axis)
    else:
        codes = code_rows.reshape(flat.shape)
    nearest = np.clip(np.floor(flat / scale + 0.5), -qmax, qmax)
    s.write_folded_kernel(wrapper, "kernel", (codes * scale).reshape(kernel.shape))
    result.codes = codes
    result.flipped = float(np.mean(codes != nearest))
    return result
