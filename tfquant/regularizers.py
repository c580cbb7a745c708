"""Quantization-robustness regularizers, as train-step hooks (`tfquant.keras.train_step`).

    hooked = tfquant.keras.train_step.with_hooks(model, [GradientL1(1e-2), Periodic(1e-4)])
    hooked.compile(...); hooked.fit(...)    # logs: loss, gradient_l1, periodic, ...

Each hook's strength λ is a non-trainable variable `strength` (a model variable once
attached, saved with it); `tfquant.callbacks.RegularizerSchedule` ramps it.

Which weights: the kernels of every `QuantizedConvolution` (as its weight quantizer sees
them: BN folded in with the moving statistics — the deployed kernel — and a depthwise
kernel with its channels flattened; the grid is the quantizer's), and of every float
Dense/convolution layer (their grid: symmetric per-output-channel max|w| at `num_bits`,
what `MinMaxWeightQuantizer` would use). The grid step Δ: `step` for quantizers that
learn one (LSQ, LSQ+); `max|w|/(2^(b−1) − 1)` per channel otherwise. Quantizers are
called in inference mode (no range updates, no initialization).
"""

import math

import keras
import tensorflow as tf
from keras import ops

from tfquant.keras import kernel_layout as layout
from tfquant.keras.quantized_convolution import QuantizedConvolution
from tfquant.keras.train_step import TrainStepHook
from tfquant.quantizers import _common as c
from tfquant.quantizers.uniform import MinMaxWeightQuantizer

_MIN_RANGE = 1e-8


class KernelView:
    """One kernel, as its quantizer sees it, with its grid.

    `seen()`: the kernel the quantizer takes (folded, flattened), differentiable in the
    variable; `quantize(t)`: the quantizer's inference output on `t`; `step(t)`: the grid
    step Δ broadcastable against `t`; `to_variable(t)`: maps a tensor like `seen()` back
    to the variable's space (unfold, unflatten).
    """

    def __init__(self, layer, name, variable, kind, quantizer, quantizer_vars, folded):
        self.layer, self.name, self.variable = layer, name, variable
        self.kind, self.quantizer, self.quantizer_vars = kind, quantizer, quantizer_vars
        self.folded = folded
        self.axis = layout.output_axis(kind)

    def _factor(self):
        return tf.stop_gradient(self.layer.fold_factor()) if self.folded else None

    def seen(self):
        kernel = ops.convert_to_tensor(self.variable)
        factor = self._factor()
        if factor is not None:
            kernel = layout.scale_output_channels(kernel, factor, self.kind)
        return layout.flat_kernel(kernel, self.kind)

    def to_variable(self, tensor):
        if self.kind == "depthwise":
            tensor = ops.reshape(tensor, self.variable.shape)
        factor = self._factor()
        if factor is not None:
            tensor = layout.scale_output_channels(tensor, 1.0 / factor, self.kind)
        return tensor

    def quantize(self, tensor):
        return self.quantizer(tensor, False, self.quantizer_vars)

    def step(self, tensor):
        q = self.quantizer
        bits = q.num_bits
        if "step" in self.quantizer_vars:
            step = tf.convert_to_tensor(self.quantizer_vars["step"])
            return c.per_channel(step, tensor, self.axis if q.per_channel else None)
        per_channel = getattr(q, "per_channel", True)
        axes = c.reduce_axes(tensor, self.axis if per_channel else None)
        limit = tf.reduce_max(tf.abs(tensor), axis=axes, keepdims=True)
        return tf.maximum(limit, _MIN_RANGE) / float(2 ** (bits - 1) - 1)


def kernel_views(model, num_bits=8):
    """A `KernelView` for every kernel of `model`'s QuantizedConvolution layers, and of
    its float Dense/convolution layers (grid: per-channel max at `num_bits`)."""
    views = []
    for layer in model.layers:
        if isinstance(layer, QuantizedConvolution):
            folded_name = layer.folded_kernel_name()
            for name in layer.kernel_names():
                views.append(KernelView(
                    layer, name, getattr(layer.layer, name), layer.kernel_layout(name),
                    layer.weight_quantizer, layer.kernel_variables[name],
                    layer.batch_norm is not None and name == folded_name))
            continue
        kind = layout.kernel_kind(layer)
        if kind is None:
            continue
        for name in layout.kernel_names(layer):
            sub_kind = layout.kernel_layout(kind, name)
            quantizer = MinMaxWeightQuantizer(num_bits, per_channel=True,
                                              axis=layout.output_axis(sub_kind))
            views.append(KernelView(layer, name, getattr(layer, name), sub_kind, quantizer,
                                    {}, False))
    return views


class _StrengthHook(TrainStepHook):
    """A hook with a scheduled strength λ (non-trainable variable `strength`)."""

    def __init__(self, strength, num_bits=8, **kwargs):
        super().__init__(**kwargs)
        self.initial_strength = float(strength)
        self.num_bits = int(num_bits)
        self.strength = self.add_weight(
            name="strength", shape=(), initializer=keras.initializers.Constant(
                self.initial_strength), trainable=False)
        self._views = []

    def attach(self, model):
        self._views = kernel_views(model, self.num_bits)
        if not self._views:
            raise ValueError(f"{type(self).__name__}: model {model.name!r} has no Dense or "
                             "convolution kernels to regularize.")

    def get_config(self):
        config = super().get_config()
        config.update(strength=self.initial_strength, num_bits=self.num_bits)
        return config


GRADIENT_L1_METHODS = ("double_backprop", "finite_difference")


def _l1_norm(tensors):
    return tf.add_n([tf.reduce_sum(tf.abs(t)) for t in tensors] or [tf.constant(0.0)])


@keras.saving.register_keras_serializable(package="tfquant")
class GradientL1(_StrengthHook):
    """Gradient-ℓ1 (Alizadeh et al. 2020): `λ·Σ_l ‖∂L/∂W_l‖₁` over the kernels W_l (the
    variables themselves). Makes the float model robust to later post-training
    quantization: a small gradient ℓ1 norm bounds the first-order loss change of any
    bounded weight perturbation, `|ΔL| ≤ ‖∇L‖₁·‖ΔW‖∞`.

    Its gradient is λ·H·sign(∂L/∂W) (H: the Hessian of L, its rows for every trainable
    variable). `method`:
      "double_backprop": exactly, by differentiating the gradient (one extra backward
        pass, and the outer backward pass goes through it);
      "finite_difference": H·d ≈ (∂L/∂θ(θ + ε·d) − ∂L/∂θ(θ))/ε with d = sign(∂L/∂W)
        on the kernels, as Karakida et al. (ICML 2023) compute gradient regularization:
        one more forward and backward pass at the perturbed kernels, so a step costs
        about twice a plain one. ε = `epsilon` × the RMS of the kernels. The
        approximation error is O(ε) on a smooth model; across the rounding steps of a
        fake-quantized kernel the difference sees the steps the weights cross.
    Measured in benchmarks/bench_training_controls.py and bench_qat_step.py.

    Its purpose is robustness of a float model to later post-training quantization; on
    a fake-quantized (QAT) model double backprop's second derivatives through the
    quantizers are the straight-through ones (`tfquant.ops.fake_quant`'s gradient op has
    a registered gradient: masks w.r.t. the incoming gradient, zero w.r.t. inputs and
    range).
    """

    def __init__(self, strength=0.01, method="double_backprop", epsilon=1e-2, **kwargs):
        if method not in GRADIENT_L1_METHODS:
            raise ValueError(f"GradientL1: method={method!r}; allowed: "
                             f"{', '.join(repr(m) for m in GRADIENT_L1_METHODS)}.")
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"GradientL1: epsilon={epsilon!r} must be a finite number > 0.")
        super().__init__(strength, **kwargs)
        self.method = method
        self.epsilon = float(epsilon)
        self.needs_loss_gradient = method == "double_backprop"
        self.uses_curvature = method == "finite_difference"

    def penalty(self, context):
        variables = [view.variable for view in self._views]
        return _l1_norm(context.loss_gradients(variables))

    def loss_terms(self, context):
        if self.uses_curvature:
            return {}  # the train step adds the term and its gradient
        return {self.name: self.strength * self.penalty(context)}

    def curvature_term(self, context, variables, loss_gradients):
        by_variable = {id(v): g for v, g in zip(variables, loss_gradients)}
        gradients = {id(view.variable): by_variable[id(view.variable)]
                     for view in self._views if id(view.variable) in by_variable}
        directions = {key: tf.sign(g) for key, g in gradients.items()}
        return self.strength, directions, _l1_norm(list(gradients.values()))

    def get_config(self):
        config = super().get_config()
        config.update(method=self.method, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="tfquant")
class Periodic(_StrengthHook):
    """Periodic regularizer (Naumov et al. 2018): `λ·Σ sin²(π·w/Δ)` over every kernel
    element as the quantizer sees it, Δ the current grid step (no gradient through Δ);
    zero exactly on the grid `kΔ`."""

    def __init__(self, strength=1e-4, **kwargs):
        super().__init__(strength, **kwargs)

    def penalty(self, model=None):
        total = []
        for view in self._views:
            w = view.seen()
            delta = tf.stop_gradient(view.step(w))
            total.append(tf.reduce_sum(tf.square(tf.sin(math.pi * w / delta))))
        return tf.add_n(total)

    def loss_terms(self, context):
        return {self.name: self.strength * self.penalty()}


@keras.saving.register_keras_serializable(package="tfquant")
class LearnableMSQE(_StrengthHook):
    """Learnable mean-squared quantization error (Choi, El-Khamy & Lee 2018):
    `Σ_l (e^{a_l}·MSQE_l − λ·a_l)`, `MSQE_l = mean((w − Q(w))²)` over layer l's kernel
    (Q(w) without gradient), `a_l` a trainable scalar per kernel (init 0). At the
    optimum of `a_l`, `e^{a_l} = λ/MSQE_l`: the penalty weight grows as the error
    shrinks. The `a_l` are model variables (variables `<layer>_<kernel>_msqe_log_weight`
    of this hook)."""

    def __init__(self, strength=1e-3, **kwargs):
        super().__init__(strength, **kwargs)
        self.log_weights = []

    def attach(self, model):
        super().attach(model)
        self.log_weights = [
            self.add_weight(name=f"{v.layer.name}_{v.name}_msqe_log_weight", shape=(),
                            initializer="zeros", trainable=True)
            for v in self._views]

    def msqe(self):
        """[MSQE_l] for every kernel."""
        errors = []
        for view in self._views:
            w = view.seen()
            errors.append(tf.reduce_mean(tf.square(w - tf.stop_gradient(view.quantize(w)))))
        return errors

    def loss_terms(self, context):
        terms = [tf.exp(a) * e - self.strength * a for a, e in zip(self.log_weights, self.msqe())]
        return {self.name: tf.add_n(terms)}


@keras.saving.register_keras_serializable(package="tfquant")
class ProxQuant(_StrengthHook):
    """ProxQuant (Bai, Wang & Liberty 2018): after every optimizer step each kernel (as
    its quantizer sees it) takes the proximal step of the ℓ1 distance to the quantized
    set, `w ← Q(w) + sign(w − Q(w))·max(|w − Q(w)| − λ_t, 0)` (a soft threshold toward the
    nearest grid point, applied in the variable's space through the BN fold), with
    `λ_t` = the `strength` variable; once the `hard` variable is 1 the step is the
    projection `w ← Q(w)` (hard freeze: the weights stay on the grid).

    `tfquant.callbacks.ProxQuantSchedule(hook)` grows `λ_t = strength_per_epoch·(epoch+1)`
    and sets `hard` at `freeze_epoch`.

    Args:
      strength_per_epoch: the growth of λ per epoch.
      freeze_epoch: the epoch from which weights are projected onto the grid (None:
        never).
    """

    def __init__(self, strength_per_epoch=1e-4, freeze_epoch=None, **kwargs):
        kwargs.pop("strength", None)
        super().__init__(0.0, **kwargs)
        self.strength_per_epoch = float(strength_per_epoch)
        self.freeze_epoch = None if freeze_epoch is None else int(freeze_epoch)
        self.hard = self.add_weight(name="hard", shape=(), initializer="zeros",
                                    trainable=False)

    def term_names(self):
        return ()

    def prox_step(self):
        """Applies the proximal step to every kernel (also usable outside `fit`)."""
        hard = tf.convert_to_tensor(self.hard) > 0.5
        strength = tf.convert_to_tensor(self.strength)
        for view in self._views:
            w = view.seen()
            q = view.quantize(w)
            diff = w - q
            soft = q + tf.sign(diff) * tf.maximum(tf.abs(diff) - strength, 0.0)
            view.variable.assign(view.to_variable(tf.where(hard, q, soft)))

    def after_apply_gradients(self, context):
        self.prox_step()

    def get_config(self):
        config = super().get_config()
        config.pop("strength", None)
        config.update(strength_per_epoch=self.strength_per_epoch,
                      freeze_epoch=self.freeze_epoch)
        return config
