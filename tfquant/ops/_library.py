"""Loads tfquant's compiled parts and checks they match the installed TF.

The TF op library (tfquant/_tfquant_ops*.so) is loaded once with
tf.load_op_library. The native module records the TensorFlow version both
were compiled against; a C++ op library built for another TensorFlow can
crash the process, so a mismatch is refused with an ImportError.
"""

import functools
import importlib.machinery
import os

import tensorflow as tf

REBUILD_HINT = (
    "Rebuild tfquant's C++ parts against the installed TensorFlow with "
    "`pip install --no-build-isolation -e .` in the tfquant source tree "
    "(or run `make test` / `make demo`, which rebuild)."
)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OP_LIBRARY_NAME = "_tfquant_ops"


def _describe(built_for):
    return f"TensorFlow {built_for}" if built_for else "an unknown TensorFlow version"


def check_build(built_for, installed):
    """Raises ImportError unless the C++ parts were built for `installed`.

    built_for: the TF version recorded at build time (None if unknown);
    installed: tf.__version__.
    """
    if built_for and built_for == installed:
        return
    raise ImportError(
        f"tfquant's C++ ops were built for {_describe(built_for)}, but "
        f"TensorFlow {installed} is installed. {REBUILD_HINT}"
    )


def _built_for_version():
    try:
        from tfquant import _native
    except ImportError as e:
        raise ImportError(
            f"tfquant's native module (tfquant._native) is missing or failed to "
            f"load ({e}); TensorFlow {tf.__version__} is installed. {REBUILD_HINT}"
        ) from e
    return _native.build_info().get("tf_version")


def _op_library_path():
    # Prefer the file built for this interpreter if several are present.
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_PACKAGE_DIR, _OP_LIBRARY_NAME + suffix)
        if os.path.exists(path):
            return path
    return None


@functools.lru_cache(maxsize=None)
def load_op_library():
    """Returns the module of generated op wrappers (cached)."""
    built_for = _built_for_version()
    check_build(built_for, tf.__version__)
    path = _op_library_path()
    if path is None:
        raise ImportError(
            f"tfquant's TF op library ({_OP_LIBRARY_NAME}*.so) was not found in "
            f"{_PACKAGE_DIR}; the native module was built for {_describe(built_for)}, "
            f"TensorFlow {tf.__version__} is installed. {REBUILD_HINT}"
        )
    try:
        return tf.load_op_library(path)
    except (tf.errors.OpError, OSError) as e:
        raise ImportError(
            f"tfquant's TF op library {path} failed to load ({e}); it was built "
            f"for {_describe(built_for)}, TensorFlow {tf.__version__} is installed. "
            f"{REBUILD_HINT}"
        ) from e
