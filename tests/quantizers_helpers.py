"""Shared by the test_quantizers_*.py files: the sample weights and activations and
the helpers that build a quantizer's variables and take its gradients.

RNG is drawn from in test order by test_quantizers_gradients.py only: WEIGHTS and ACTS
come first, as they always did."""

import keras
import numpy as np
import tensorflow as tf

RNG = np.random.default_rng(7)
WEIGHTS = RNG.normal(0.0, 0.1, size=(24, 6)).astype(np.float32)  # a Dense kernel
ACTS = np.abs(RNG.normal(0.0, 1.0, size=(8, 12))).astype(np.float32)  # ReLU outputs


def build(quantizer, x, activation):
    """Variables of `quantizer` on a throwaway layer; activation shapes get a None batch."""
    host = keras.layers.Layer()
    shape = (None,) + tuple(x.shape[1:]) if activation else tuple(x.shape)
    return host, quantizer.build(shape, "t", host)


def grads(quantizer, x, variables, upstream, training=True):
    x = tf.constant(x)
    trainable = [v for v in variables.values() if v.trainable]
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x, training, variables)
        loss = tf.reduce_sum(y * upstream)
    dx, *dv = tape.gradient(loss, [x] + trainable)
    return y.numpy(), dx.numpy(), [None if g is None else g.numpy() for g in dv]
