"""The quantizer interface and the registry that lets configs name quantizers.

The interface is TFMOT's `Quantizer` (docs/ARCHITECTURE.md §3.2): `build(tensor_shape, name,
layer)` creates the quantizer's variables with `layer.add_weight` and returns them in a
dict; `__call__(inputs, training, weights)` fake-quantizes `inputs` with them. So one
quantizer object serves tfquant's Keras 3 wrappers and a tf_keras TFMOT
`QuantizeConfig` alike. `Quantizer` is registered as a virtual subclass of TFMOT's
`Quantizer` ABC as soon as TFMOT is imported, before or after tfquant
(`register_with_tfmot`).
"""

import contextlib
import contextvars
import enum
import importlib.abc
import sys

_REGISTRY = {}
_EXPORTING = contextvars.ContextVar("tfquant_exporting", default=None)


class Deployment(enum.Enum):
    """How the numbers a quantizer produces reach a TFLite flatbuffer (docs/ARCHITECTURE.md §3.4)."""

    INT8 = "int8"  # exact: 8-bit integer tensors
    INT4 = "int4"  # exact: packed 4-bit weights (also 2-bit grids, which INT4 holds exactly)
    INT16 = "int16"  # exact: 16-bit activations (int16x8 kernels)
    INT8_WIDENED = "int8, widened"  # sub-8-bit activations in int8 tensors, values exact
    SIMULATION = "simulation"  # training only; export cannot keep these numbers
    FLOAT = "float"  # not quantized (weight-only models): a float32 tensor


@contextlib.contextmanager
def exporting(weight_grids=None, int8_low_bit_weights=False):
    """While active, inference-mode quantizers emit what the TFLite export runs:
    sub-8-bit activations as exact 8-bit grids (LiteRT has no 2–7-bit activations;
    `uniform.export_activation_fake_quant`), the kernels named in `weight_grids`
    ({(layer name, kernel name): WeightGrid}) on their integer grid, and with
    `int8_low_bit_weights` 2–4-bit weight grids on the finest int8 grid instead of INT4
    (see `uniform.deployable_weight_grid`)."""
    token = _EXPORTING.set({"weight_grids": dict(weight_grids or {}),
                            "int8_low_bit_weights": bool(int8_low_bit_weights)})
    try:
        yield
    finally:
        _EXPORTING.reset(token)


def export_weight_grid(layer_name, kernel_name):
    """The integer grid `exporting` set for a kernel, or None."""
    state = _EXPORTING.get()
    return None if state is None else state["weight_grids"].get((layer_name, kernel_name))


def export_low_bit_weights_as_int8():
    """True inside `exporting(int8_low_bit_weights=True)`."""
    state = _EXPORTING.get()
    return state is not None and state["int8_low_bit_weights"]


def is_exporting():
    """True inside `exporting()`."""
    return _EXPORTING.get() is not None


class Quantizer:
    """Base class: a fake-quantizer for one tensor of a layer.

    Subclasses implement `build`, `__call__`, `get_config` and `deployment`, and are
    registered with `@register_quantizer` so configs and saved models refer to them by
    name.
    """

    # False where the variables' shapes or meaning follow the bit width: `set_num_bits`
    # cannot change it after the build.
    bits_changeable = True
    # Attributes that record the builds (kept across `set_num_bits`).
    _BUILD_RECORDS = ("_builds",)

    def build(self, tensor_shape, name, layer):
        """Creates the quantizer's variables on `layer`; returns them by name."""
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        raise TypeError(f"{type(self).__name__} does not implement __call__")

    @property
    def num_bits(self):
        return self._num_bits

    def deployment(self):
        """The `Deployment` of this quantizer's output in an exported flatbuffer."""
        return Deployment.SIMULATION

    def set_num_bits(self, num_bits):
        """Changes the bit width in place: the Python state is made anew from the config
        with `num_bits` (so every bit-derived setting follows), the records of its builds
        kept; the variables are the caller's to re-initialize. ValueError when this
        quantizer cannot take `num_bits` or cannot change width at all."""
        name = type(self).__name__
        if not self.bits_changeable:
            raise ValueError(f"{name}'s variables depend on its bit width; it cannot "
                             "change bits after it is built.")
        try:
            fresh = type(self).from_config(dict(self.get_config(), num_bits=num_bits))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} cannot take {num_bits} bits ({error}).") from None
        for key, value in vars(fresh).items():
            if key not in self._BUILD_RECORDS:
                setattr(self, key, value)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# TFMOT's module holding its `Quantizer` ABC (tensorflow-model-optimization 0.8).
_TFMOT_QUANTIZERS = "tensorflow_model_optimization.python.core.quantization.keras.quantizers"


def register_with_tfmot():
    """Makes `Quantizer` a virtual subclass of TFMOT's `Quantizer` ABC, so TFMOT's checks
    (`QuantizeLayer` refuses input quantizers that are not TFMOT `Quantizer`s) accept
    tfquant quantizers. Imports TFMOT when it is installed; returns False when not.

    Done automatically when TFMOT is imported — before or after tfquant — without
    tfquant importing it (an import hook waits for TFMOT's module)."""
    module = sys.modules.get(_TFMOT_QUANTIZERS)
    if module is None:
        try:
            module = importlib.import_module(_TFMOT_QUANTIZERS)
        except ImportError:
            return False
    module.Quantizer.register(Quantizer)
    return True


class _RegisterWhenTfmotLoads(importlib.abc.MetaPathFinder):
    """Import hook: once TFMOT's quantizers module has executed, registers `Quantizer`
    with its ABC (see `register_with_tfmot`), then steps aside."""

    def find_spec(self, name, path, target=None):
        if name != _TFMOT_QUANTIZERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        execute = loader.exec_module

        def exec_module(module):
            execute(module)
            module.Quantizer.register(Quantizer)
            if self in sys.meta_path:
                sys.meta_path.remove(self)

        loader.exec_module = exec_module
        return spec


def _register_with_tfmot_when_loaded():
    if _TFMOT_QUANTIZERS in sys.modules:
        register_with_tfmot()
    elif not any(isinstance(f, _RegisterWhenTfmotLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenTfmotLoads())


def register_quantizer(cls):
    """Class decorator: makes `cls` known to `get_quantizer` and to saved models."""
    if cls.__name__ in _REGISTRY and _REGISTRY[cls.__name__] is not cls:
        raise ValueError(f"A quantizer named {cls.__name__!r} is already registered.")
    _REGISTRY[cls.__name__] = cls
    return cls


def registered_quantizers():
    """Names of every registered quantizer class."""
    return sorted(_REGISTRY)


def serialize_quantizer(quantizer):
    """A JSON-friendly dict that `deserialize_quantizer` turns back into `quantizer`."""
    if quantizer is None:
        return None
    return {"class_name": type(quantizer).__name__, "config": quantizer.get_config()}


def deserialize_quantizer(config):
    """Inverse of `serialize_quantizer`; also accepts a quantizer or a registered name."""
    if config is None or isinstance(config, Quantizer):
        return config
    if isinstance(config, str):
        return get_quantizer_class(config)()
    if isinstance(config, dict) and "class_name" in config:
        return get_quantizer_class(config["class_name"]).from_config(config.get("config", {}))
    raise ValueError(
        f"Cannot make a quantizer from {config!r}: expected a Quantizer, a registered "
        f"name ({', '.join(registered_quantizers())}) or a dict with 'class_name'."
    )


def get_quantizer_class(name):
    """The registered quantizer class called `name`."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown quantizer {name!r}; registered quantizers: "
            f"{', '.join(registered_quantizers())}."
        )
    return _REGISTRY[name]


get_quantizer = deserialize_quantizer

_register_with_tfmot_when_loaded()
