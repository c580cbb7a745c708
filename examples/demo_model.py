"""The demo CNN of examples/fashion_mnist.py, shared with the benchmarks."""


def build_float_model():
    """The demo CNN: conv-BN-ReLU, a depthwise residual block, conv-BN-ReLU, GAP, Dense."""
    import keras
    from keras import layers

    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dwconv")(x)
    y = layers.BatchNormalization(name="bn_dw")(y)
    y = layers.ReLU(name="relu_dw")(y)
    y = layers.Conv2D(32, 1, use_bias=False, name="pwconv")(y)
    y = layers.BatchNormalization(name="bn_pw")(y)
    x = layers.Add(name="residual")([x, y])
    x = layers.ReLU(name="relu_res")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="fashion_cnn")
