"""tfquant.ops.fake_quant and its raw ops reject bad arguments with messages that name
the value: the Python wrapper statically, the kernels (forward and gradient op) at run
time, and the process survives."""

import numpy as np
import pytest
import tensorflow as tf

from tfquant.ops import fake_quant
from fake_quant_helpers import OPS, assert_same_bits, tf_forward

X = np.linspace(-2, 2, 24).astype(np.float32).reshape(2, 3, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(min=-1.0, max=1.0, num_bits=1), r"num_bits=1 .*2\.\.16"),
    (dict(min=-1.0, max=1.0, num_bits=17), r"num_bits=17 .*2\.\.16"),
    (dict(min=-1.0, max=1.0, num_bits=True), r"num_bits=True"),
    (dict(min=-1.0, max=1.0, axis=3), r"axis=3 .*rank 3.*-3\.\.2"),
    (dict(min=-1.0, max=1.0, axis=-4), r"axis=-4 "),
    (dict(min=-1.0, max=1.0, axis=1), r"min must be 1-D"),
    (dict(min=np.zeros(3, np.float32), max=np.ones(3, np.float32)), r"axis=None .*min .*shape \(3,\)"),
    (dict(min=np.zeros(4, np.float32), max=np.ones(4, np.float32), axis=1), r"min has 4 elements .*3 along axis 1"),
    (dict(min=np.zeros(3, np.float32), max=np.ones(2, np.float32), axis=1), r"max has 2 elements"),
])
def test_wrapper_rejects_static_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fake_quant(X, **kwargs)


def raw_op(x, mn, mx, **attrs):
    return OPS.tfquant_fake_quant(x, mn, mx, **attrs)


@pytest.mark.parametrize("mn,mx,attrs,match", [
    (-1.0, 1.0, dict(num_bits=1), r"num_bits = 1 .*2\.\.16"),
    (-1.0, 1.0, dict(num_bits=17), r"num_bits = 17 .*2\.\.16"),
    (-1.0, 1.0, dict(num_bits=-5), r"num_bits = -5"),
    (2.0, 1.0, {}, r"min = 2 is greater than max = 1"),
    (np.nan, 1.0, {}, r"min = nan is not finite"),
    (-1.0, np.inf, {}, r"max = inf is not finite"),
    ([-1, -1, 3], [1, 1, 2], dict(axis=1), r"min\[2\] = 3 is greater than max\[2\] = 2"),
    ([-1, -np.inf, -1], [1, 1, 1], dict(axis=1), r"min\[1\] = -inf is not finite"),
    ([-1, -1, -1], [1, 1, 1], dict(axis=5), r"axis = 5 is out of range .*rank 3.*-3\.\.2"),
    ([-1, -1, -1], [1, 1, 1], dict(axis=-4), r"axis = -4 is out of range"),
    ([-1, -1, -1, -1], [1, 1, 1, 1], dict(axis=1), r"min has 4 elements .*dimension 1 .*size 3"),
    ([-1, -1, -1], [1, 1], dict(axis=1), r"max has 2 elements"),
    (-1.0, [1, 1, 1], dict(axis=1), r"rank 0 and max of rank 1"),
    ([[-1.0]], [[1.0]], {}, r"min of rank 2"),
])
def test_op_rejects_bad_arguments(mn, mx, attrs, match):
    # Eager: the kernel's OP_REQUIRES checks.
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        raw_op(X, np.asarray(mn, np.float32), np.asarray(mx, np.float32), **attrs)
    # Gradient op: same checks.
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        OPS.tfquant_fake_quant_grad(X, X, np.asarray(mn, np.float32), np.asarray(mx, np.float32), **attrs)
    # The process survives and the op still works.
    assert_same_bits(raw_op(X, np.float32(-1), np.float32(1)).numpy(),
                     tf_forward(X, np.float32(-1), np.float32(1), 8, False, None))


def test_static_shape_errors_in_graph_name_the_value():
    @tf.function
    def f(x, mn, mx):
        return raw_op(x, mn, mx, axis=7)

    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"axis = 7"):
        f(tf.constant(X), tf.zeros([3]), tf.ones([3]))


def test_grad_op_rejects_mismatched_gradient_shape():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gradients shape \[2,3\] must equal inputs shape \[2,3,4\]"):
        OPS.tfquant_fake_quant_grad(X[..., 0], X, np.float32(-1), np.float32(1))


def test_range_gradient_is_checked():
    with pytest.raises(ValueError, match=r"range_gradient='lsq' .*'clipped', 'learned'"):
        fake_quant(X, -1.0, 1.0, range_gradient="lsq")
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="range_gradient"):
        OPS.tfquant_fake_quant_grad(X, X, np.float32(-1), np.float32(1), range_gradient="lsq")
