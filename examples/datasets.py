"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (no download at run time)."""

import gzip
import os

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")


def _read_idx(path, header_bytes):
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header_bytes)


def load_fashion_mnist(directory=None):
    """Returns ((x_train, y_train), (x_test, y_test)): images float32 in [0, 1] shaped
    (N, 28, 28, 1), labels int32. `directory` defaults to $TFQUANT_FASHION_MNIST_DIR or
    the Debian package's folder."""
    directory = directory or os.environ.get("TFQUANT_FASHION_MNIST_DIR", DEFAULT_DIR)
    files = {split: (os.path.join(directory, f"{split}-images-idx3-ubyte.gz"),
                     os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"))
             for split in ("train", "t10k")}
    missing = [p for pair in files.values() for p in pair if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            "Fashion-MNIST is missing (" + ", ".join(missing) + "). Install the Debian "
            "package: `sudo apt-get install dataset-fashion-mnist` (make demo / make test do "
            "this when apt is available), or set TFQUANT_FASHION_MNIST_DIR to a folder with "
            "the four idx .gz files."
        )
    result = []
    for split in ("train", "t10k"):
        images_path, labels_path = files[split]
        images = _read_idx(images_path, 16).reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
        labels = _read_idx(labels_path, 8).astype(np.int32)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} has {len(images)} images but {labels_path} "
                             f"has {len(labels)} labels.")
        result.append((images, labels))
    return tuple(result)
