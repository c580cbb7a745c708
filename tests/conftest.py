import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))


@pytest.fixture(scope="session")
def fashion_mnist_small():
    """4000 training and 1000 test images of the real Fashion-MNIST."""
    from datasets import load_fashion_mnist

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    return (x_train[:4000], y_train[:4000]), (x_test[:1000], y_test[:1000])


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
