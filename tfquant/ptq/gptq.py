"""GPTQ (Frantar et al., ICLR 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"): per layer, round the weights one input feature at a
time and push each column's rounding error onto the features not yet rounded, so that
the layer's output `XW` on the calibration inputs moves as little as possible.

For a Dense kernel `W [K, N]` (K input features) and the layer's inputs `X [n, K]`:

    H = 2/n · XᵀX,  H ← H + λ·mean(diag H)·I          (λ = `damping`, default 0.01)
    U = upper Cholesky factor of H⁻¹   (H⁻¹ = UᵀU)
    for each feature k (in order of descending diag H with `act_order`):
        ŵ_k = s · clamp(⌊w_k / s⌉, −Q, Q)             (Q = 2^(b−1) − 1)
        e   = (w_k − ŵ_k) / U[k, k]
        w_j ← w_j − e · U[k, j]     for every feature j after k

which is the OBQ update `δW = −(w_k − ŵ_k)/[H⁻¹]_kk · [H⁻¹]_k,:` with H⁻¹ restricted to the
features left, read off one row of U instead of inverting again. The update of the
features after the current block of `block_size` (128) columns is applied once per block
(the paper's lazy batch updates: the same numbers, fewer passes over memory).

Steps: one per output channel (or per tensor) from the clip of `clip_method` on the float
kernel, or with `group_size` one per group of that many consecutive input features and
output channel, fixed from the group's (already updated) weights when GPTQ reaches the
group's first feature.

Export. The model-level functions (`gptq_wrapper`, `tfquant.ptq.gptq_weights`,
`ptq.quantize(rounding="gptq")`) use the layer's own `MinMaxWeightQuantizer`, one step per
output channel (or per tensor): each channel's largest |w| is coded ±Q (its error
compensated like any other) so that the quantizer finds the same step again, and
`export_tflite` writes the integers as they are: INT4 at 4 bits, at 2 and 3 bits INT4
holding the 2-/3-bit integers (no smaller LiteRT type). Group steps are for
`gptq_kernel` only: TensorFlow's FakeQuant ops, hence the TFLite converter, know no block
scales, and LiteRT's blockwise INT4 FULLY_CONNECTED is a hybrid kernel (float
activations), not part of a full-integer model.
"""

import dataclasses

import numpy as np

from tfquant.ops.arguments import check_bits, check_count, not_supported
from tfquant.ptq import _sites as s
from tfquant.quantizers.calibration import check_weight_calibrator, weight_clip
from tfquant.quantizers.uniform import WEIGHT_BITS


@dataclasses.dataclass
class GPTQResult:
    """codes: the integer codes `[K, N]`; steps: the step of every weight (`codes · steps`
    is the quantized kernel); order: the order the input features were rounded in;
    nearest_error / gptq_error: `1/n ‖X(W − Ŵ)‖²` (summed over outputs, averaged over the
    n input rows) of round-to-nearest on its own grid and of GPTQ."""

    codes: np.ndarray
    steps: np.ndarray
    order: np.ndarray
    nearest_error: float
    gptq_error: float


def hessian(inputs):
    """`H = 2/n · XᵀX` of a layer's inputs (numpy, last axis = the K input features, every
    other axis flattened into the n rows)."""
    x = np.asarray(inputs, np.float64)
    if x.ndim < 1 or x.size == 0:
        raise ValueError(f"gptq: the layer's inputs are empty (shape {x.shape}); give "
                         "calibration data.")
    x = x.reshape(-1, x.shape[-1])
    if not np.all(np.isfinite(x)):
        raise ValueError(f"gptq: the layer's inputs hold {int(np.sum(~np.isfinite(x)))} NaN "
                         "or infinite values; the calibration data must be finite.")
    return 2.0 * (x.T @ x) / len(x)


def _output_error(delta, hess):
    """`1/n ‖XΔ‖²` from `H = 2/n XᵀX`: `½ tr(Δᵀ H Δ)`."""
    return float(0.5 * np.sum(delta * (hess @ delta)))


def _steps(weights, num_bits, method, per_channel):
    """Steps `[N]` of a symmetric grid for `weights [rows, N]` (one per column, or one
    for all), never 0 (an all-zero channel codes 0 with any step)."""
    qmax = 2 ** (num_bits - 1) - 1
    clip = weight_clip(weights, num_bits, method, 1 if per_channel else None)
    step = np.broadcast_to(np.asarray(clip, np.float64) / qmax, (weights.shape[1],))
    return np.where(step > 0, step, 1.0)


def _check(kernel, hess, num_bits, clip_method, group_size, damping, block_size):
    num_bits = check_bits("gptq", num_bits, WEIGHT_BITS, "weight bits")
    check_weight_calibrator(clip_method)
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 2 or not np.all(np.isfinite(kernel)):
        raise ValueError(f"gptq: the kernel must be a finite [K, N] matrix, got shape "
                         f"{kernel.shape}.")
    hess = np.asarray(hess, np.float64)
    k = kernel.shape[0]
    if hess.shape != (k, k) or not np.all(np.isfinite(hess)):
        raise ValueError(f"gptq: the Hessian must be a finite [{k}, {k}] matrix for a kernel "
                         f"of {k} input features, got shape {hess.shape}.")
    group_size = check_count("gptq", "group_size", group_size, 1)
    if group_size is not None and k % group_size:
        raise not_supported("gptq", "group_size", group_size,
                            f"None or a divisor of the {k} input features")
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) \
            or not 0.0 < float(damping) <= 1.0:
        raise not_supported("gptq", "damping", damping, "a number in (0, 1]")
    block_size = check_count("gptq", "block_size", block_size, 1)
    return kernel, hess, num_bits, group_size, float(damping), block_size


def gptq_kernel(kernel, hess, num_bits, clip_method="minmax", per_channel=True,
                group_size=None, act_order=True, damping=0.01, block_size=128,
                keep_range=False):
    """GPTQ of one Dense kernel `[K, N]` (numpy) with `hess` = `hessian(inputs)`.

    Args:
      num_bits: 2 to 8. clip_method: the clip of each grid ("minmax", "mse", "sawb").
      per_channel: one step per output channel (False: one for the kernel).
      group_size: one step per `group_size` consecutive input features and output
        channel (a divisor of K; overrides `per_channel`). None: no groups.
      act_order: round the features with the largest diag H first.
      damping: λ of `H + λ·mean(diag H)·I`, in (0, 1].
      block_size: columns per lazy batch update.
      keep_range: code the largest |w| of each range ±Q (without groups), so that a
        min-max quantizer of the result finds the same steps.

    Returns a `GPTQResult`.
    """
    kernel, hess, num_bits, group_size, damping, block_size = _check(
        kernel, hess, num_bits, clip_method, group_size, damping, block_size)
    k, n = kernel.shape
    qmax = float(2 ** (num_bits - 1) - 1)
    h = hess.copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0  # an input that is always 0: rounded alone, no error passed on
    h += damping * np.mean(np.diag(h)) * np.eye(k)
    order = np.argsort(-np.diag(hess), kind="stable") if act_order else np.arange(k)
    position = np.argsort(order)
    inverse = np.linalg.inv(h[np.ix_(order, order)])
    u = np.linalg.cholesky(inverse).T  # upper, H⁻¹ = UᵀU

    weights = kernel.T[:, order].copy()  # [N, K] in rounding order
    codes = np.zeros_like(weights)
    steps = np.zeros_like(weights)
    anchors = {}  # rounding position: the output rows whose code is pinned to ±Q
    if group_size is None:
        row_steps = _steps(kernel, num_bits, clip_method, per_channel)
        steps[:] = row_steps[:, None]
        if keep_range:
            flat = np.abs(kernel) if per_channel else np.abs(kernel).reshape(-1, 1)
            tops = flat.argmax(axis=0)
            rows = np.arange(n) if per_channel else np.array([tops[0] % n])
            cols = position[tops if per_channel else tops // n]
            for row, col in zip(rows, cols):
                anchors.setdefault(int(col), []).append(int(row))
    elif keep_range:
        raise ValueError("gptq: keep_range holds a range per output channel; it does not "
                         "apply with group_size.")
    pending = np.full(k // group_size if group_size else 0, True)

    for start in range(0, k, block_size):
        end = min(start + block_size, k)
        block = weights[:, start:end].copy()
        errors = np.zeros((n, end - start))
        for i in range(end - start):
            col = start + i
            if group_size is not None and pending[order[col] // group_size]:
                group = order[col] // group_size
                members = position[group * group_size:(group + 1) * group_size]
                # The group's weights as they stand now: in this block, or beyond it with
                # this block's updates so far applied.
                current = weights[:, members] - errors[:, :i] @ u[start:col, members]
                inside = members < end
                current[:, inside] = block[:, members[inside] - start]
                steps[:, members] = _steps(current.T, num_bits, clip_method, True)[:, None]
                pending[group] = False
            w, step = block[:, i], steps[:, col]
            q = np.clip(np.floor(w / step + 0.5), -qmax, qmax)
            if col in anchors:
                rows = np.array(anchors[col])
                q[rows] = np.sign(kernel.T[rows, order[col]]) * qmax
            codes[:, col] = q
            error = (w - q * step) / u[col, col]
            block[:, i:] -= np.outer(error, u[col, col:end])
            errors[:, i] = error
        weights[:, end:] -= errors @ u[start:end, end:]

    codes, steps = codes[:, position].T, steps[:, position].T
    if group_size is None:
        nearest_steps = steps
    else:
        blocks = kernel.reshape(k // group_size, group_size, n)
        nearest_steps = np.repeat(np.stack([_steps(b, num_bits, clip_method, True)
                                            for b in blocks]), group_size, axis=0)
    nearest = np.clip(np.floor(kernel / nearest_steps + 0.5), -qmax, qmax) * nearest_steps
    return GPTQResult(codes, steps, order, _output_error(kernel - nearest, hess),
                      _output_error(kernel - codes * steps, hess))


def gptq_wrapper(wrapper, inputs, clip_method="minmax", act_order=True, damping=0.01,
                 block_size=128):
    """GPTQ of the kernel of a Dense QuantizedConvolution (a Dense, an EinsumDense in
    Dense form or an attention projection) with a `MinMaxWeightQuantizer`, from its
    `inputs` (numpy, last axis = its input features), stored so that the weight quantizer
    reproduces it exactly. Returns the `GPTQResult`."""
    quantizer = wrapper.weight_quantizer
    if wrapper.kind != "dense" or type(quantizer).__name__ != "MinMaxWeightQuantizer":
        raise ValueError(f"gptq: {wrapper.name} is a {wrapper.kind!r} layer with a "
                         f"{type(quantizer).__name__}; GPTQ takes Dense layers with a "
                         "MinMaxWeightQuantizer.")
    kernel = s.folded_kernels(wrapper)["kernel"]
    result = gptq_kernel(kernel, hessian(inputs), quantizer.num_bits, clip_method,
                         quantizer.per_channel, None, act_order, damping, block_size,
                         keep_range=True)
    s.write_folded_kernel(wrapper, "kernel", result.codes * result.steps)
    return result
