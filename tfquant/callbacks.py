"""Training controls as Keras callbacks: freezing BN, quantization delay, freezing ranges,
bit-width / temperature / regularizer schedules, and TensorBoard statistics.

Every schedule decides from the optimizer's step counter (`model.optimizer.iterations`):
step-based ones compare it with `after_steps`, epoch-based ones use
`epoch = iterations // steps_per_epoch` (Keras' epoch index when the number of steps is
unknown). A model saved mid-schedule as `.keras` (which stores the optimizer state) and
trained again in a new `fit` therefore continues where it stopped; the switches are
model variables, saved with the model, and Python settings (bit widths) are in the
saved quantizer configs.
"""


import keras
import numpy as np
import tensorflow as tf

from tfquant.keras.activation_fake_quant import ActivationFakeQuant
from tfquant.keras.batch_norm import freeze_batch_norm, reestimate_batch_norm
from tfquant.keras.config import check_layer_match, layer_matches
from tfquant.keras.quantized_convolution import QuantizedConvolution
from tfquant.keras.slots import quantizer_slots
from tfquant.ops.arguments import check_bits, check_choice, check_count
from tfquant.quantizers.metrics import sqnr_db
from tfquant.quantizers.soft import SoftQuantizer
from tfquant.quantizers.uniform import WEIGHT_BITS, FixedRangeQuantizer
from tfquant.report.tensorboard import write_histogram, write_scalar


class _Scheduled(keras.callbacks.Callback):
    """Base: `after_steps` xor `after_epochs`; `_sync()` runs at train begin and at every
    batch (step-based) or epoch (epoch-based) begin."""

    def __init__(self, after_steps=None, after_epochs=None, per="epoch"):
        super().__init__()
        owner = type(self).__name__
        if after_steps is not None and after_epochs is not None:
            raise ValueError(f"{owner}: give after_steps or after_epochs, not both.")
        self.after_steps = check_count(owner, "after_steps", after_steps)
        self.after_epochs = check_count(owner, "after_epochs", after_epochs)
        self.per = "step" if after_steps is not None else check_choice(
            owner, "per", per, ("epoch", "step"))
        self._keras_epoch = 0

    def iterations(self):
        return int(self.model.optimizer.iterations.numpy())

    def epoch(self):
        steps = (self.params or {}).get("steps")
        if steps:
            return self.iterations() // int(steps)
        return self._keras_epoch

    def due(self):
        """True once the schedule's point is reached."""
        if self.after_steps is not None:
            return self.iterations() >= self.after_steps
        return self.epoch() >= (self.after_epochs or 0)

    def _sync(self):
        raise TypeError(f"{type(self).__name__} does not implement _sync")

    def on_train_begin(self, logs=None):
        self._sync()

    def on_epoch_begin(self, epoch, logs=None):
        self._keras_epoch = epoch
        if self.per == "epoch":
            self._sync()

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "step":
            self._sync()


class FreezeBatchNorm(_Scheduled):
    """From `after_steps` optimizer steps (or `after_epochs` epochs) on, every folded BN
    trains with its moving statistics and stops updating them (`tfquant.freeze_batch_norm`;
    Jacob et al. 2018 freeze after ~1M steps of a long run)."""

    def _sync(self):
        if self.due():
            freeze_batch_norm(self.model, True)


class ReestimateBatchNorm(keras.callbacks.Callback):
    """At the end of training (and, with `every_epochs`, after every that many epochs)
    re-estimates every BatchNormalization's moving statistics from the current weights on
    `data` (`tfquant.reestimate_batch_norm`; Nagel et al. 2021 §4), so that inference and
    export use statistics that match the trained weights.

    Not after a `FreezeBatchNorm` phase with learned weight steps: the frozen epochs
    trained the steps (LSQ, PACT, SAWB) for the kernels folded with the frozen
    statistics, and new ones rescale those kernels. BENCHMARKS.md "QAT methods": −1.7
    points on LSQ W4A8, −26 on LSQ+PACT W2A2 when re-estimated after such a QAT."""

    def __init__(self, data, every_epochs=None, batch_size=256, max_batches=20):
        super().__init__()
        self.data = data
        self.every_epochs = check_count("ReestimateBatchNorm", "every_epochs", every_epochs, 1)
        self.batch_size = check_count("ReestimateBatchNorm", "batch_size", batch_size, 1)
        self.max_batches = check_count("ReestimateBatchNorm", "max_batches", max_batches, 1)
        self._current = False  # re-estimated since the last batch

    def on_epoch_begin(self, epoch, logs=None):
        self._current = False

    def on_epoch_end(self, epoch, logs=None):
        if self.every_epochs and (epoch + 1) % self.every_epochs == 0:
            self._reestimate()

    def on_train_end(self, logs=None):
        if not self._current:  # else the last epoch's end did it already
            self._reestimate()

    def _reestimate(self):
        reestimate_batch_norm(self.model, self.data, self.batch_size, self.max_batches)
        self._current = True


class QuantizationDelay(_Scheduled):
    """Fake quantization off (float values, ranges still observed) until `after_steps`
    steps (or `after_epochs` epochs), then on. `weights` / `activations`: which switches
    the delay applies to (the other ones are left as they are)."""

    def __init__(self, after_steps=None, after_epochs=None, weights=True, activations=True):
        super().__init__(after_steps, after_epochs)
        self.weights, self.activations = bool(weights), bool(activations)

    def _sync(self):
        set_quantize_enabled(self.model, self.due(), weights=self.weights,
                             activations=self.activations)


class TwoStageQuantization(QuantizationDelay):
    """Guided training's two stages (Zhuang et al. 2018): weights quantized from the
    start, activations in float until `after_epochs` (or `after_steps`), then quantized."""

    def __init__(self, after_steps=None, after_epochs=None):
        super().__init__(after_steps, after_epochs, weights=False, activations=True)


def set_quantize_enabled(model, enabled, weights=True, activations=True):
    """Sets the quantization switches of every ActivationFakeQuant (activations) and
    QuantizedConvolution (its kernels and/or activations). Layers get their switch
    variables the first time one is turned off; the model's traced functions are then
    rebuilt."""
    created = False
    for layer in model.layers:
        if isinstance(layer, ActivationFakeQuant) and activations:
            created |= layer.set_quantize_enabled(enabled)
        elif isinstance(layer, QuantizedConvolution):
            created |= layer.set_quantize_enabled(weights=enabled if weights else None,
                                                  activations=enabled if activations else None)
    if created:
        rebuild_functions(model)


class FreezeQuantizerRanges(_Scheduled):
    """From `after_steps` (or `after_epochs`) on, the observers stop updating: the
    moving-average ranges of `MovingAverageQuantizer` and LQ-Nets' QEM basis (every
    quantizer variable dict with a `frozen` flag)."""

    def _sync(self):
        value = 1.0 if self.due() else 0.0
        for slot in quantizer_slots(self.model):
            if "frozen" in slot.variables:
                slot.variables["frozen"].assign(value)


class BitWidthSchedule(_Scheduled):
    """Progressive bit reduction (Zhuang et al. 2018): `schedule` {epoch: bits} (e.g.
    `{0: 8, 3: 4, 6: 2}`), from that epoch on; step-based with `per="step"` (keys are
    optimizer steps).

    Changes the `num_bits` of the weight quantizers (and of the activation quantizers
    with `activations=True`) of every layer not matched by `exclude` (names or regular
    expressions, e.g. the first and last layers to keep at 8 bits), then rebuilds the
    model's train/test/predict functions (bit widths are Python attributes traced into
    the graph; Keras' `fit` looks `model.train_function` up at every step, so the new
    function is used from the next step on). At each change a learned scale is
    re-initialized: `reinitialize="data"` resets the quantizer's `initialized` flag (LSQ,
    LSQ+, TQT: re-initialized from the next batch), `"rescale"` keeps the range,
    `s ← s·(2^(b_old−1)−1)/(2^(b_new−1)−1)`. Quantizers whose variables depend on the bit
    width (SoftQuantizer, LQ-Nets) or that have a fixed one are refused.
    """

    def __init__(self, schedule, weights=True, activations=False, exclude=(),
                 reinitialize="data", per="epoch"):
        super().__init__(per=per)
        if not isinstance(schedule, dict) or not schedule:
            raise ValueError(f"BitWidthSchedule: schedule={schedule!r} is not supported; "
                             "allowed: a non-empty dict {epoch (or step): bits}.")
        unit = "step" if self.per == "step" else "epoch"
        self.schedule = {
            check_count("BitWidthSchedule", f"schedule key ({unit})", k):
                check_bits("BitWidthSchedule", v, WEIGHT_BITS, arg=f"schedule[{k!r}]")
            for k, v in schedule.items()}
        self.weights, self.activations = bool(weights), bool(activations)
        self.exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
        for entry in self.exclude:
            check_layer_match(entry, "BitWidthSchedule: exclude entry")
        if reinitialize not in ("data", "rescale"):
            raise ValueError(f"BitWidthSchedule: reinitialize={reinitialize!r}; allowed: "
                             "'data', 'rescale'.")
        self.reinitialize = reinitialize
        self.changes = []  # (position, bits) of every change made (for reports/tests)

    def bits_at(self, position):
        keys = [k for k in sorted(self.schedule) if k <= position]
        return self.schedule[keys[-1]] if keys else None

    def _targets(self):
        targets = []
        for slot in quantizer_slots(self.model, self.weights, self.activations):
            quantizer = slot.quantizer
            excluded = any(layer_matches(p, slot.layer) for p in self.exclude)
            if excluded or isinstance(quantizer, FixedRangeQuantizer):
                continue
            if slot.is_weight or quantizer.num_bits < 16:
                targets.append((quantizer, slot.variables))
        return targets

    def _sync(self):
        position = self.iterations() if self.per == "step" else self.epoch()
        bits = self.bits_at(position)
        if bits is None:
            return
        # A learned scale is re-initialized only where the schedule changes the width.
        # Past that point (a run resumed from BackupAndRestore, which restores weights
        # but not the Python bit widths) the variables already hold the state learned at
        # `bits`: only the widths are set again.
        scheduled_here = position in self.schedule
        changed = False
        for quantizer, variables in self._targets():
            if quantizer.num_bits != bits:
                set_num_bits(quantizer, variables, bits,
                             self.reinitialize if scheduled_here else None)
                changed = True
        if changed:
            self.changes.append((position, bits))
            rebuild_functions(self.model)


def set_num_bits(quantizer, variables, bits, reinitialize="data"):
    """Changes `quantizer`'s bit width in place (its Python state is rebuilt from its
    config, its per-build bookkeeping kept) and re-initializes its learned scale
    (`reinitialize`: "data", "rescale", or None to keep the variables as they are)."""
    old = quantizer.num_bits
    try:
        quantizer.set_num_bits(bits)
    except ValueError as error:
        raise ValueError(f"BitWidthSchedule: {error}") from None
    if reinitialize is not None and "step" in variables and "initialized" in variables:
        if reinitialize == "data":
            variables["initialized"].assign(0.0)
        else:
            ratio = (2 ** (old - 1) - 1) / float(max(2 ** (bits - 1) - 1, 1))
            variables["step"].assign(variables["step"] * ratio)


def rebuild_functions(model):
    """Drops the traced train/test/predict functions so the next call retraces (after a
    change of Python-level quantizer settings). Inside `fit` the train function is
    replaced at once: Keras reads `model.train_function` at every step."""
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
    model.test_function = None
    model.predict_function = None


class TemperatureSchedule(_Scheduled):
    """Sets the temperature of every `SoftQuantizer` (Quantization Networks) at each epoch
    (or step with `per="step"`): `schedule(position)`, default
    `T = min(20·(epoch + 1), 2000)`."""

    def __init__(self, schedule=None, per="epoch"):
        super().__init__(per=per)
        self.schedule = schedule or (lambda epoch: min(20.0 * (epoch + 1), 2000.0))

    def _sync(self):
        position = self.iterations() if self.per == "step" else self.epoch()
        value = float(self.schedule(position))
        for slot in quantizer_slots(self.model):
            if isinstance(slot.quantizer, SoftQuantizer):
                slot.quantizer.set_temperature(slot.variables, value)


class RegularizerSchedule(_Scheduled):
    """Sets a tfquant regularizer's strength λ (its `strength` variable) to
    `schedule(position)` at each epoch (or step with `per="step"`); `schedule` may also
    be a dict {position: λ} (piecewise constant)."""

    def __init__(self, regularizer, schedule, per="epoch"):
        super().__init__(per=per)
        if not hasattr(regularizer, "strength"):
            raise ValueError(f"RegularizerSchedule: {regularizer!r} has no strength variable.")
        self.regularizer = regularizer
        if isinstance(schedule, dict):
            table = {int(k): float(v) for k, v in schedule.items()}
            schedule = lambda p: table[max([k for k in table if k <= p] or [min(table)])]  # noqa: E731
        self.schedule = schedule

    def _sync(self):
        position = self.iterations() if self.per == "step" else self.epoch()
        self.regularizer.strength.assign(float(self.schedule(position)))


class ProxQuantSchedule(_Scheduled):
    """ProxQuant's schedule for a `tfquant.regularizers.ProxQuant` hook: strength
    `strength_per_epoch·(epoch + 1)`, hard freeze (weights projected onto the grid at
    every step) from its `freeze_epoch` on."""

    def __init__(self, hook):
        super().__init__(per="epoch")
        self.hook = hook

    def _sync(self):
        epoch = self.epoch()
        self.hook.strength.assign(self.hook.strength_per_epoch * (epoch + 1))
        frozen = self.hook.freeze_epoch is not None and epoch >= self.hook.freeze_epoch
        self.hook.hard.assign(1.0 if frozen else 0.0)
        if frozen:
            self.hook.prox_step()


def _tensor_stats(x, q, step):
    """(clipped fraction, SQNR dB) of `x` quantized to `q` with grid step `step`."""
    x = np.asarray(x, np.float64)
    q = np.asarray(q, np.float64)
    error = x - q
    clipped = float(np.mean(np.abs(error) > 0.5 * np.asarray(step) * (1 + 1e-3) + 1e-12))
    return clipped, sqnr_db(x, q)


class QuantizerStats(keras.callbacks.Callback):
    """Writes TensorBoard summaries (`tf.summary`, under `log_dir`) every `every_epochs`
    epochs, per layer:
      - every quantizer variable: a scalar, or a histogram when it has several values
        (`<layer>/<variable>`);
      - per kernel: `weights_sqnr_db` = 10·log10(Σw²/Σ(w − Q(w))²) and
        `weights_clipped_fraction` (|w − Q(w)| > Δ/2), on the kernel as the quantizer
        sees it (BN folded, inference-mode quantizer), and a histogram of it;
      - per activation quantizer, on `sample_batch` (if given): `activation_sqnr_db` and
        `activation_clipped_fraction` (outside the grid by more than half a step).
    `self.last` holds the last values written ({tag: float}).
    """

    def __init__(self, log_dir, sample_batch=None, every_epochs=1, num_bits=8):
        super().__init__()
        self.log_dir = log_dir
        self.sample_batch = sample_batch
        self.every_epochs = int(every_epochs)
        self.num_bits = num_bits
        self.writer = None
        self.last = {}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            self.write(int(self.model.optimizer.iterations.numpy()))

    def collect(self):
        """{tag: float or array} of everything `write` logs."""
        from tfquant.regularizers import kernel_views

        values = {}
        for slot in quantizer_slots(self.model):
            for key, variable in slot.variables.items():
                values[f"{slot.layer.name}/{slot.role}/{key}"] = np.asarray(variable.numpy())
        for view in kernel_views(self.model, self.num_bits):
            w = view.seen()
            q = view.quantize(w)
            clipped, sqnr = _tensor_stats(w, q, view.step(w))
            tag = f"{view.layer.name}/{view.name}"
            values[f"{tag}/weights_sqnr_db"] = sqnr
            values[f"{tag}/weights_clipped_fraction"] = clipped
            values[f"{tag}/weights_hist"] = np.asarray(w).ravel()
        if self.sample_batch is not None:
            values.update(self._activation_stats())
        return values

    def _activation_stats(self):
        layers = [l for l in self.model.layers if isinstance(l, ActivationFakeQuant)]
        if not layers:
            return {}
        probe = keras.Model(self.model.input, [l.input for l in layers])
        inputs = probe(self.sample_batch, training=False)
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        values = {}
        for layer, x in zip(layers, inputs):
            q = layer.quantizer(x, False, layer.quantizer_variables).numpy()
            levels = 2 ** layer.quantizer.num_bits - 1
            step = max(float(q.max() - q.min()) / levels, 1e-12)
            clipped, sqnr = _tensor_stats(x.numpy(), q, step)
            values[f"{layer.name}/activation_sqnr_db"] = sqnr
            values[f"{layer.name}/activation_clipped_fraction"] = clipped
        return values

    def write(self, step):
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        values = self.collect()
        self.last = {}
        with self.writer.as_default(step=step):
            for tag, value in values.items():
                value = np.asarray(value, np.float32)
                if value.size == 1:
                    write_scalar(tag, float(value.reshape(())), step)
                    self.last[tag] = float(value.reshape(()))
                else:
                    write_histogram(tag, value, step)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()
