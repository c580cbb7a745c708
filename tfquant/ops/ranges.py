"""The moving-average range update of `MovingAverageQuantizer` as one C++ op.

`moving_average_range` gives the same float32 bits as the composed TensorFlow version
in `tfquant.quantizers.uniform.MovingAverageQuantizer._observe` (about 35 ops per
quantizer), for a fraction of the executor overhead. XLA cannot compile it: callers
keep the composed version in XLA contexts.
"""

import tensorflow as tf

from tfquant.ops import _library

_ops = _library.load_op_library()


def moving_average_range(x, old_min, old_max, observed, frozen=0.0, decay=0.99,
                         symmetric=False, name=None):
    """The new (min, max) range from the batch `x` (float32 scalars, no gradient).

    Args:
      x: float32 tensor of any shape (may be empty: its batch range is [0, 0]).
      old_min, old_max: the current range (float32 scalars).
      observed: < 0.5 before the first batch, which then sets the range directly.
      frozen: > 0.5 keeps the range once a batch has been observed.
      decay: in [0, 1): `r ← decay·r + (1 − decay)·r_batch`, both factors rounded to
        float32 from Python's double, as the composed version rounds them.
      symmetric: the batch range is `[-m, m]`, m = max(−min(x, 0), max(x, 0)).

    The batch range is `[min(reduce_min(x), 0), max(reduce_max(x), 0)]`; a NaN in x,
    or a new range that is not finite, keeps the old range.
    """
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"moving_average_range: decay={decay!r} must be in [0, 1).")
    with tf.name_scope(name or "moving_average_range"):
        scalars = [tf.cast(v, tf.float32) for v in (old_min, old_max, observed, frozen)]
        for label, value in zip(("old_min", "old_max", "observed", "frozen"), scalars):
            if value.shape.rank is not None and value.shape.rank != 0:
                raise ValueError(f"moving_average_range: {label} must be a scalar; got "
                                 f"shape {value.shape}")
        return _ops.tfquant_moving_average_range(
            tf.cast(x, tf.float32), *scalars, decay=decay, one_minus_decay=1.0 - decay,
            symmetric=bool(symmetric))


try:
    tf.no_gradient("TfquantMovingAverageRange")
except KeyError:  # already registered (module reloaded)
    pass
