"""Small Keras models shared by several test files."""

import keras
from keras import layers


def small_conv_model(name="small"):
    """Conv-BN-ReLU, global average pooling, Dense(3) on 8×8×1 inputs."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
