"""Guided low-bit training (Zhuang et al. 2018): distillation from the float model.

    hooked = with_hooks(qmodel, [Distillation(float_model, temperature=4.0, alpha=1.0)])

The two-stage mode (weights first, then activations) is
`tfquant.callbacks.TwoStageQuantization(after_epochs=N)`; progressive bit reduction is
`tfquant.callbacks.BitWidthSchedule({0: 8, 3: 4, 6: 2})`.
"""

import keras
import tensorflow as tf

from tfquant.keras.train_step import TrainStepHook, _Untracked


@keras.saving.register_keras_serializable(package="tfquant")
class Distillation(TrainStepHook):
    """Adds `α·T²·KL(softmax(t/T) ‖ softmax(s/T))` (batch mean) between the teacher's
    logits t (inference mode, no gradient) and the student's s, and optionally feature
    hints `β·mean((f_s − f_t)²)` between layers of the same name in both models.

    The logs report `<name>` (the KL term) and `<name>_hints`. The teacher is frozen
    (`trainable = False`) and saved with the hooked model.

    Args:
      teacher: the float Keras model (same inputs, logits as its single output).
      temperature: T > 0.
      alpha: α ≥ 0, weight of the KL term (the hard-label loss keeps weight 1).
      hints: layer names present in both models with outputs of the same shape (e.g. the
        ReLU layers that `quantize_model` keeps).
      hint_weight: β.
    """

    def __init__(self, teacher, temperature=4.0, alpha=1.0, hints=(), hint_weight=1.0,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(teacher, dict):
            teacher = keras.saving.deserialize_keras_object(teacher)
        if float(temperature) <= 0.0 or float(alpha) < 0.0:
            raise ValueError(f"Distillation: temperature={temperature!r} must be > 0 and "
                             f"alpha={alpha!r} ≥ 0.")
        teacher.trainable = False
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hints = tuple(hints)
        self.hint_weight = float(hint_weight)
        probe = None
        if self.hints:
            probe = keras.Model(teacher.input, [teacher.output] + [
                teacher.get_layer(n).output for n in self.hints])
        self._teacher_state = _Untracked(probe=probe)

    def feature_layers(self):
        return self.hints

    def term_names(self):
        return (self.name,) + ((f"{self.name}_hints",) if self.hints else ())

    def loss_terms(self, context):
        probe = self._teacher_state.probe
        if probe is None:
            teacher_logits, teacher_features = self.teacher(context.x, training=False), []
        else:
            results = probe(context.x, training=False)
            teacher_logits, teacher_features = results[0], results[1:]
        teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
        student_logits = tf.cast(context.y_pred, tf.float32)
        t = self.temperature
        teacher_p = tf.nn.softmax(teacher_logits / t)
        kl = tf.reduce_sum(
            teacher_p * (tf.math.log(teacher_p + 1e-12) - tf.nn.log_softmax(student_logits / t)),
            axis=-1)
        terms = {self.name: self.alpha * t * t * tf.reduce_mean(kl)}
        if self.hints:
            hint = tf.add_n([
                tf.reduce_mean(tf.square(tf.cast(context.features[n], tf.float32)
                                         - tf.stop_gradient(tf.cast(f, tf.float32))))
                for n, f in zip(self.hints, teacher_features)])
            terms[f"{self.name}_hints"] = self.hint_weight * hint
        return terms

    def get_config(self):
        config = super().get_config()
        config.update(teacher=keras.saving.serialize_keras_object(self.teacher),
                      temperature=self.temperature, alpha=self.alpha, hints=list(self.hints),
                      hint_weight=self.hint_weight)
        return config
