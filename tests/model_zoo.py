"""Small Keras models, their building blocks and their float training, shared by several
test files."""

import keras
import numpy as np
from keras import layers

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_bn_relu(x, filters, kernel_size, names=("conv", "bn", "relu"), **conv_kwargs):
    """Conv2D without bias, BatchNormalization, ReLU (the layers named `names`)."""
    conv, bn, relu = names
    x = layers.Conv2D(filters, kernel_size, use_bias=False, name=conv, **conv_kwargs)(x)
    x = layers.BatchNormalization(name=bn)(x)
    return layers.ReLU(name=relu)(x)


def pooled_dense_head(x, units, classes, names=("gap", "hidden", "head")):
    """Global average pooling, Dense(units, ReLU), Dense(classes) (the layers named
    `names`)."""
    gap, hidden, head = names
    x = layers.GlobalAveragePooling2D(name=gap)(x)
    x = layers.Dense(units, activation="relu", name=hidden)(x)
    return layers.Dense(classes, name=head)(x)


def small_conv_model(name="small"):
    """Conv-BN-ReLU, global average pooling, Dense(3) on 8×8×1 inputs."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = conv_bn_relu(inputs, 4, 3)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def small_conv_data(seed, n):
    """`n` random images in [0, 1) for `small_conv_model` and labels of its 3 classes."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, n)


def subclassed_model(keras_module=keras):
    """A subclassed model `Net` (one Dense(2)), of `keras_module` (keras or tf_keras)."""

    class Net(keras_module.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras_module.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    return Net()


def train_float(build, seed, train, metrics=None):
    """`build()` under random seed `seed`, trained 2 epochs in float on `train`
    ((images, labels); Adam 3e-3, batches of 64)."""
    x_train, y_train = train
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LOSS, metrics=metrics)
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    return model
