"""Where a run's wall-clock goes: seconds per epoch, and per training step.

`EpochTimer` is a Keras callback. It records each epoch's wall-clock (training
plus validation) and the part spent on training batches alone, so a run's
record carries a step time that does not depend on how long validation took.
Equal-time baselines (`comparison`, `plain@<variant>`) compare runs by their
fastest epoch (the first excluded: it traces the step), which a load on a
shared machine for part of a run does not move (a load throughout does).

Example:
```python
timer = EpochTimer(steps_per_epoch=421)
model.fit(train, validation_data=validation, epochs=3, callbacks=[timer])
timer.summary()   # {"epoch_seconds": [...], "train_epoch_seconds": [...], "step_seconds": 0.041}
```
"""

import hashlib
import os
import subprocess
import time

import keras
import numpy as np


class EpochTimer(keras.callbacks.Callback):
    """Records wall-clock seconds per epoch, whole and training batches only."""

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch_seconds = []
        self.train_epoch_seconds = []
        self.epoch_cpu_seconds = []
        self._epoch_start = None
        self._epoch_cpu_start = None
        self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_cpu_start = time.process_time()
        self._train_end = None

    def on_test_begin(self, logs=None):
        # Validation inside fit: the epoch's training batches are done.
        if self._epoch_start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_start is None:
            return
        end = time.perf_counter()
        self.epoch_seconds.append(end - self._epoch_start)
        self.train_epoch_seconds.append((self._train_end or end) - self._epoch_start)
        self.epoch_cpu_seconds.append(time.process_time() - self._epoch_cpu_start)
        self._epoch_start = None

    def summary(self):
        """The record's timing fields; the step time is the median epoch's (the first traces the step).

        `epoch_cpu_seconds` is the process's CPU time per epoch (all its
        threads), which load from other processes moves far less than
        wall-clock: a check on wall-clock ratios measured on a shared machine.
        """
        summary = timing_summary(self.epoch_seconds, self.train_epoch_seconds, self.steps_per_epoch)
        summary["epoch_cpu_seconds"] = [round(float(s), 3) for s in self.epoch_cpu_seconds]
        return summary


def timing_summary(epoch_seconds, train_epoch_seconds, steps_per_epoch):
    """{"epoch_seconds", "train_epoch_seconds", "step_seconds"} from per-epoch timings.

    Example:
    >>> timing_summary([12.0, 5.0, 5.2], [11.0, 4.0, 4.2], 100)["step_seconds"]
    0.041
    """
    steady = train_epoch_seconds[1:] or train_epoch_seconds
    step = float(np.median(steady)) / max(1, steps_per_epoch) if steady else None
    return {
        "epoch_seconds": [round(float(s), 3) for s in epoch_seconds],
        "train_epoch_seconds": [round(float(s), 3) for s in train_epoch_seconds],
        "step_seconds": None if step is None else round(step, 6),
    }


def fastest_epoch_seconds(record):
    """The fastest wall-clock epoch of a run record, the first excluded (its whole time over epochs without timings).

    Example:
    >>> fastest_epoch_seconds({"timing": {"epoch_seconds": [9.0, 4.1, 6.0, 4.0]}})
    4.0
    """
    epochs = record.get("timing", {}).get("epoch_seconds") or []
    steady = epochs[1:] or epochs
    if steady:
        return float(min(steady))
    return float(record["train_seconds"]) / max(1, int(record["train_config"]["epochs"]))


def code_commit(directory=None):
    """The git commit the running code was loaded from ("<sha>" or "<sha>-dirty"), or None outside a checkout.

    Without `directory`, the commit read when this module was imported: a
    long comparison keeps running the code it started with, whatever lands
    in the checkout meanwhile.
    """
    if directory is None:
        return LOADED_FROM_COMMIT
    return _read_commit(directory)


def _read_commit(directory):
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10,
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# The files that decide what a training run computes (paths from the repository root): two runs whose
# `method_code` fingerprints agree ran the same method, whatever else differed between their commits.
METHOD_FILES = (
    "mbakt_tf/model.py", "mbakt_tf/multi_branch_model.py", "mbakt_tf/segmentation_model.py",
    "mbakt_tf/branches.py", "mbakt_tf/losses.py", "mbakt_tf/discriminator.py", "mbakt_tf/backbones.py",
    "mbakt_tf/config.py", "mbakt_tf/custom_loop.py", "mbakt_tf/segmentation.py", "mbakt_tf/training.py",
    "mbakt_tf/data/augment.py", "mbakt_tf/data/pipeline.py", "mbakt_tf/data/classification.py",
    "mbakt_tf/data/fashion_mnist.py", "mbakt_tf/data/synthetic.py", "mbakt_tf/data/split_plan.py",
)


def method_code_fingerprint(read_file):
    """A 12-hex-digit fingerprint of `METHOD_FILES`' contents; `read_file(path) -> bytes or None`.

    Example:
    >>> method_code_fingerprint(lambda path: b"same") == method_code_fingerprint(lambda path: b"same")
    True
    >>> method_code_fingerprint(lambda path: b"a") == method_code_fingerprint(lambda path: b"b")
    False
    """
    digest = hashlib.sha256()
    for path in METHOD_FILES:
        content = read_file(path)
        digest.update(path.encode() + b"\0" + (b"<missing>" if content is None else content) + b"\0")
    return digest.hexdigest()[:12]


def _read_from(root):
    def read(path):
        try:
            with open(os.path.join(root, path), "rb") as f:
                return f.read()
        except OSError:
            return None

    return read


LOADED_FROM_COMMIT = _read_commit(os.path.dirname(os.path.abspath(__file__)))
# Read at import, like the commit: the method code this process runs.
LOADED_METHOD_CODE = method_code_fingerprint(_read_from(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
