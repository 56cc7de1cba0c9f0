"""Exact resume after a crash: backups of the whole training state and the data position.

`keras.callbacks.BackupAndRestore` (Keras 3.15.1) saves every `save_freq`
steps but restores only the epoch number: a run killed mid-epoch repeats the
epoch's first steps on weights that already learned from them, and its files
are written in place (a crash while saving corrupts the backup).
`ResumableBackup` restores exactly:

* weights, BatchNorm statistics, the discriminator and **both** optimizers'
  state (slots and step counters, so the adversarial warm-up and the learning
  rate schedule continue where they were): one `model.save_weights` file,
  written after `MBAKT.compile` built both optimizers;
* the position: epoch, step within the epoch, and the running metric state of
  that epoch (its logged means and history come out as without the crash);
* the data: training reads one stream, `training_stream(dataset)` =
  `dataset.repeat()` with `steps_per_epoch`, so a batch's shuffle order and
  augmentation randomness depend only on its index; a resumed run skips the
  consumed batches through the pipeline (reading them without training, a
  fraction of the training time) and continues with exactly the next one. The
  resumed epoch runs only its remaining steps.

Each backup is a folder `ckpt-s<global step>-e<epoch>` holding
`model.weights.h5` and `state.json`, written under a temporary name and
renamed when complete: a crash while saving leaves the previous backup intact.
The newest `keep` backups are kept.

Exactness needs the same command (the backup stores a fingerprint of the
configs and refuses another one), the same seed and deterministic ops
(`tf.config.experimental.enable_op_determinism()`, `--deterministic`). Under
`mirrored`/`one_device`, Keras's `fit` first peeks a batch from a fresh
iterator, which lets the augmentation random state run ahead by a
timing-dependent amount: weights, optimizers, step and data position are still
restored exactly, only the augmentation draws may differ. The multi-worker
loop (`custom_loop`) does not peek.

Example:
```python
backup = ResumableBackup("/tmp/run/backup", steps_per_epoch=420, save_steps=100)
position = backup.restore(model)          # None on a fresh start
model.fit(backup.stream(train_ds), steps_per_epoch=420, epochs=10,
          initial_epoch=backup.initial_epoch, callbacks=[backup])   # backup first in the list
history = backup.history                  # every epoch, including those before the crash
backup.finish()                           # delete the backups once the outputs are saved
```
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Optional

import keras
import numpy as np

from mbakt_tf import atomic

logger = logging.getLogger("mbakt_tf.resume")

_CHECKPOINT = re.compile(r"^ckpt-s(\d+)-e(\d+)$")
WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"


@dataclasses.dataclass
class Position:
    """Where a backup stands: `step` batches of (0-based) `epoch` are done."""

    epoch: int
    step: int
    global_step: int
    path: Optional[str] = None
    history: dict = dataclasses.field(default_factory=dict)
    metrics: Optional[list] = None


def _read(variable):
    value = getattr(variable, "value", variable)
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _iterations(model):
    return int(_read(model.optimizer.iterations))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def training_stream(dataset, batches_done=0):
    """One stream of training batches for the whole run: `dataset.repeat()`, minus those done.

    Train on it with `steps_per_epoch` = batches per pass of `dataset` (which
    must yield whole batches, as `data.load_classification`'s training split
    does). One iterator serves the whole run, so every batch's shuffle order and
    augmentation random state depend only on its index in the stream, not on
    how many iterators `fit` creates; `skip(batches_done)` reads and drops the
    batches an interrupted run consumed (same pipeline work, no training), so a
    resumed run continues with exactly the next batch.
    """
    stream = dataset.repeat()
    if batches_done:
        stream = stream.skip(int(batches_done))
    return stream


def _first_difference(saved, current):
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return key, saved.get(key), current.get(key)
    return None


class ResumableBackup(keras.callbacks.Callback):
    """Backs up the whole training state every `save_steps` steps and each epoch end.

    Args:
        backup_dir: folder of the backups; one run per folder.
        steps_per_epoch: training batches per epoch (the last batch of an
            epoch is backed up by the epoch-end backup, after validation).
        save_steps: also back up every this many steps; 0: epoch ends only.
        keep: number of newest backups kept (older ones are deleted).
        fingerprint: a JSON-able dict describing the run (configs); a backup
            written with another fingerprint is refused, not silently mixed.
        write: False on non-chief workers of a multi-worker run: they save
            into a temporary folder that is deleted (same work and collectives
            as the chief, no clash on the shared folder).
        before_save: optional callable run before each backup, e.g.
            `lambda: distribute.average_replica_variables(model, strategy)` so
            the backup holds the replicas' mean BatchNorm statistics.
    """

    def __init__(self, backup_dir, steps_per_epoch, save_steps=0, keep=2, fingerprint=None,
                 write=True, before_save=None):
        super().__init__()
        if not backup_dir:
            raise ValueError("backup_dir must be a folder path.")
        if save_steps < 0:
            raise ValueError(f"save_steps must be >= 0, got {save_steps}.")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}.")
        self.backup_dir = os.fspath(backup_dir)
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_steps = int(save_steps)
        self.keep = int(keep)
        self.fingerprint = _jsonable(fingerprint or {})
        self.write = write
        self.before_save = before_save
        self._write_dir = self.backup_dir if write else tempfile.mkdtemp(prefix="mbakt_backup_")
        self.position = None  # where the restored backup stood (None: fresh start)
        self.last_saved = None  # the newest complete backup of this process
        self.history = {}
        self._epoch = 0
        self._offset = 0
        self._since_save = 0
        self._ending_early = False

    # ------------------------------------------------------------ restoring

    def checkpoints(self):
        """Complete backups in `backup_dir`, oldest first, as (global_step, epoch, path)."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = []
        for name in os.listdir(self.backup_dir):
            match = _CHECKPOINT.match(name)
            path = os.path.join(self.backup_dir, name)
            if match and os.path.isfile(os.path.join(path, STATE_FILE)):
                found.append((int(match.group(1)), int(match.group(2)), path))
        return sorted(found)

    def restore(self, model):
        """Loads the newest backup into `model` (compiled); returns its `Position` or None."""
        self.set_model(model)
        if self.write:
            atomic.remove_stale_temporaries(self.backup_dir)
        checkpoints = self.checkpoints()
        if not checkpoints:
            return None
        path = checkpoints[-1][2]
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
        difference = _first_difference(state.get("fingerprint", {}), self.fingerprint)
        if difference is not None:
            key, old, new = difference
            raise ValueError(
                f"the backup in {self.backup_dir} belongs to another run: {key} was {old!r}, "
                f"now {new!r}. Resume with the same flags, or delete the folder / pick another "
                "backup_dir to start afresh."
            )
        missing = [
            name for name, optimizer in (("g_optimizer", model.optimizer),
                                         ("d_optimizer", getattr(model, "d_optimizer", None)))
            if optimizer is not None and not optimizer.built
        ]
        if missing:
            raise ValueError(f"build the optimizers before restoring (unbuilt: {missing}); "
                             "MBAKT.compile does it.")
        model.load_weights(os.path.join(path, WEIGHTS_FILE))
        if _iterations(model) != state["global_step"]:
            raise ValueError(
                f"backup {path}: restored step counter {_iterations(model)} != "
                f"{state['global_step']} recorded; the weights file does not match its state."
            )
        self.position = Position(
            epoch=state["epoch"], step=state["step"], global_step=state["global_step"], path=path,
            history=state.get("history", {}), metrics=state.get("metrics"),
        )
        self.history = {k: list(v) for k, v in self.position.history.items()}
        self.last_saved = self.position
        self._epoch = self.position.epoch
        logger.warning(
            "Resuming from %s: epoch %d, step %d of %d (global step %d).", path,
            self.position.epoch + 1, self.position.step, self.steps_per_epoch,
            self.position.global_step,
        )
        return self.position

    @property
    def initial_epoch(self):
        """The epoch to continue (0 on a fresh start)."""
        return 0 if self.position is None else self.position.epoch

    @property
    def batches_done(self):
        """Training batches consumed before the restored backup (its data position)."""
        if self.position is None:
            return 0
        return self.position.epoch * self.steps_per_epoch + self.position.step

    def stream(self, dataset):
        """`training_stream(dataset)` positioned where the restored run stopped."""
        return training_stream(dataset, self.batches_done)

    # --------------------------------------------------------------- saving

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._offset = 0
        self._ending_early = False
        position = self.position
        if position is not None and epoch == position.epoch and position.step:
            self._offset = position.step
            if position.metrics is not None:
                self._assign_metrics(position.metrics)

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset + batch + 1
        if self._offset and done >= self.steps_per_epoch:
            # The resumed epoch has only its remaining steps: end it here. `fit`
            # then validates and calls on_epoch_end, which clears the flag.
            self.model.stop_training = True
            self._ending_early = True
        if not self.save_steps:
            return
        self._since_save += 1
        if self._since_save < self.save_steps or done >= self.steps_per_epoch:
            return  # the epoch end backs up the last step (after validation)
        if not self._finite(logs):
            return
        self._since_save = 0
        self.save(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        if self._ending_early:
            self.model.stop_training = False  # runs before later callbacks (put this one first)
            self._ending_early = False
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(np.asarray(value)))
        self._since_save = 0
        if self._finite(logs):
            self.save(epoch + 1, 0)

    @staticmethod
    def _finite(logs):
        values = [np.asarray(v, dtype=float) for v in (logs or {}).values()]
        return all(np.all(np.isfinite(v)) for v in values)

    def save(self, epoch, step):
        """Writes a backup of the current state as position (`epoch`, `step`)."""
        if self.before_save is not None:
            self.before_save()
        if not all(np.all(np.isfinite(_read(v))) for v in self.model.trainable_variables):
            logger.warning("Not backing up epoch %d step %d: the weights are not finite.",
                           epoch + 1, step)
            return
        global_step = _iterations(self.model)
        name = f"ckpt-s{global_step:09d}-e{epoch:05d}"
        final = os.path.join(self._write_dir, name)
        state = {
            "epoch": epoch, "step": step, "global_step": global_step,
            "steps_per_epoch": self.steps_per_epoch, "history": self.history,
            "metrics": self._metric_values() if step else None,
            "fingerprint": self.fingerprint,
        }
        if os.path.exists(final):  # the same state was saved already (e.g. right after a resume)
            self.last_saved = Position(epoch, step, global_step, os.path.join(self.backup_dir, name))
            return
        with atomic.atomic_directory(final) as tmp:
            self.model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(_jsonable(state), f, indent=1)
        self.last_saved = Position(epoch, step, global_step, os.path.join(self.backup_dir, name))
        if self.write:
            for _, _, old in self.checkpoints()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)

    def finish(self):
        """Deletes the backups (call after the run's outputs are saved)."""
        if self.write:
            shutil.rmtree(self.backup_dir, ignore_errors=True)
        else:
            shutil.rmtree(self._write_dir, ignore_errors=True)

    # -------------------------------------------------------------- metrics

    def _metric_values(self):
        return [[_read(v).tolist() for v in metric.variables] for metric in self.model.metrics]

    def _assign_metrics(self, values):
        metrics = self.model.metrics
        if len(values) != len(metrics):
            return
        for metric, saved in zip(metrics, values):
            for variable, value in zip(metric.variables, saved):
                variable.assign(np.asarray(value, dtype=variable.dtype))
