"""Calibrators: the range of a tensor from samples of it (numpy only).

Activation calibrators observe batches (`observe(x)`) and then give a range
(`compute_range(num_bits, symmetric)` → `(lo, hi)` with `lo ≤ 0 ≤ hi`). Weight
calibrators are functions of the whole weight tensor (`weight_clip`). References: Wu et
al. 2020, "Integer Quantization for Deep Learning Inference: Principles and Empirical
Evaluation"; Migacz 2017, "8-bit Inference with TensorRT"; Banner et al. 2019 (optimal
clipping); Choi et al. 2019 (SAWB).

They live below `tfquant.keras` (its config checks calibrator names); `tfquant.ptq`
re-exports them.
"""

import copy

import numpy as np

from tfquant.quantizers.sawb import SAWBQuantizer

DEFAULT_MAX_SAMPLES = 1 << 20


def uniform_quantize(x, lo, hi, num_bits):
    """`lo + s·round((clip(x, lo, hi) − lo)/s)`, `s = (hi − lo)/(2^b − 1)`."""
    step = (hi - lo) / float(2 ** num_bits - 1)
    if step <= 0:
        return np.zeros_like(x)
    return lo + np.floor((np.clip(x, lo, hi) - lo) / step + 0.5) * step


def symmetric_quantize(w, clip, num_bits, axis=None):
    """Symmetric narrow-range grid: `s·clamp(round(w/s), −Q, Q)`, `s = clip/Q`,
    `Q = 2^(b−1) − 1`, rounding half up as TF's FakeQuant; `clip` per slice along
    `axis` (None: a scalar)."""
    w = np.asarray(w, dtype=np.float64)
    qmax = float(2 ** (num_bits - 1) - 1)
    clip = np.asarray(clip, dtype=np.float64)
    if axis is not None:
        shape = [1] * w.ndim
        shape[axis % w.ndim] = -1
        clip = clip.reshape(shape)
    step = np.maximum(clip, 1e-12) / qmax
    return np.clip(np.floor(w / step + 0.5), -qmax, qmax) * step


class Calibrator:
    """Base: collects a uniform random sample of at most `max_samples` values (all
    values while they fit), the running min and max, and the batch count."""

    name = "base"
    needs_samples = True

    def __init__(self, max_samples=DEFAULT_MAX_SAMPLES, seed=0):
        self.max_samples = int(max_samples)
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self):
        self.samples = np.zeros((0,), np.float32)
        self.seen = 0
        self.min = np.inf
        self.max = -np.inf
        self.batches = 0

    def observe(self, x):
        x = np.asarray(x, dtype=np.float32).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        self.batches += 1
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        if self.needs_samples:
            self._keep(x)
        self.seen += x.size

    def _keep(self, x):
        total = self.seen + x.size
        if total <= self.max_samples:
            self.samples = np.concatenate([self.samples, x])
            return
        # Keep a uniform sample of everything seen: each part in proportion to its size.
        keep_old = int(round(self.max_samples * self.seen / total))
        keep_old = min(keep_old, self.samples.size)
        keep_new = min(self.max_samples - keep_old, x.size)
        old = self._rng.choice(self.samples, keep_old, replace=False) if keep_old < \
            self.samples.size else self.samples
        new = self._rng.choice(x, keep_new, replace=False) if keep_new < x.size else x
        self.samples = np.concatenate([old, new])

    def _check(self):
        if self.batches == 0:
            raise ValueError(f"{type(self).__name__}: no finite values were observed.")

    def compute_range(self, num_bits=8, symmetric=False):
        raise TypeError(f"{type(self).__name__} does not implement compute_range")

    @staticmethod
    def _finish(lo, hi, symmetric):
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if symmetric:
            hi = max(hi, -lo)
            lo = -hi
        if hi - lo <= 0:
            hi = lo + 1e-6
        return lo, hi


class MinMaxCalibrator(Calibrator):
    """`[min(x), max(x)]` over everything observed (extended to include 0)."""

    name = "minmax"
    needs_samples = False

    def compute_range(self, num_bits=8, symmetric=False):
        self._check()
        return self._finish(self.min, self.max, symmetric)


class EMACalibrator(Calibrator):
    """Per batch `[min, max]`, averaged `r ← d·r + (1 − d)·r_batch` (the first batch sets
    r), as `MovingAverageQuantizer` does in training (decay d = 0.99 by default)."""

    name = "ema"
    needs_samples = False

    def __init__(self, decay=0.99, **kwargs):
        self.decay = float(decay)
        super().__init__(**kwargs)

    def reset(self):
        super().reset()
        self.ema = None

    def observe(self, x):
        x = np.asarray(x, dtype=np.float32)
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        batch = np.array([min(float(x.min()), 0.0), max(float(x.max()), 0.0)])
        self.ema = batch if self.ema is None else self.decay * self.ema + (1 - self.decay) * batch
        super().observe(x)

    def compute_range(self, num_bits=8, symmetric=False):
        self._check()
        return self._finish(self.ema[0], self.ema[1], symmetric)


class PercentileCalibrator(Calibrator):
    """`[P_{100−p}(x), P_p(x)]` (numpy's linear-interpolation percentile) of the sample,
    p = 99.99 by default; symmetric: `±P_p(|x|)`."""

    name = "percentile"

    def __init__(self, percentile=99.99, **kwargs):
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"PercentileCalibrator: percentile={percentile!r} must be in (50, 100].")
        self.percentile = float(percentile)
        super().__init__(**kwargs)

    def compute_range(self, num_bits=8, symmetric=False):
        self._check()
        if symmetric:
            m = np.percentile(np.abs(self.samples), self.percentile)
            return self._finish(-m, m, True)
        lo = np.percentile(self.samples, 100.0 - self.percentile) if self.min < 0 else 0.0
        hi = np.percentile(self.samples, self.percentile) if self.max > 0 else 0.0
        return self._finish(lo, hi, False)


class MSECalibrator(Calibrator):
    """The range `t·[min, max]` (symmetric: `t·[−max|x|, max|x|]`) minimizing the mean
    squared error `E[(Q(x) − x)²]` of the 2^b-level uniform grid on it; t searched over
    a coarse grid in (0, 1], then refined around the best value."""

    name = "mse"

    def __init__(self, candidates=100, search_samples=1 << 18, **kwargs):
        self.candidates = int(candidates)
        self.search_samples = int(search_samples)
        super().__init__(**kwargs)

    def compute_range(self, num_bits=8, symmetric=False):
        self._check()
        x = self.samples
        if x.size > self.search_samples:  # the search needs a sample, not every value
            x = np.random.default_rng(0).choice(x, self.search_samples, replace=False)
        x = x.astype(np.float64)
        if symmetric:
            m = max(abs(self.min), abs(self.max))
            lo0, hi0 = -m, m
        else:
            lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)

        def error(t):
            return float(np.mean((uniform_quantize(x, t * lo0, t * hi0, num_bits) - x) ** 2))

        ts = np.linspace(1.0 / self.candidates, 1.0, self.candidates)
        errors = [error(t) for t in ts]
        best = int(np.argmin(errors))
        width = 1.0 / self.candidates
        fine = np.linspace(max(ts[best] - width, width / 10), min(ts[best] + width, 1.0), 41)
        t = min(fine, key=error)
        return self._finish(t * lo0, t * hi0, symmetric)


class EntropyCalibrator(Calibrator):
    """TensorRT's entropy calibration: a 2048-bin histogram of |x| on [0, max|x|]; for
    every candidate threshold bin i ≥ 128 the reference P is the first i bins (the mass
    beyond added to bin i−1), Q is P quantized to `L` levels (merge i bins into L
    groups, spread each group's mass evenly over its non-empty bins), and the threshold
    minimizes KL(P‖Q) = Σ P log(P/Q). L = 2^(b−1) for signed tensors (the sign takes a
    bit) and 2^b for non-negative ones (then the search starts at bin max(128, L)).
    Range: `[−T, T]` for signed tensors, `[0, T]` for non-negative ones. Exact zeros
    are left out of the histogram (judgement call: they are exact on any grid, and a
    ReLU's spike at 0 otherwise pulls the threshold far down)."""

    name = "entropy"

    def __init__(self, bins=2048, start_bin=128, stride=1, **kwargs):
        self.bins, self.start_bin, self.stride = int(bins), int(start_bin), int(stride)
        super().__init__(**kwargs)

    def threshold(self, num_bits=8, signed=True):
        self._check()
        values = np.abs(self.samples.astype(np.float64))
        # Exact zeros (ReLU outputs, padding) are exact on every grid; in the histogram
        # their spike would be smeared over the first quantization bin and make every
        # wide threshold look bad.
        values = values[values > 0]
        if values.size == 0:
            return 0.0
        top = float(values.max())
        if top <= 0:
            return 0.0
        hist, edges = np.histogram(values, bins=self.bins, range=(0.0, top))
        hist = hist.astype(np.float64)
        levels = 2 ** (num_bits - 1) if signed else 2 ** num_bits
        start = min(max(self.start_bin, levels), self.bins)
        best_i, best_kl = self.bins, np.inf
        for i in range(start, self.bins + 1, self.stride):
            kl = _kl_for_threshold(hist, i, levels)
            if kl < best_kl:
                best_kl, best_i = kl, i
        return float(edges[best_i])

    def compute_range(self, num_bits=8, symmetric=False):
        signed = self.min < 0
        t = self.threshold(num_bits, signed)
        return self._finish(-t if (signed or symmetric) else 0.0, t, symmetric)


def _kl_for_threshold(hist, i, levels):
    p = hist[:i].copy()
    p[i - 1] += hist[i:].sum()
    if p.sum() <= 0:
        return np.inf
    # Q: the first i bins merged into `levels` groups, each group's mass spread evenly
    # over the bins that were non-empty.
    reference = hist[:i]
    groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
    nonzero = reference > 0
    mass = np.bincount(groups, weights=reference, minlength=levels)
    count = np.bincount(groups, weights=nonzero.astype(np.float64), minlength=levels)
    q = np.where(nonzero, mass[groups] / np.maximum(count[groups], 1.0), 0.0)
    p /= p.sum()
    total = q.sum()
    if total <= 0:
        return np.inf
    q /= total
    eps = 1e-12
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], eps))))


ACTIVATION_CALIBRATORS = {
    "minmax": MinMaxCalibrator, "ema": EMACalibrator, "percentile": PercentileCalibrator,
    "mse": MSECalibrator, "entropy": EntropyCalibrator, "kl": EntropyCalibrator,
}


def make_calibrator(spec):
    """A fresh activation calibrator from a name (see ACTIVATION_CALIBRATORS) or a
    Calibrator instance (copied, so one instance can serve as a template)."""
    if isinstance(spec, Calibrator):
        fresh = copy.deepcopy(spec)
        fresh.reset()
        return fresh
    if isinstance(spec, str) and spec.lower() in ACTIVATION_CALIBRATORS:
        return ACTIVATION_CALIBRATORS[spec.lower()]()
    raise ValueError(f"Unknown calibrator {spec!r}; use one of "
                     f"{', '.join(sorted(ACTIVATION_CALIBRATORS))} or a Calibrator instance.")


# -- weights --------------------------------------------------------------------------------

WEIGHT_CALIBRATORS = ("minmax", "mse", "sawb")


def check_weight_calibrator(method):
    """Raises a ValueError unless `method` is one of WEIGHT_CALIBRATORS."""
    if not (isinstance(method, str) and method in WEIGHT_CALIBRATORS):
        raise ValueError(f"Unknown weight calibrator {method!r}; use one of "
                         f"{', '.join(WEIGHT_CALIBRATORS)}.")


def _reduce(w, axis):
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def weight_clip(w, num_bits=8, method="minmax", axis=None, candidates=100):
    """The clip α of a symmetric narrow-range weight grid (s = α/(2^(b−1)−1)), per slice
    along `axis` (None: one α for the tensor; returns a scalar then).

    - "minmax": α = max|w|.
    - "mse": α = t·max|w| minimizing Σ(Q_α(w) − w)², t searched on a grid in (0, 1].
    - "sawb": α = c1·sqrt(E[w²]) − c2·E|w| with SAWB's coefficients (2–5 bits; above 5
      bits the clip is max|w|), at most max|w| (a larger clip only wastes levels) and
      max|w| when α ≤ 0.
    The result never exceeds max|w|, so `symmetric_quantize(w, α)` puts max|w| on the
    grid's end and a min-max quantizer of the result reproduces it exactly.
    """
    check_weight_calibrator(method)
    w = np.asarray(w, dtype=np.float64)
    rows = _reduce(w, axis)
    top = np.abs(rows).max(axis=1)
    if method == "minmax":
        clip = top
    elif method == "mse":
        clip = top.copy()
        best = np.full(top.shape, np.inf)
        for t in np.linspace(1.0 / candidates, 1.0, candidates):
            error = ((symmetric_quantize(rows, t * top, num_bits, axis=0) - rows) ** 2).sum(axis=1)
            better = error < best
            best = np.where(better, error, best)
            clip = np.where(better, t * top, clip)
    elif method == "sawb":
        if num_bits in SAWBQuantizer.COEFFICIENTS:
            c1, c2 = SAWBQuantizer.COEFFICIENTS[num_bits]
            alpha = c1 * np.sqrt((rows ** 2).mean(axis=1)) - c2 * np.abs(rows).mean(axis=1)
            clip = np.where(alpha > 0, np.minimum(alpha, top), top)
        else:
            clip = top
    clip = np.maximum(clip, 1e-8)
    return float(clip[0]) if axis is None else clip
