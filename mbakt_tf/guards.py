"""Training guards (Keras callbacks): stop on non-finite losses, warn on a collapsed discriminator
or on an adversary that takes the network over.

`NonFiniteLossGuard` checks every loss term after each training step and
raises `NonFiniteLossError` naming the first non-finite term (in the order
`ce, kd, hint, adv, d_loss, loss`) and the step. It raises from
`on_train_batch_end`, so callbacks after it in the list (the backup) never
see that step: the last backup stays the last good state. Put it first.

`DiscriminatorCollapseMonitor` logs a warning with the numbers when the
discriminator's accuracy has stayed near 1 (it wins outright, the adversarial
signal saturates) or near 0 (it is fooled completely) for `patience` steps.

`AdversarialTakeoverGuard` watches what matters to the user: the main
branch's own training accuracy (mIoU for segmentation). When it falls
clearly below its best epoch while the adversarial gradient has grown, the
adversary is steering the network away from its labels (the discriminator's
accuracy can look healthy meanwhile): it warns, naming the pattern, or stops.

`InferenceModeGapGuard` checks that the network the user gets is the one
the training log describes: at each epoch end it scores the main head on a
fixed batch of training images in inference mode (batch norms on their
moving statistics, as exported) and in training mode (batch statistics),
without changing any state, records both and their gap in the logs, and
warns, naming the pattern and its likely causes, when they part.

Example:
```python
callbacks = [guards.NonFiniteLossGuard(), guards.DiscriminatorCollapseMonitor(patience=200),
             guards.AdversarialTakeoverGuard(stop=True), guards.InferenceModeGapGuard(train_ds)]
model.fit(train_ds, epochs=3, callbacks=callbacks)
```
"""

import logging
import math

import keras
import numpy as np

from mbakt_tf import branches, segmentation

logger = logging.getLogger("mbakt_tf.guards")

LOSS_TERMS = ("ce", "kd", "hint", "adv", "d_loss", "loss")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; `.term` and `.step` say which and when."""

    def __init__(self, message, term, step, values):
        super().__init__(message)
        self.term = term
        self.step = step
        self.values = values


def _as_float(value):
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _resumed_steps(backup, epoch):
    """Steps of `epoch` done before a resume (Keras numbers the batches from 0 again)."""
    position = getattr(backup, "position", None)
    if position is not None and position.epoch == epoch:
        return position.step
    return 0


def _global_step(model):
    """The generator optimizer's step count (what the adversarial warm-up uses)."""
    try:
        return int(np.asarray(model.optimizer.iterations.value.numpy()))
    except Exception:  # pragma: no cover - unusual optimizers
        return None


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss terms are not finite.

    Training logs are running means over the epoch, so a NaN in any step
    turns its term's log non-finite from that step on: the first non-finite
    log is the step that produced it.

    Args:
        terms: log keys to check, in reporting order.
        backup: optional `resume.ResumableBackup`; its last good checkpoint is
            named in the message.
    """

    def __init__(self, terms=LOSS_TERMS, backup=None):
        super().__init__()
        self.terms = tuple(terms)
        self.backup = backup
        self._epoch = 0
        self._step_offset = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._step_offset = _resumed_steps(self.backup, epoch)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        values = {t: _as_float(logs[t]) for t in self.terms if t in logs}
        bad = [t for t, v in values.items() if v is not None and not math.isfinite(v)]
        if not bad:
            return
        self.model.stop_training = True
        step = _global_step(self.model)
        where = f"step {step}" if step is not None else "this step"
        batch_in_epoch = self._step_offset + batch + 1
        shown = ", ".join(f"{t}={values[t]}" for t in bad)
        message = (
            f"non-finite loss term {bad[0]!r} at {where} (epoch {self._epoch + 1}, "
            f"batch {batch_in_epoch}): {shown}. Training stopped; the model of this step was not saved."
        )
        if self.backup is not None:
            last = self.backup.last_saved
            if last is not None:
                message += (
                    f" Last good backup: step {last.global_step} in {last.path} "
                    "(restarting the same command resumes from it)."
                )
            else:
                message += f" No backup was written yet in {self.backup.backup_dir}."
        message += (
            " Check the inputs for NaN/Inf, lower the learning rate, or use a LossScaleOptimizer "
            "with mixed precision."
        )
        raise NonFiniteLossError(message, bad[0], step, values)


class DiscriminatorCollapseMonitor(keras.callbacks.Callback):
    """Warns when `d_balanced_accuracy` stays within `margin` of 0 or 1 for `patience` steps.

    Per-step accuracies are recovered from the running epoch mean that Keras
    logs (`mean_k * k - mean_(k-1) * (k-1)`), so no model change is needed.
    One warning per collapse episode; a new one after the accuracy recovered.
    `events` keeps every warning's numbers (dicts) for tests and reports.

    Args:
        patience: consecutive steps before warning; 0 disables the monitor.
        margin: "near 0 or 1" means within this distance.
        metric: the log key of the discriminator accuracy.
    """

    def __init__(self, patience=200, margin=0.02, metric="d_balanced_accuracy", backup=None):
        super().__init__()
        if not 0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}.")
        self.patience = int(patience)
        self.margin = float(margin)
        self.metric = metric
        self.backup = backup
        self.events = []
        self._reset_run()
        self._offset, self._epoch_total, self._epoch_count = 0, None, 0

    def _reset_run(self):
        self._side = None
        self._run = []
        self._warned = False

    def on_epoch_begin(self, epoch, logs=None):
        self._offset = _resumed_steps(self.backup, epoch)
        self._epoch_total = None
        self._epoch_count = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.patience <= 0 or not logs or self.metric not in logs:
            return
        mean = _as_float(logs[self.metric])
        if mean is None or not math.isfinite(mean):
            return
        count = self._offset + batch + 1  # steps in the running mean
        total = mean * count
        previous_total, previous_count = self._epoch_total, self._epoch_count
        self._epoch_total, self._epoch_count = total, count
        if previous_total is None:
            if self._offset:
                return  # resumed mid-epoch: the mean includes steps from before; start here
            steps, value = count, mean  # first log of the epoch: the mean of its steps
        else:
            steps = count - previous_count
            value = (total - previous_total) / max(steps, 1)
        self.observe(value, steps, logs)

    def observe(self, accuracy, steps=1, logs=None):
        """Feeds the mean discriminator accuracy of `steps` consecutive steps."""
        accuracy = min(1.0, max(0.0, accuracy))
        side = "1" if accuracy >= 1.0 - self.margin else "0" if accuracy <= self.margin else None
        if side is None or side != self._side:
            self._reset_run()
            self._side = side
            if side is None:
                return
        self._run.extend([accuracy] * int(steps))
        if len(self._run) >= self.patience and not self._warned:
            self._warned = True
            self._warn(logs or {})

    def _warn(self, logs):
        run = np.asarray(self._run)
        step = _global_step(self.model) if self.model is not None else None
        event = {
            "step": step,
            "steps": int(run.size),
            "side": self._side,
            "mean": float(run.mean()),
            "min": float(run.min()),
            "max": float(run.max()),
        }
        for key in ("d_loss", "adv"):
            if key in logs and _as_float(logs[key]) is not None:
                event[key] = _as_float(logs[key])
        self.events.append(event)
        verdict = (
            "always right: it wins outright and the adversarial signal saturates"
            if self._side == "1"
            else "always wrong: the branches fool it completely"
        )
        extras = "".join(f", {k} {event[k]:.4f}" for k in ("d_loss", "adv") if k in event)
        logger.warning(
            "discriminator collapse: %s has been within %.2f of %s for %d steps "
            "(up to step %s: mean %.4f, min %.4f, max %.4f%s); the discriminator is %s. "
            "Consider a lower --d_learning_rate, more --discriminator_label_smoothing, or a "
            "smaller --gamma.",
            self.metric, self.margin, self._side, event["steps"], step, event["mean"], event["min"],
            event["max"], extras, verdict,
        )


class AdversarialTakeoverGuard(keras.callbacks.Callback):
    """Warns (or stops) when the main branch gets worse on its training data as the adversary grows.

    After every epoch it compares the main branch's training metric with its
    best epoch so far. "Takeover" is: the metric fell more than `drop` below
    that best while `adv_grad_ratio` (the adversarial gradient over the
    cross-entropy's) rose above its value then. Training accuracy should not
    fall under a sane objective at a decaying learning rate, so this is the
    adversary winning against the labels, the pattern that erased a
    segmenter's objects (README "Segmentation"). One warning per episode;
    `events` keeps their numbers.

    Args:
        metric: the training log to watch; `None` takes `main_miou` when
            logged (segmentation), else `main_accuracy`.
        drop: how far below its best (absolute) the metric must fall.
        stop: also stop training (`model.stop_training`).

    Example:
    ```python
    guard = AdversarialTakeoverGuard(drop=0.05, stop=True)
    model.fit(train_ds, epochs=8, callbacks=[guard])
    guard.events   # [] unless the adversary took over
    ```
    """

    RATIO = "adv_grad_ratio"

    def __init__(self, metric=None, drop=0.05, stop=False):
        super().__init__()
        if not drop > 0:
            raise ValueError(f"drop must be > 0, got {drop}.")
        self.metric = metric
        self.drop = float(drop)
        self.stop = bool(stop)
        self.events = []
        self._best = None  # (value, epoch, ratio)
        self._warned = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        metric = self.metric or ("main_miou" if "main_miou" in logs else "main_accuracy")
        value, ratio = _as_float(logs.get(metric)), _as_float(logs.get(self.RATIO))
        if value is None or ratio is None or not (math.isfinite(value) and math.isfinite(ratio)):
            return
        if self._best is None or value >= self._best[0]:
            self._best = (value, epoch, ratio)
            self._warned = False
            return
        best, best_epoch, best_ratio = self._best
        if self._warned or value >= best - self.drop or ratio <= best_ratio:
            return
        self._warned = True
        event = {
            "metric": metric, "epoch": epoch + 1, "value": value, "best": best, "best_epoch": best_epoch + 1,
            "adv_grad_ratio": ratio, "adv_grad_ratio_at_best": best_ratio,
        }
        self.events.append(event)
        action = "Training stopped." if self.stop else "Training goes on."
        gamma = getattr(getattr(self.model, "config", None), "gamma", None)
        cap = getattr(getattr(self.model, "config", None), "max_adversarial_grad_ratio", None)
        logger.warning(
            "adversarial takeover: the main branch's training %s fell from %.4f (epoch %d) to %.4f "
            "(epoch %d) while the adversarial gradient grew from %.3f to %.3f of the cross-entropy's: "
            "the adversary is steering the network away from its labels. %s Lower --gamma (now %s) or "
            "--max_adversarial_grad_ratio (now %s).",
            metric, best, best_epoch + 1, value, epoch + 1, best_ratio, ratio, action, gamma, cap,
        )
        if self.stop:
            self.model.stop_training = True


class InferenceModeGapGuard(keras.callbacks.Callback):
    """Warns when the main head scores differently in inference mode than in training mode.

    At each epoch end it runs the main head on a fixed batch of training
    images twice: in inference mode (every batch norm on its moving
    statistics: the model `evaluate`, `predict` and every export use) and in
    training mode (batch statistics, as `fit` logs it). Both run through
    `stateless_call` on the current variables and the updated moving
    statistics it returns are dropped, so the check changes no weight, no
    statistic and no random state of the run. It adds to the epoch's logs
    (so to the history and TensorBoard, when it runs before them):

    * `training_mode_metric`, `inference_mode_metric`: the main head's
      accuracy (mIoU for segmentation) on those images in each mode;
    * `inference_mode_gap`: the first minus the second.

    When `inference_mode_gap` exceeds `threshold` (inference mode worse: the
    model you ship is worse than the training log) at epoch `start_epoch` or
    later, it logs a warning that names the pattern and its likely causes
    (one per episode; `events` keeps the numbers). The fixed images are taken
    from `data` when training begins, before `fit` iterates its data: every
    iterator over a seeded, reshuffling tf.data pipeline draws the next shuffle
    seed, so one made between epochs would shift the order of the epochs
    after it. Made first, it shifts the run's order once, the same way in
    every run of the same configuration, a resumed one included (its stream
    starts after the same draws).

    Args:
        data: training batches `(images, labels)`: a `tf.data.Dataset` or any
            iterable of batches, or one `(images, labels)` pair of arrays.
        threshold: the largest gap (in accuracy or mIoU) that is not a
            warning. The other way round (inference mode better by more) is
            logged at INFO level: measured on keras-cv CSPDarkNet classifiers
            (1x1 last stages, 16-image batches), plain and peer alike.
            0.10 (docs/no_harm.md): on healthy runs the gap measured at most
            +0.015 after the first epoch (-0.05 the other way), on the broken
            case of issue 21 +0.36, stale statistics in the tests +0.64.
        min_examples: batches are taken until they hold this many images;
            each is run separately in training mode (its own batch statistics,
            as in training).
        start_epoch: the first epoch (1-based) that can warn. Moving
            statistics start from 0 and 1 and need some steps to describe the
            network: a gap after the first epoch is expected.

    Example:
    ```python
    guard = InferenceModeGapGuard(splits.train)
    model.fit(splits.train, epochs=8, callbacks=[guard])
    model.history.history["inference_mode_gap"]   # one value per epoch
    guard.events                                  # [] unless the modes parted
    ```
    """

    GAP, TRAINING, INFERENCE = "inference_mode_gap", "training_mode_metric", "inference_mode_metric"

    def __init__(self, data, threshold=0.10, min_examples=64, start_epoch=2):
        super().__init__()
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}.")
        self.data = data
        self.threshold = float(threshold)
        self.min_examples = int(min_examples)
        self.start_epoch = int(start_epoch)
        self.batches = None
        self.events = []
        self._warned = False

    def _take_batches(self):
        if isinstance(self.data, tuple) and len(self.data) == 2 and hasattr(self.data[0], "shape"):
            return [(np.asarray(self.data[0]), np.asarray(self.data[1]))]
        batches, count = [], 0
        for batch in self.data:
            images, labels = batch[0], batch[1]
            batches.append((np.asarray(images), np.asarray(labels)))
            count += len(batches[-1][0])
            if count >= self.min_examples:
                break
        if not batches:
            raise ValueError("InferenceModeGapGuard got no training batches.")
        return batches

    def on_train_begin(self, logs=None):
        if self.batches is None:
            self.batches = self._take_batches()

    def measure(self):
        """`(training-mode metric, inference-mode metric)` of the main head on the fixed batches."""
        if self.batches is None:
            self.batches = self._take_batches()
        network = getattr(self.model, "network", self.model)
        trainable = [v.value for v in network.trainable_variables]
        non_trainable = [v.value for v in network.non_trainable_variables]
        scores = {}
        for training in (True, False):
            predictions, labels = [], []
            for images, batch_labels in self.batches:
                outputs, _ = network.stateless_call(trainable, non_trainable, images, training=training)
                logits = outputs["main_logits"] if isinstance(outputs, dict) else outputs
                predictions.append(np.argmax(np.asarray(logits), axis=-1))
                labels.append(batch_labels.reshape(predictions[-1].shape))
            scores[training] = _main_metric(
                np.concatenate(labels), np.concatenate(predictions), np.asarray(logits).shape[-1],
                per_pixel=predictions[-1].ndim > 1)
        return scores[True], scores[False]

    def on_epoch_end(self, epoch, logs=None):
        training_mode, inference_mode = self.measure()
        gap = training_mode - inference_mode
        if logs is not None:
            logs.update({self.TRAINING: training_mode, self.INFERENCE: inference_mode, self.GAP: gap})
        if gap < -self.threshold and epoch + 1 >= self.start_epoch:
            # Inference mode better: the shipped model beats the training log (batch statistics of few
            # values hurt training mode; e.g. 1x1 last stages, 16-image batches): noted, not warned.
            logger.info("inference mode above training mode by %.4f on the fixed training images "
                        "(epoch %d): the training log understates the model.", -gap, epoch + 1)
        if gap <= self.threshold:
            self._warned = False
            return
        if self._warned or epoch + 1 < self.start_epoch:
            return
        self._warned = True
        network = getattr(self.model, "network", self.model)
        norms = branches.batch_norms(network)
        shared = [layer.name for layer in norms if len(getattr(layer, "_inbound_nodes", [])) > 1]
        momentum = max((float(layer.momentum) for layer in norms), default=None)
        event = {
            "epoch": epoch + 1, "training_mode": training_mode, "inference_mode": inference_mode,
            "gap": gap, "examples": sum(len(images) for images, _ in self.batches),
            "batch_norms": len(norms), "max_momentum": momentum, "batch_norms_called_twice": shared,
            "recalibrated": bool(getattr(self.model, "precise_batch_norm_examples", 0)),
        }
        self.events.append(event)
        recalibrated = event["recalibrated"]
        causes = []
        if shared:
            causes.append(f"batch norms called on several inputs per step mix their statistics: {shared}")
        if not recalibrated and momentum is not None:
            causes.append(
                f"moving statistics that are Keras's exponential averages (momentum up to {momentum}: the "
                f"last ~{_memory(momentum)} steps), which lag a trunk that moves fast: recompute them with "
                "`branches.recalibrate_batch_norms` (MBAKT's `fit` does at each epoch end unless "
                "`precise_batch_norm_examples=0`)")
        causes.append(
            "batch statistics of too few values, which the network has come to rely on (small batches, "
            "or 1x1 feature maps at the last stages: a larger batch or input size helps)")
        logger.warning(
            "inference-mode gap: at epoch %d the main head's metric on %d fixed training images is "
            "%.4f in training mode (batch statistics) but %.4f in inference mode (moving statistics), "
            "a gap of %+.4f (threshold %.2f). The model you evaluate, predict with and export runs in "
            "inference mode: the training log does not describe it. Likely causes: %s.",
            event["epoch"], event["examples"], training_mode, inference_mode, gap, self.threshold,
            "; ".join(causes),
        )


def _memory(momentum):
    return "inf" if momentum >= 1 else f"{1.0 / (1.0 - momentum):.0f}"


def _main_metric(labels, predictions, num_classes, per_pixel):
    """Accuracy, or for label maps the mIoU (labels outside [0, num_classes) left out)."""
    if per_pixel:
        return segmentation.mean_iou(labels, predictions, num_classes)
    valid = (labels >= 0) & (labels < num_classes)
    return float(np.mean(predictions[valid] == labels[valid])) if valid.any() else 0.0
