"""Random fake-quant cases in numpy only (no TensorFlow import), shared by the
test_fake_quant_*.py files and test_kernel_variants.py: shapes, ranges (zero, one-sided,
tiny, wide) and inputs near the rounding ties of the grid."""

import numpy as np

DIM_CHOICES = [1, 1, 2, 3, 4, 5, 7, 8, 13]


def random_range(rng, num_bits):
    kind = rng.choice(["straddle", "straddle", "positive", "negative", "tiny",
                       "zero_edge", "both_zero", "wide"])
    if kind == "straddle":
        return -rng.uniform(0.01, 4), rng.uniform(0.01, 4)
    if kind == "positive":  # range not containing 0: nudged to start at 0
        lo = rng.uniform(0.01, 3)
        return lo, lo + rng.uniform(0.01, 3)
    if kind == "negative":
        hi = -rng.uniform(0.01, 3)
        return hi - rng.uniform(0.01, 3), hi
    if kind == "tiny":
        c = rng.uniform(-1, 1)
        return c, c + rng.uniform(1e-6, 1e-3)
    if kind == "zero_edge":
        w = rng.uniform(0.1, 5)
        return (0.0, w) if rng.random() < 0.5 else (-w, 0.0)
    if kind == "both_zero":
        return 0.0, 0.0
    return -rng.uniform(10, 1000), rng.uniform(10, 1000)


def random_inputs(rng, shape, lo, hi, num_bits, ties=0.4, ends=False):
    """Values around and inside [lo, hi], a fraction `ties` of them near half-way
    points of the grid where rounding decides; with `ends`, 5 % on lo or hi."""
    lo_b, hi_b = np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)
    width = np.maximum(hi_b - lo_b, 1e-3)
    x = rng.uniform(lo_b - 0.3 * width, hi_b + 0.3 * width)
    levels = 2 ** num_bits - 1
    k = rng.integers(0, levels, size=shape)
    near_tie = lo_b + (k + 0.5) * (hi_b - lo_b) / levels
    pick = rng.random(shape)
    x = np.where(pick < ties, near_tie, x)
    if ends:
        x = np.where((pick > 0.95) & (pick < 0.97), lo_b, x)
        x = np.where(pick > 0.97, hi_b, x)
    return x.astype(np.float32)


def unit_range(shape, axis):
    """min = -1, max = 1: per tensor (axis None) or one per channel along `axis`."""
    if axis is None:
        return np.float32(-1), np.float32(1)
    return np.full(shape[axis], -1, np.float32), np.full(shape[axis], 1, np.float32)


def random_case(rng):
    rank = int(rng.integers(1, 5))
    shape = tuple(int(rng.choice(DIM_CHOICES)) for _ in range(rank))
    num_bits = int(rng.integers(2, 17))
    narrow_range = bool(rng.random() < 0.5)
    if rng.random() < 0.35:
        axis = None
        lo, hi = random_range(rng, num_bits)
        mn, mx = np.float32(lo), np.float32(hi)
        bshape_lo, bshape_hi = mn, mx
    else:
        axis = int(rng.integers(-rank, rank))
        channels = shape[axis]
        pairs = [random_range(rng, num_bits) for _ in range(channels)]
        mn = np.array([p[0] for p in pairs], np.float32)
        mx = np.array([p[1] for p in pairs], np.float32)
        bshape = [1] * rank
        bshape[axis] = channels
        bshape_lo, bshape_hi = mn.reshape(bshape), mx.reshape(bshape)
    x = random_inputs(rng, shape, bshape_lo, bshape_hi, num_bits)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy, mn, mx, num_bits, narrow_range, axis


def random_cases(seed, count, first_seed):
    """`count` random_case()s from one generator, each with its context string."""
    rng = np.random.default_rng(first_seed + seed)
    for case in range(count):
        x, dy, mn, mx, num_bits, narrow, axis = random_case(rng)
        ctx = (f"[seed {seed} case {case}: shape {x.shape} bits {num_bits} "
               f"narrow {narrow} axis {axis} min {mn} max {mx}]")
        yield ctx, (x, dy, mn, mx, num_bits, narrow, axis)
