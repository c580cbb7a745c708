"""Where the quantizers of a `quantize_model` result live, and how PTQ reads and writes
them: calibration batches, writing ranges and grid-exact weights. (Running the model
with its quantizers bypassed is `tfquant.keras.slots.quantizers_bypassed`.)"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.keras.config import layer_matches
from tfquant.keras.kernel_layout import scale_output_channels
from tfquant.keras.quantized_convolution import QuantizedConvolution
from tfquant.keras.slots import quantizer_slots

# -- data ----------------------------------------------------------------------------------


def _to_inputs(element, num_inputs):
    """Model inputs from one element of the data: `x`, `(x, y[, w])`, or for several
    inputs a list/tuple/dict of arrays (optionally inside `(inputs, y)`)."""
    if isinstance(element, dict):
        return list(element.values())
    if isinstance(element, (list, tuple)):
        if num_inputs == 1:
            return [element[0]] if not _is_array(element) else [element]
        if len(element) == num_inputs and all(_is_array(e) for e in element):
            return list(element)
        return _to_inputs(element[0], num_inputs)
    return [element]


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def calibration_batches(data, num_inputs=1, batch_size=32, max_batches=None):
    """The calibration data as a list of batches (each a list of numpy arrays, one per
    model input). `data`: an array (or list of arrays for several inputs), a
    `tf.data.Dataset` (batched or not), or a generator/iterable of batches."""
    if data is None:
        raise ValueError("calibration data is required here (arrays, a tf.data.Dataset or "
                         "a generator of batches).")
    batches = []
    if _is_array(data) or (isinstance(data, (list, tuple)) and num_inputs > 1
                           and len(data) == num_inputs and all(_is_array(d) for d in data)):
        arrays = [np.asarray(d) for d in (data if isinstance(data, (list, tuple)) else [data])]
        total = len(arrays[0])
        for start in range(0, total, batch_size):
            batches.append([a[start:start + batch_size] for a in arrays])
            if max_batches and len(batches) >= max_batches:
                break
    else:
        iterator = (data.as_numpy_iterator() if isinstance(data, tf.data.Dataset)
                    else iter(data))
        for element in iterator:
            arrays = [np.asarray(a) for a in _to_inputs(element, num_inputs)]
            batches.append(arrays)
            if max_batches and len(batches) >= max_batches:
                break
    if not batches:
        raise ValueError("the calibration data is empty.")
    return batches


def fix_batch_rank(batches, model):
    """Adds a batch axis to unbatched samples (a tf.data.Dataset that was not batched)."""
    fixed = []
    for batch in batches:
        fixed.append([a[None] if a.ndim == len(t.shape) - 1 else a
                      for a, t in zip(batch, model.inputs)])
    return fixed


def model_inputs(model):
    """`model.inputs` as a Functional model expects them (a single tensor for one input)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def run(model, batch):
    return model(batch[0] if len(batch) == 1 else batch, training=False)


# -- quantizer sites ------------------------------------------------------------------------


@dataclasses.dataclass
class Site:
    """One activation quantizer: `getattr(layer, attr)`, its variables, the layer whose
    output it quantizes (`owner`), and the names a per-layer rule may match."""

    layer: object
    attr: str
    variables: dict
    owner: object
    names: tuple

    @property
    def quantizer(self):
        return getattr(self.layer, self.attr)

    @property
    def key(self):
        return f"{self.layer.name}/{self.attr}"


def _producer(layer):
    try:
        tensor = layer._inbound_nodes[0].input_tensors[0]
        producer = tensor._keras_history[0]
    except (IndexError, AttributeError):
        return None
    return producer.layer if isinstance(producer, QuantizedConvolution) else producer


def activation_sites(qmodel):
    """A `Site` for every activation quantizer of `qmodel` (its quantizer slots)."""
    sites = []
    for slot in quantizer_slots(qmodel, weights=False):
        layer = slot.layer
        if isinstance(layer, ActivationFakeQuant):
            owner = _producer(layer)
            names = (layer.name,) + ((owner.name,) if owner is not None else ())
        else:
            owner, names = getattr(layer, "layer", None), (layer.name,)
        sites.append(Site(layer, slot.attr, slot.variables, owner, names))
    return sites


def wrappers(qmodel):
    return [layer for layer in qmodel.layers if isinstance(layer, QuantizedConvolution)]


def choose(spec, names, owner, default):
    """`spec` itself, or for a dict the value of the first key matching the layer."""
    if not isinstance(spec, dict):
        return spec
    for entry, value in spec.items():
        if layer_matches(entry, owner, names):
            return value
    return default


def set_range(site, lo, hi):
    """Writes a range into a MovingAverageQuantizer's variables (marks it observed)."""
    variables = site.variables
    variables["min"].assign(float(lo))
    variables["max"].assign(float(hi))
    if "observed" in variables:
        variables["observed"].assign(1.0)


# -- kernels of a wrapper -----------------------------------------------------------------


def folded_kernels(wrapper):
    """{name: folded float kernel as numpy (BN folded in, layout of the layer)}."""
    kernels, _ = wrapper.folded_kernels_and_bias()
    return {k: np.asarray(keras.ops.convert_to_numpy(v), np.float64) for k, v in kernels.items()}


def fold_factor(wrapper):
    """γ/σ of the folded BN per output channel, or None."""
    factor = wrapper.fold_factor()
    return None if factor is None else keras.ops.convert_to_numpy(factor).astype(np.float64)


def write_folded_kernel(wrapper, name, folded):
    """Stores `folded` (the wanted deployed kernel, BN folded in) in the wrapped layer:
    divided by the BN fold factor where one applies (channels with a zero factor keep
    their weights)."""
    folded = np.asarray(folded, np.float64)
    factor = fold_factor(wrapper)
    target = wrapper.folded_kernel_name()
    variable = getattr(wrapper.layer, name)
    if factor is not None and name == target:
        kind = wrapper.kernel_layout(name)
        current = np.asarray(keras.ops.convert_to_numpy(variable), np.float64)
        raw = scale_output_channels(folded, 1.0 / np.where(factor != 0, factor, 1.0), kind)
        keep = scale_output_channels(np.ones_like(folded), (factor == 0).astype(np.float64),
                                     kind)
        folded = np.where(np.asarray(keep) > 0, current, np.asarray(raw))
    variable.assign(folded.astype(np.float32))


def add_to_bias(wrapper, delta):
    """Adds `delta` to the deployed bias of `wrapper` (through the folded BN's β when
    there is one). Returns False when the layer has nowhere to put it."""
    delta = np.asarray(delta, np.float64)
    bn = wrapper.batch_norm
    if bn is not None and bn.center:
        bn.beta.assign((keras.ops.convert_to_numpy(bn.beta) + delta).astype(np.float32))
        return True
    if bn is not None:
        return False
    bias = wrapper.layer_bias()
    if bias is None:
        return False
    bias.assign((keras.ops.convert_to_numpy(bias) + delta).astype(np.float32))
    return True
