"""Float32 quantizer math inside Keras layers under any dtype policy
(docs/ARCHITECTURE.md §3.3).

Under a mixed-precision policy ("mixed_float16", "mixed_bfloat16") Keras reads float
variables in the compute dtype inside a layer's `call`. tfquant's quantizer math is float32
(its C++ op is float32-only, and the training numbers must equal the exported integer
model's), so the wrappers compute inside `float32_math()`, on inputs cast to float32, and
cast their outputs back to the compute dtype. `float32_copy(model)` is what export converts.

This module is a leaf of `tfquant.keras`: it imports nothing of tfquant.
"""


import contextlib

import keras
import tensorflow as tf
from keras.src import backend as _keras3_backend


@contextlib.contextmanager
def float32_math():
    """Inside a layer's `call`: float variables read as float32 (autocast off)."""
    with _keras3_backend.AutocastScope(None):
        yield


def to_float32(x):
    """`x` as float32 (a no-op when it is already)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def to_compute_dtype(x, layer):
    """`x` cast to `layer`'s compute dtype when that is another float type."""
    dtype = tf.as_dtype(layer.compute_dtype)
    return x if not dtype.is_floating or x.dtype == dtype else tf.cast(x, dtype)


def _is_float32_policy(policy):
    name = getattr(policy, "name", policy)
    return name in (None, "float32")


def _float32_config(config):
    """`config` with every non-float32 dtype policy replaced by "float32"."""
    if isinstance(config, dict):
        result = {}
        for key, value in config.items():
            if key == "dtype" and isinstance(value, dict) and \
                    value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
                value = "float32" if value.get("config", {}).get("name") != "float32" else value
            elif key == "dtype" and isinstance(value, str) and value.startswith("mixed_"):
                value = "float32"
            else:
                value = _float32_config(value)
            result[key] = value
        return result
    if isinstance(config, list):
        return [_float32_config(item) for item in config]
    return config


def float32_copy(model):
    """`model` when all its layers compute in float32; else a copy in which they do,
    with the same weights.

    A model trained under a mixed-precision policy casts between float16/bfloat16 and
    float32 around tfquant's float32 quantizers; the TFLite converter keeps those casts
    as float ops (and an int8 model has no float16 tensors). The float32 copy computes
    the same fake-quantized numbers and converts cleanly: export it.
    """
    if all(_is_float32_policy(layer.dtype_policy) for layer in model._flatten_layers()
           if not isinstance(layer, keras.layers.InputLayer)):
        return model

    config = _float32_config(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy
