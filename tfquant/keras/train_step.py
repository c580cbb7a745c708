"""Train-step hooks: extra loss terms and post-update steps that compose inside `fit`.

`with_hooks(model, hooks)` returns a `QuantizedModel`: a Functional model over the same
layers and variables as `model` (typically what `quantize_model` returned; a float model
works too) whose `train_step` runs every hook:

    qmodel = tfquant.quantize_model(model)
    hooked = with_hooks(qmodel, [GradientL1(1e-3), Distillation(model), ProxQuant(1e-4)])
    hooked.compile(optimizer, loss); hooked.fit(ds, callbacks=[...])
    tfquant.export_tflite(qmodel, ...)          # the same variables, without the hooks

One training step (all of it inside the `tf.function` Keras traces):
  1. forward `y_pred = model(x, training=True)` (plus the outputs of the layers a hook
     asks for with `feature_layers`), the compiled loss `L`; when a hook needs `∂L/∂W`
     (gradient-ℓ1) this runs under a second, inner tape, so that gradient is itself
     differentiable (double backprop: one extra backward pass, and the outer backward
     pass goes through the inner one);
  2. every hook's `loss_terms(context)` → {name: scalar}; the total `L + Σ terms` is
     what the optimizer minimizes and what `loss` in the logs reports; each term is
     also logged under its name (a `Mean` metric; evaluation logs leave them out);
  3. the optimizer step;
  4. every hook's `after_apply_gradients(context)` (ProxQuant's proximal step).

A hook with `uses_curvature = True` (gradient-ℓ1 with `method="finite_difference"`)
instead has its term λ·φ(∂L/∂θ) differentiated by a forward finite difference, as
Karakida et al. (ICML 2023) compute gradient regularization: its gradient λ·H·d, with
d = ∂φ/∂(∂L/∂θ) the hook's `curvature_term`, is (∂L/∂θ(θ + εd) − ∂L/∂θ(θ))/ε, one more
forward and backward pass at the perturbed weights instead of double backprop. That
pass sees the same batch, the same dropout masks and the same BN and range state as the
first, and leaves no state behind: the model's non-trainable variables (moving
statistics, quantizer ranges, seed generators) are restored around it.

Hooks are Keras layers, tracked by the model: their variables (a regularizer's strength
λ, learnable-MSQE's `a`, a distillation teacher's weights) are model variables, trained
when trainable, and saved in `.keras` files with the model; `QuantizedModel` and the
hooks are registered serializables, so `keras.models.load_model` needs no
`custom_objects` once `tfquant` is imported.
"""

import contextlib

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.losses import loss as loss_module
from keras.src.models.functional import Functional
from keras.src.trainers.data_adapters import data_adapter_utils


class _Untracked:
    """Holds objects the Keras tracker and the `.keras` writer must not see."""

    def __init__(self, **values):
        self.__dict__.update(values)


class StepContext:
    """What a hook sees of one training step.

    Attributes:
      model: the `QuantizedModel` being trained.
      x, y, sample_weight: the batch.
      y_pred: the model's training-mode output.
      loss: the compiled loss (with the model's own `add_loss` terms), before hooks.
      features: {layer name: training-mode output} for every hook's `feature_layers`.
    """

    def __init__(self, model, x, y, sample_weight, y_pred, loss, features, loss_tape):
        self.model = model
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.y_pred = y_pred
        self.loss = loss
        self.features = features
        self._loss_tape = loss_tape

    def loss_gradients(self, variables):
        """`∂loss/∂v` for each variable, differentiable (double backprop). Only for
        hooks with `needs_loss_gradient = True`."""
        if self._loss_tape is None:
            raise ValueError("loss_gradients needs a hook with needs_loss_gradient = True.")
        grads = self._loss_tape.gradient(self.loss, variables)
        return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]


@keras.saving.register_keras_serializable(package="tfquant")
class TrainStepHook(keras.layers.Layer):
    """Base class of train-step hooks (a Keras layer, so its variables are tracked).

    Override any of:
      `attach(model)`: called once by `QuantizedModel`, before training: make the
        variables that depend on the model (with `self.add_weight`).
      `feature_layers()`: names of layers whose training-mode outputs the hook reads
        from `context.features`.
      `loss_terms(context)`: {metric name: scalar tensor} added to the loss.
      `after_apply_gradients(context)`: runs after the optimizer step.
    Set the class attribute `needs_loss_gradient = True` to use
    `context.loss_gradients`; set `uses_curvature = True` and override
    `curvature_term` for a term whose gradient the step takes by a finite difference
    (at most one such hook per model).
    """

    needs_loss_gradient = False
    uses_curvature = False

    @property
    def metrics(self):
        # A hook may hold a compiled model (the distillation teacher); its compile
        # metrics would join the student's logs unbuilt and break `fit`.
        return []

    def attach(self, model):
        pass

    def feature_layers(self):
        return ()

    def term_names(self):
        """The names `loss_terms` returns (the metrics logged); default the layer name."""
        return (self.name,)

    def loss_terms(self, context):
        return {}

    def after_apply_gradients(self, context):
        pass

    def curvature_term(self, context, variables, loss_gradients):
        """For `uses_curvature` hooks: (λ, directions, φ) for the term λ·φ(∂L/∂θ), given
        the trainable `variables` and `loss_gradients` ∂L/∂θ (zeros for unused ones).
        `directions`: {id(variable): d} with d = ∂φ/∂(∂L/∂v), for the variables φ
        reads; φ: the scalar logged under the hook's name."""
        return None

    def call(self, inputs):
        return inputs


def _unique(names):
    seen = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen


@keras.saving.register_keras_serializable(package="tfquant")
class QuantizedModel(Functional):
    """A Functional model whose `train_step` runs `train_step_hooks` (see module doc).

    Build it with `with_hooks(model, hooks)`. With no hooks it trains exactly as the
    plain Functional model.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        hooks = kwargs.pop("train_step_hooks", None) or []
        super().__init__(inputs, outputs, name=name, **kwargs)
        hooks = [h if isinstance(h, TrainStepHook) else keras.saving.deserialize_keras_object(h)
                 for h in hooks]
        names = [h.name for h in hooks]
        if len(set(names)) != len(names):
            raise ValueError(f"Train-step hooks need distinct names; got {names}.")
        curvature = [h.name for h in hooks if h.uses_curvature]
        for hook in hooks:
            if hook.uses_curvature and (type(hook).curvature_term
                                        is TrainStepHook.curvature_term):
                raise ValueError(f"Train-step hook {hook.name!r} sets uses_curvature but does "
                                 "not override curvature_term.")
        if len(curvature) > 1:
            raise ValueError(f"At most one train-step hook may take its gradient by a finite "
                             f"difference; got {curvature}.")
        self.train_step_hooks = hooks
        for hook in hooks:
            hook.attach(self)
            hook.built = True
        term_names = _unique(n for h in hooks for n in h.term_names())
        self._hook_term_trackers = {n: keras.metrics.Mean(name=n) for n in term_names}
        feature_names = _unique(n for h in hooks for n in h.feature_layers())
        feature_model = None
        if feature_names:
            outputs_list = tree.flatten(self.outputs)
            feature_model = keras.Model(
                self.input, outputs_list + [self.get_layer(n).output for n in feature_names])
        self._hook_state = _Untracked(feature_names=feature_names, feature_model=feature_model)

    def get_config(self):
        config = super().get_config()
        config["train_step_hooks"] = [keras.saving.serialize_keras_object(h)
                                      for h in self.train_step_hooks]
        return config

    def _forward(self, x):
        state = self._hook_state
        if state.feature_model is None:
            return self(x, training=True), {}
        results = state.feature_model(x, training=True)
        count = len(tree.flatten(self.outputs))
        flat_outputs, extra = results[:count], results[count:]
        y_pred = tree.pack_sequence_as(self._outputs_struct, flat_outputs) \
            if hasattr(self, "_outputs_struct") else (
                flat_outputs[0] if count == 1 else flat_outputs)
        return y_pred, dict(zip(state.feature_names, extra))

    def train_step(self, data):
        hooks = list(self.train_step_hooks)
        if not hooks:
            return super().train_step(data)
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        needs_gradient = any(h.needs_loss_gradient for h in hooks)
        curvature = next((h for h in hooks if h.uses_curvature), None)
        inner = (tf.GradientTape(persistent=True) if needs_gradient
                 else contextlib.nullcontext())
        # The state the finite-difference pass starts from, read before the forward.
        state = ([tf.identity(tf.convert_to_tensor(v)) for v in self.non_trainable_variables]
                 if curvature is not None else None)
        with tf.GradientTape(persistent=curvature is not None) as tape:
            with inner as loss_tape:
                y_pred, features = self._forward(x)
                loss = self._compute_loss(x=x, y=y, y_pred=y_pred,
                                          sample_weight=sample_weight, training=True)
            context = StepContext(self, x, y, sample_weight, y_pred, loss, features,
                                  loss_tape if needs_gradient else None)
            total = loss
            for hook in hooks:
                for term_name, term in hook.loss_terms(context).items():
                    term = tf.cast(term, total.dtype)
                    self._hook_term_trackers[term_name].update_state(term)
                    total = total + term
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_weights
        gradients = tape.gradient(scaled, variables)
        if curvature is not None:
            gradients, term = self._curvature_gradients(
                curvature, context, tape, total is loss, variables, gradients, state)
            self._hook_term_trackers[curvature.name].update_state(term)
            total = total + term
            del tape
        batch = tf.shape(next(i for i in tree.flatten(x) if i is not None))[0]
        self._loss_tracker.update_state(
            loss_module.unscale_loss_for_distribution(total), sample_weight=batch)
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(gradients, variables) if g is not None])
        for hook in hooks:
            hook.after_apply_gradients(context)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _curvature_gradients(self, hook, context, tape, only_loss, variables, gradients,
                             state):
        """`gradients` plus λ·H·d by a forward finite difference (module doc), and the
        term λ·φ. `only_loss`: no other hook added a term, so `gradients` are ∂L/∂θ."""
        def zeros_for_none(grads):
            return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]

        scale = self.optimizer.scale_loss(tf.constant(1.0, context.loss.dtype))
        loss_gradients = zeros_for_none(
            gradients if only_loss else tape.gradient(self.optimizer.scale_loss(context.loss),
                                                      variables))
        strength, directions, penalty = hook.curvature_term(
            context, variables, [g / scale for g in loss_gradients])
        term = tf.cast(strength * penalty, context.loss.dtype)
        moved = [(v, directions[id(v)]) for v in variables if id(v) in directions]
        if not moved:  # every kernel the term reads is frozen: it has no gradient
            return zeros_for_none(gradients), term
        saved = [tf.identity(tf.convert_to_tensor(v)) for v, _ in moved]
        # ε: a fraction of the RMS of the perturbed weights, so that the step is the same
        # relative size in every model.
        count = tf.add_n([tf.cast(tf.size(w), tf.float32) for w in saved])
        rms = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(w)) for w in saved]) / count)
        epsilon = tf.stop_gradient(hook.epsilon * tf.maximum(rms, 1e-12))
        after = [tf.identity(tf.convert_to_tensor(v)) for v in self.non_trainable_variables]
        for variable, value in zip(self.non_trainable_variables, state):
            variable.assign(value)
        for (variable, direction), value in zip(moved, saved):
            variable.assign(value + epsilon * direction)
        with tf.GradientTape() as perturbed_tape:
            y_pred, _ = self._forward(context.x)
            perturbed_loss = self._compute_loss(x=context.x, y=context.y, y_pred=y_pred,
                                                sample_weight=context.sample_weight,
                                                training=True)
            perturbed_scaled = self.optimizer.scale_loss(perturbed_loss)
        perturbed = zeros_for_none(perturbed_tape.gradient(perturbed_scaled, variables))
        for (variable, _), value in zip(moved, saved):
            variable.assign(value)
        for variable, value in zip(self.non_trainable_variables, after):
            variable.assign(value)
        factor = strength / epsilon
        gradients = [g + factor * (p - l) for g, p, l in
                     zip(zeros_for_none(gradients), perturbed, loss_gradients)]
        return gradients, term

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if k not in self._hook_term_trackers}


def with_hooks(model, hooks):
    """A `QuantizedModel` over `model`'s layers and variables that runs `hooks` in every
    training step. `model` (a Functional or built Sequential model, e.g. from
    `quantize_model`) is not modified and keeps working on its own; compile the returned
    model to train it."""
    if isinstance(model, keras.Sequential):
        model = model._functional
    if not isinstance(model, Functional):
        raise ValueError(f"with_hooks takes a Functional or built Sequential model; "
                         f"{model.name!r} is {type(model).__name__}.")
    for hook in hooks:
        if not isinstance(hook, TrainStepHook):
            raise ValueError(f"{hook!r} is not a tfquant TrainStepHook.")
    return QuantizedModel(model._inputs_struct, model._outputs_struct, name=model.name,
                          train_step_hooks=list(hooks))
