"""Random cases for the TF ops and the _native module, run under the sanitizers.

    python fuzz/fuzz_ops.py --cases 300 --seed 1 --threads 2   (from fuzz/run.py)

Every case runs the scalar reference (_native, variant="scalar") and compares the other
kernel variants with it: bit for bit where the contract says so (y, dx, packed bytes,
packed matmul outputs; any NaN equals any NaN), dmin/dmax within 1e-6 of sum|dy|
(fake_quant.h). The TF ops run with denormals flushed, so they are compared, bit for bit,
with _native run so too (FlushDenormals), in the variant they use. The moving-average range
op is compared with a numpy reference of its docstring (values: which zero a range of 0
gets is unspecified). The SeerNet convolution's variants and TF op must select the same
outputs as the scalar one and agree with it to rounding (finite inputs). An invalid case must raise a Python exception in every entry point;
a valid one must raise in none. Prints one line `RESULT {json}`.
"""

import argparse
import collections
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fuzz import sanitized  # noqa: E402

FLT_MAX = np.finfo(np.float32).max
DENORMALS = np.array([1e-45, -1e-45, 1e-40, -3e-39, 1.1754942e-38], np.float32)
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, FLT_MAX, -FLT_MAX], np.float32)
DIMS = (0, 1, 1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 33, 64)


class FlushDenormals:
    """TF runs kernels with denormals flushed (FTZ and DAZ set by its executor); inside
    this block _native runs so too, for comparisons with the TF ops. (The variants differ
    under FTZ, e.g. where the scalar code's `dy * 1.0f` is folded away: the TF ops are
    compared with the variant they use.)"""

    def __init__(self, tf):
        import ctypes
        lib = ctypes.CDLL(os.path.join(tf.sysconfig.get_lib(), "libtensorflow_framework.so.2"))
        self._set = lib._ZN3tsl4port16SetDenormalStateERKNS0_13DenormalStateE
        self._set.argtypes, self._set.restype = [ctypes.c_void_p], ctypes.c_bool
        self._ctypes = ctypes

    def _apply(self, on):
        state = (self._ctypes.c_bool * 2)(on, on)  # DenormalState{flush_to_zero, daz}
        if not self._set(self._ctypes.addressof(state)):
            raise RuntimeError("this CPU cannot set the denormal mode")

    def __enter__(self):
        self._apply(True)

    def __exit__(self, *exc):
        self._apply(False)


class Fuzzer:
    def __init__(self, tq, rng):
        import tensorflow as tf
        self.tf, self.tq, self.native, self.rng = tf, tq, tq._native, rng
        self.raw = tq.ops._library.load_op_library()
        self.calls = collections.Counter()
        self.mismatches = []
        self.expected_errors = 0
        self.ftz = FlushDenormals(tf)
        self.fq_variants = self.native.kernel_variants()
        self.packed_variants = self.native.packed_kernel_variants()
        self.seer_variants = self.native.seer_conv_kernel_variants()

    # ------------------------------------------------------------- helpers

    def call(self, name, fn, *args, **kwargs):
        """(result, None) or (None, exception); only Python exceptions are caught."""
        self.calls[name] += 1
        try:
            return fn(*args, **kwargs), None
        except (ValueError, TypeError, self.tf.errors.OpError) as error:
            return None, error

    def mismatch(self, entry, case, what):
        if len(self.mismatches) < 50:
            self.mismatches.append({"entry": entry, "what": what, "case": case})
        else:
            self.mismatches.append(None)

    def check_error(self, entry, case, valid, error):
        """False if no result to compare (an error, expected or not)."""
        if error is None and not valid:
            self.mismatch(entry, case, "no exception for an invalid case")
        elif error is not None and valid:
            self.mismatch(entry, case, f"exception for a valid case: {error!r}"[:300])
        elif error is not None:
            if not str(error).strip():
                self.mismatch(entry, case, f"exception without a message: {error!r}")
            self.expected_errors += 1
        return error is None

    @staticmethod
    def same_bits(a, b):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if a.shape != b.shape:
            return False
        nan = np.isnan(a)
        return bool(np.array_equal(nan, np.isnan(b)) and
                    np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32)))

    @staticmethod
    def close_sums(a, b, scale):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        equal = (a == b) | both_nan
        return bool(np.all(equal | (np.abs(a - b) <= 1e-6 * scale + 1e-30)))

    def values(self, shape, spread):
        rng = self.rng
        x = np.asarray(rng.standard_normal(shape) * spread, np.float32)
        if x.size and rng.random() < 0.5:
            pick = np.asarray(rng.random(shape) < rng.choice([0.02, 0.2]))
            pool = np.concatenate([SPECIALS, DENORMALS])
            x[pick] = rng.choice(pool, size=int(pick.sum()))
        return x

    # ----------------------------------------------------------- fake quant

    def range_pair(self, channels):
        """min, max arrays of `channels` (None: scalars) and whether they are valid."""
        rng, n = self.rng, 1 if channels is None else channels
        kind = rng.choice(["normal", "normal", "zero", "equal", "positive", "negative",
                           "huge", "denormal", "swapped", "nan", "inf"])
        a = np.abs(rng.standard_normal(n)).astype(np.float32) * np.float32(
            10.0 ** rng.uniform(-6, 6))
        b = np.abs(rng.standard_normal(n)).astype(np.float32) * np.float32(
            10.0 ** rng.uniform(-6, 6))
        lo, hi = -a, b
        if kind == "zero":
            lo, hi = np.zeros(n, np.float32), np.zeros(n, np.float32)
        elif kind == "equal":
            lo = hi = rng.choice([-1.0, 0.5, 3.0], size=n).astype(np.float32)
        elif kind == "positive":
            lo, hi = a, a + b
        elif kind == "negative":
            lo, hi = -a - b, -a
        elif kind == "huge":
            lo = rng.choice([-FLT_MAX, -1.0, 0.0], size=n).astype(np.float32)
            hi = rng.choice([FLT_MAX, 1.0, FLT_MAX / 2], size=n).astype(np.float32)
        elif kind == "denormal":
            lo, hi = -np.abs(rng.choice(DENORMALS, n)), np.abs(rng.choice(DENORMALS, n))
        elif kind == "swapped":
            lo, hi = b + 1.0, -a
        elif kind in ("nan", "inf") and n:
            bad = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
            (lo if rng.random() < 0.5 else hi)[rng.integers(n)] = bad
        lo, hi = lo.astype(np.float32), hi.astype(np.float32)
        valid = bool(np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi))
        if channels is None:
            lo, hi = lo[0], hi[0]
        return np.asarray(lo, np.float32), np.asarray(hi, np.float32), valid

    def fake_quant_case(self):
        rng = self.rng
        rank = int(rng.integers(0, 5))
        shape = tuple(int(rng.choice(DIMS)) for _ in range(rank))
        while np.prod(shape, dtype=np.int64) > 6000:
            shape = tuple(max(1, d // 2) for d in shape)
        per_channel = rank > 0 and rng.random() < 0.6
        axis = int(rng.integers(-rank, rank)) if per_channel else None
        valid = True
        channels = shape[axis] if per_channel else None
        if per_channel and rng.random() < 0.05:  # wrong number of ranges
            channels, valid = channels + 1, False
        lo, hi, valid_range = self.range_pair(channels)
        valid = valid and valid_range
        bits = int(rng.integers(2, 17)) if rng.random() < 0.95 else int(rng.choice([0, 1, 17, 33]))
        valid = valid and 2 <= bits <= 16
        case = {"shape": shape, "axis": axis, "bits": bits, "narrow": bool(rng.random() < 0.3),
                "mode": str(rng.choice(["clipped", "learned"])), "valid": valid,
                "min": np.ravel(lo)[:4].tolist(), "max": np.ravel(hi)[:4].tolist()}
        x = self.values(shape, 10.0 ** rng.uniform(-3, 4))
        if x.size and rng.random() < 0.3 and valid:
            x.flat[:] = self.grid_points(x.size, lo, hi, bits)
        dy = self.values(shape, 1.0)
        kw = dict(num_bits=bits, narrow_range=case["narrow"], axis=axis)
        ref, error = self.call("native.fake_quant_reference", self.native.fake_quant_reference,
                               x, lo, hi, variant="scalar", **kw)
        have_ref = self.check_error("native.fake_quant_reference", case, valid, error)
        gref, error = self.call("native.fake_quant_grad_reference",
                                self.native.fake_quant_grad_reference, dy, x, lo, hi,
                                range_gradient=case["mode"], variant="scalar", **kw)
        have_ref = self.check_error("native.fake_quant_grad_reference", case, valid,
                                    error) and have_ref and valid
        scale = self.channel_sums(np.abs(dy.astype(np.float64)), shape, axis)
        for variant in self.fq_variants[1:] + [None]:
            y, error = self.call("native.fake_quant_reference", self.native.fake_quant_reference,
                                 x, lo, hi, variant=variant, **kw)
            if self.check_error("native.fake_quant_reference", case, valid, error) and have_ref:
                if not self.same_bits(y, ref):
                    self.mismatch(f"native.fake_quant_reference[{variant}]", case, "y differs")
            g, error = self.call("native.fake_quant_grad_reference",
                                 self.native.fake_quant_grad_reference, dy, x, lo, hi,
                                 range_gradient=case["mode"], variant=variant, **kw)
            if self.check_error("native.fake_quant_grad_reference", case, valid,
                                error) and have_ref:
                self.compare_grads(f"native.fake_quant_grad_reference[{variant}]", case, g,
                                   gref, scale)
        tf_ref = None
        if have_ref:  # what the TF op must give: the variant it uses, denormals flushed
            with self.ftz:
                tf_ref = (self.native.fake_quant_reference(x, lo, hi, **kw),
                          self.native.fake_quant_grad_reference(
                              dy, x, lo, hi, range_gradient=case["mode"], **kw))
            self.calls["native.fake_quant_reference"] += 1
            self.calls["native.fake_quant_grad_reference"] += 1
        self.tf_fake_quant(case, x, lo, hi, dy, tf_ref)
        if rng.random() < 0.3:
            self.raw_fake_quant(x, shape)

    def grid_points(self, size, lo, hi, bits):
        """Rounding midpoints and edges of the (unnudged) grid: where ties are decided."""
        lo, hi = float(np.min(lo)), float(np.max(hi))
        step = (hi - lo) / (2 ** bits - 1) if hi > lo else 1.0
        i = self.rng.integers(-2, 2 ** bits + 2, size)
        return (lo + (i + self.rng.choice([0.0, 0.5, 1e-7], size)) * step).astype(np.float32)

    @staticmethod
    def channel_sums(values, shape, axis):
        if axis is None or values.size == 0:
            return np.asarray(values.sum())
        moved = np.moveaxis(values, axis, 0)
        return moved.reshape(moved.shape[0], -1).sum(axis=1)

    def compare_grads(self, entry, case, got, want, scale):
        if want is None:
            return
        if not self.same_bits(got[0], want[0]):
            self.mismatch(entry, case, "dx differs")
        for name, a, b in (("dmin", got[1], want[1]), ("dmax", got[2], want[2])):
            if not self.close_sums(a, b, scale):
                self.mismatch(entry, case, f"{name} differs: {np.ravel(a)[:3]} vs {np.ravel(b)[:3]}")

    def tf_fake_quant(self, case, x, lo, hi, dy, want):
        tf = self.tf
        xt, lot, hit = tf.constant(x), tf.constant(lo), tf.constant(hi)

        def forward_and_gradient():
            with tf.GradientTape() as tape:
                tape.watch([xt, lot, hit])
                y = self.tq.ops.fake_quant(xt, lot, hit, num_bits=case["bits"],
                                           narrow_range=case["narrow"], axis=case["axis"],
                                           range_gradient=case["mode"])
            self.calls["tf.fake_quant"] += 1
            return y, tape.gradient(y, [xt, lot, hit], output_gradients=tf.constant(dy))

        result, error = self.call("tf.fake_quant_grad", forward_and_gradient)
        if self.check_error("tf.fake_quant", case, case["valid"], error) and want:
            y, grads = result
            if not self.same_bits(y.numpy(), want[0]):
                self.mismatch("tf.fake_quant", case, "y differs from _native")
            for name, got, ref in zip(("dx", "dmin", "dmax"), grads, want[1]):
                if not self.same_bits(got.numpy(), ref):  # same kernels, same sum order
                    self.mismatch("tf.fake_quant_grad", case, f"{name} differs from _native")

    def raw_fake_quant(self, x, shape):
        """The raw ops with inputs the Python wrapper would refuse: C++ checks only."""
        rng = self.rng
        ranks = [int(rng.integers(0, 3)), int(rng.integers(0, 3))]
        lengths = [int(rng.integers(0, 5)) for _ in ranks]
        lo = np.zeros([lengths[0]] * ranks[0], np.float32) - 1
        hi = np.ones([lengths[1]] * ranks[1], np.float32)
        axis = int(rng.integers(-6, 6))
        bits = int(rng.integers(0, 20))
        rank = len(shape)
        per_channel = ranks == [1, 1] and rank > 0 and -rank <= axis < rank
        valid = 2 <= bits <= 16 and (ranks == [0, 0] or (
            per_channel and lengths[0] == lengths[1] == shape[axis]))
        case = {"raw": True, "shape": shape, "ranks": ranks, "lengths": lengths, "axis": axis,
                "bits": bits}
        try:
            attrs = dict(num_bits=bits, axis=axis)
            _, error = self.call("tf.raw_fake_quant", self.raw.tfquant_fake_quant, x, lo, hi,
                                 **attrs)
            self.check_error("tf.raw_fake_quant", case, valid, error)
            _, error = self.call("tf.raw_fake_quant_grad", self.raw.tfquant_fake_quant_grad,
                                 x, x, lo, hi, **attrs)
            self.check_error("tf.raw_fake_quant_grad", case, valid, error)
        except self.tf.errors.OpError as error:  # shape inference refusing eagerly
            self.check_error("tf.raw_fake_quant", case, valid, error)

    # ------------------------------------------------------------- packed

    @staticmethod
    def pack_reference(q, bits):
        """The layout of cc_ops/kernels/packed.h, written out with numpy."""
        k, n = q.shape
        kb, fields = 32 // bits, 8 // bits
        kpad, npad = -(-k // kb) * kb, -(-n // 16) * 16
        u = np.full((npad, kpad), 1 << (bits - 1), np.uint8)
        u[:n, :k] = (q.T.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
        tiles = u.reshape(npad // 16, 16, kpad // kb, fields, 4).transpose(0, 2, 1, 4, 3)
        out = np.zeros(tiles.shape[:-1], np.uint8)
        for s in range(fields):
            out |= (tiles[..., s] << (s * bits)).astype(np.uint8)
        return out.reshape(-1)

    def packed_case(self):
        rng = self.rng
        bits = int(rng.choice([2, 4]))
        group = int(rng.choice([0, 0, 32, 64, 128]))
        if group and rng.random() < 0.9:
            k = group * int(rng.integers(1, 6))
        else:
            k = int(rng.choice([1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 127, 129, 255,
                                 int(rng.integers(1, 700))]))
        n = int(rng.choice([1, 2, 3, 15, 16, 17, 31, 33, 47, 64, 65, int(rng.integers(1, 130))]))
        m = int(rng.choice([1, 2, 3, 4, 5, 8, 17, 64, 65, 127, int(rng.integers(1, 301))]))
        while m * k * n > 3_000_000 and m > 1:
            m //= 2
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        q = rng.integers(lo, hi + 1, size=(k, n)).astype(np.int32)
        pack_valid = True
        if rng.random() < 0.05:
            q[rng.integers(k), rng.integers(n)] = int(rng.choice([lo - 1, hi + 1, 100, -128]))
            pack_valid = False
        case = {"bits": bits, "k": k, "n": n, "m": m, "group": group}
        want = self.pack_reference(np.clip(q, lo, hi), bits)
        packed, error = self.call("native.pack_weights", self.native.pack_weights, q, bits)
        if self.check_error("native.pack_weights", case, pack_valid, error):
            if not np.array_equal(packed, want):
                self.mismatch("native.pack_weights", case, "bytes differ from the layout")
        packed_tf, error = self.call("tf.pack_weights", self.tq.ops.pack_weights, q, bits)
        if self.check_error("tf.pack_weights", case, pack_valid, error):
            if not np.array_equal(packed_tf.numpy(), want):
                self.mismatch("tf.pack_weights", case, "bytes differ from the layout")
        if not pack_valid:
            return
        for name, fn in (("native.unpack_weights", self.native.unpack_weights),
                         ("tf.unpack_weights", self.tq.ops.unpack_weights)):
            back, error = self.call(name, fn, want, bits, k, n)
            if self.check_error(name, case, True, error) and not np.array_equal(
                    np.asarray(back), q):
                self.mismatch(name, case, "unpack(pack(q)) != q")
            if rng.random() < 0.2:  # a pack of the wrong size
                cut = want[:-int(rng.integers(1, 64))] if rng.random() < 0.5 else \
                    np.concatenate([want, np.zeros(3, np.uint8)])
                _, error = self.call(name, fn, cut, bits, k, n)
                self.check_error(name, case, False, error)
        self.matmul(case, want, bits, k, n, m, group)

    def matmul(self, case, packed, bits, k, n, m, group):
        rng = self.rng
        groups = 1 if group == 0 else k // group
        valid = group == 0 or k % group == 0
        scales = (rng.standard_normal((groups if valid else 1, n)) * 0.1).astype(np.float32)
        if rng.random() < 0.2:
            scales.flat[rng.integers(scales.size)] = rng.choice([0.0, -1.0, np.inf, 1e-40])
        if group == 0 and rng.random() < 0.5:
            scales = scales[0]
        bias = (rng.standard_normal(n)).astype(np.float32) if rng.random() < 0.5 else None
        x = self.values((m, k), 10.0 ** rng.uniform(-4, 4))
        if rng.random() < 0.1:
            x[rng.integers(m)] = 0.0
        fault = rng.choice(["none"] * 8 + ["packed", "scales", "bias", "group", "n"])
        args = dict(bits=bits, n=n, group_size=group)
        if fault == "packed":
            packed, valid = packed[:-1], False
        elif fault == "scales":
            scales, valid = np.zeros((groups + 1, n), np.float32), False
        elif fault == "bias":
            bias, valid = np.zeros(n + 1, np.float32), False
        elif fault == "group":
            args["group_size"], valid = int(rng.choice([1, 16, 48, 256])), False
        elif fault == "n":
            args["n"], valid = n + int(rng.choice([-1, 1, 16])), False
        case = dict(case, fault=str(fault), valid=valid, scales_shape=list(scales.shape))
        ref, error = self.call("native.packed_matmul", self.native.packed_matmul, x, packed,
                               scales, bias, variant="scalar", **args)
        have_ref = self.check_error("native.packed_matmul", case, valid, error)
        for variant in self.packed_variants[1:]:
            y, error = self.call("native.packed_matmul", self.native.packed_matmul, x, packed,
                                 scales, bias, variant=variant, **args)
            if self.check_error("native.packed_matmul", case, valid, error) and have_ref:
                if not self.same_bits(y, ref):
                    self.mismatch(f"native.packed_matmul[{variant}]", case, "y differs")
        lead = (m,) if rng.random() < 0.7 else (1, m)
        y, error = self.call("tf.packed_matmul", self.tq.ops.packed_matmul, x.reshape(lead + (k,)),
                             packed, scales, bias, **args)
        if self.check_error("tf.packed_matmul", case, valid, error) and have_ref:
            with self.ftz:  # as for fake quant: the op's variant, denormals flushed
                want = self.native.packed_matmul(x, packed, scales, bias, **args)
            self.calls["native.packed_matmul"] += 1
            if not self.same_bits(np.asarray(y).reshape(m, -1), want):
                self.mismatch("tf.packed_matmul", case, "y differs from _native")
        if valid and rng.random() < 0.1:  # no rows at all
            y, error = self.call("tf.packed_matmul", self.tq.ops.packed_matmul,
                                 np.zeros((0, k), np.float32), packed, scales, bias, **args)
            if self.check_error("tf.packed_matmul", case, True, error) and y.shape != (0, n):
                self.mismatch("tf.packed_matmul", case, f"M=0 gave shape {y.shape}")


    # ------------------------------------------------------ moving-average range

    @staticmethod
    def range_reference(x, old_min, old_max, observed, frozen, decay, symmetric):
        """TfquantMovingAverageRange in numpy float32, as its docstring states it."""
        f32 = np.float32
        if x.size == 0:
            lo, hi = f32(0), f32(0)
        elif np.isnan(x).any():
            lo = hi = f32(np.nan)
        else:
            lo, hi = min(x.min(), f32(0)), max(x.max(), f32(0))
        if symmetric:
            hi = f32(np.nan) if np.isnan(lo) or np.isnan(hi) else max(-lo, hi)
            lo = -hi
        first = observed < 0.5
        if not first:
            keep, take = f32(decay), f32(1.0 - decay)
            lo, hi = keep * f32(old_min) + take * lo, keep * f32(old_max) + take * hi
        if not (np.isfinite(lo) and np.isfinite(hi)) or (frozen > 0.5 and not first):
            return f32(old_min), f32(old_max)
        return f32(lo), f32(hi)

    def range_case(self):
        rng = self.rng
        shape = tuple(int(d) for d in rng.choice(DIMS, size=int(rng.integers(0, 4))))
        spread = 10.0 ** rng.uniform(-6, 6)
        # No denormals: TF runs the op with them flushed, numpy does not.
        x = np.asarray(rng.standard_normal(shape) * spread, np.float32)
        if x.size and rng.random() < 0.3:
            x.flat[rng.integers(x.size)] = rng.choice(SPECIALS)
        old = np.sort(np.asarray(rng.standard_normal(2) * 10.0 ** rng.uniform(-6, 6),
                                 np.float32))
        decay = float(rng.choice([0.0, 0.5, 0.9, 0.99, 0.999, rng.uniform(0, 1)]))
        observed, frozen = float(rng.random() < 0.7), float(rng.random() < 0.3)
        symmetric = bool(rng.random() < 0.3)
        fault = rng.choice(["none"] * 8 + ["decay", "shape"])
        old_min = old[0]
        valid = True
        if fault == "decay":
            decay, valid = float(rng.choice([1.0, -0.1, np.nan, 2.0])), False
        elif fault == "shape":
            old_min, valid = np.full(int(rng.integers(1, 3)), old[0], np.float32), False
        case = {"shape": list(shape), "spread": spread, "decay": decay, "observed": observed,
                "frozen": frozen, "symmetric": symmetric, "fault": str(fault),
                "old": [float(v) for v in old]}
        got, error = self.call("tf.moving_average_range", self.tq.ops.moving_average_range,
                               x, old_min, old[1], observed, frozen, decay=decay,
                               symmetric=symmetric)
        if not self.check_error("tf.moving_average_range", case, valid, error):
            return
        want = self.range_reference(x, old[0], old[1], observed, frozen, decay, symmetric)
        got = np.array([np.asarray(v) for v in got], np.float32)
        # Values, not bits: which zero a range of 0 gets is unspecified (range_kernels.cc).
        if not np.array_equal(got, np.array(want, np.float32), equal_nan=True):
            self.mismatch("tf.moving_average_range", case, f"{got.tolist()} vs {list(want)}")


    # ------------------------------------------------------ SeerNet convolution

    def seer_case(self):
        rng = self.rng
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        pool, bits = int(rng.choice([1, 2])), int(rng.choice([2, 4]))
        padding = str(rng.choice(["same", "valid"]))
        batch = int(rng.choice([0, 1, 1, 2, 3]))
        h, w = int(rng.integers(1, 21)), int(rng.integers(1, 90))
        cin, cout = int(rng.choice([1, 2, 3, 15, 16, 17, 33])), int(rng.choice([1, 5, 16, 17, 40]))
        x = self.values((batch, h, w, cin), 10.0 ** rng.uniform(-3, 3))
        kernel = (rng.standard_normal((kh, kw, cin, cout)) * 10.0 ** rng.uniform(-3, 1)
                  ).astype(np.float32)
        bias = (rng.standard_normal(cout) * 10.0 ** rng.uniform(-3, 1)).astype(np.float32)
        packed, scales = self.tq.ops.seer_predictor(kernel, bits)
        threshold = float(rng.choice([0.0, 0.0, -0.5, 0.5, -np.inf, np.inf]))
        conv_h = -(-h // sh) if padding == "same" else (h - kh) // sh + 1
        conv_w = -(-w // sw) if padding == "same" else (w - kw) // sw + 1
        valid = conv_h // pool >= 1 and conv_w // pool >= 1
        fault = rng.choice(["none"] * 8 + ["predictor", "scales", "bias", "channels", "pool"])
        if fault == "predictor":
            packed, valid = packed[:-1], False
        elif fault == "scales":
            scales, valid = np.ones(cout + 1, np.float32), False
        elif fault == "bias":
            bias, valid = np.zeros(cout + 1, np.float32), False
        elif fault == "channels":
            x, valid = np.concatenate([x, x[..., :1]], -1), False
        elif fault == "pool":
            pool, valid = 3, False
        args = dict(stride_h=sh, stride_w=sw, padding=padding.upper(), pool=pool, bits=bits,
                    threshold=threshold)
        case = {"x": list(x.shape), "kernel": list(kernel.shape), "strides": [sh, sw],
                "padding": padding, "pool": pool, "bits": bits, "threshold": threshold,
                "fault": str(fault)}
        ref, error = self.call("native.seer_conv2d", self.native.seer_conv2d, x, kernel, bias,
                               packed, scales, variant="scalar", **args)
        have_ref = self.check_error("native.seer_conv2d", case, valid, error)
        finite = bool(np.all(np.abs(x) < 1e30))  # no sum can overflow

        def agree(got, entry):
            # The same selection; sums in another order (seer_conv.h), so values agree to
            # rounding where the inputs are finite.
            y, count = got
            if count != ref[1] or y.shape != ref[0].shape:
                self.mismatch(entry, case, f"computed {count} vs {ref[1]}, shape {y.shape}")
            elif finite and not np.allclose(y, ref[0], rtol=1e-3,
                                            atol=1e-4 * (np.abs(ref[0]).max(initial=0) + 1)):
                self.mismatch(entry, case, "y differs beyond rounding")

        for variant in self.seer_variants[1:]:
            got, error = self.call("native.seer_conv2d", self.native.seer_conv2d, x, kernel,
                                   bias, packed, scales, variant=variant, **args)
            if self.check_error("native.seer_conv2d", case, valid, error) and have_ref:
                agree(got, f"native.seer_conv2d[{variant}]")
        got, error = self.call("tf.seer_conv2d", self.tq.ops.seer_conv2d, x, kernel, bias,
                               packed, scales, (sh, sw), padding, pool, bits, threshold)
        if self.check_error("tf.seer_conv2d", case, valid, error) and have_ref:
            with self.ftz:  # as for the packed matmul: the op's variant, denormals flushed
                want = self.native.seer_conv2d(x, kernel, bias, packed, scales, **args)
            self.calls["native.seer_conv2d"] += 1
            if int(got[1]) != want[1] or not self.same_bits(got[0], want[0]):
                self.mismatch("tf.seer_conv2d", case, "differs from _native")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="TF intra-op threads")
    args = parser.parse_args()
    tq = sanitized.use_sanitized_tfquant()
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    np.seterr(all="ignore")  # the inputs overflow on purpose
    fuzzer = Fuzzer(tq, np.random.default_rng(args.seed))
    for i in range(args.cases):
        (fuzzer.fake_quant_case, fuzzer.packed_case, fuzzer.range_case,
         fuzzer.seer_case)[i % 4]()
    print("RESULT " + json.dumps({
        "calls": dict(fuzzer.calls), "mismatches": [m for m in fuzzer.mismatches if m],
        "mismatch_count": len(fuzzer.mismatches), "expected_errors": fuzzer.expected_errors,

        "threads": args.threads}, default=str), flush=True)


if __name__ == "__main__":
    main()
