"""Exact resume: kill -9 mid-epoch then the same command equals an uninterrupted run; atomic saves."""

import io
import json
import os
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mbakt_tf import atomic, data, resume
from tests.helpers import tiny_batch, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# scripts/train.py with one extra callback that SIGKILLs the process at the
# end of a given step (after that step's update, before any backup of it).
KILLER = r"""
import os, signal
import keras
from mbakt_tf import training

KILL_AT = int(os.environ["KILL_AT_STEP"])

class KillAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.value.numpy()) >= KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

_train = training.train
def train(*args, callbacks=(), **kwargs):
    return _train(*args, callbacks=[*callbacks, KillAt()], **kwargs)
training.train = train

from mbakt_tf.cli.train import run
run()
"""


def keras_file_arrays(path):
    """Every array in a .keras file (weights, BN statistics, both optimizers' state)."""
    with zipfile.ZipFile(path) as archive:
        payload = archive.read("model.weights.h5")
    arrays = {}
    with h5py.File(io.BytesIO(payload), "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, np.array(obj))
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_kill_9_mid_epoch_then_same_command_equals_uninterrupted_run(tmp_path):
    # 3 epochs of 6 steps, a backup every 4 steps and at each epoch end. The
    # killed run dies at the end of step 11 (epoch 2, step 5): its newest
    # backup is step 10 (epoch 2, step 4), so the restart must restore both
    # optimizers, the step counter (adversarial warm-up over 10 steps), the
    # epoch's running metrics and the data position (shuffle order and
    # augmentation of epoch 2, step 5 on), then redo step 11.
    flags = [
        "--dataset=synthetic", "--mode=mbakt", "--epochs=3", "--batch_size=16",
        "--train_limit=96", "--test_limit=32", "--validation_fraction=0.05",
        "--adversarial_warmup_steps=10", "--deterministic", "--backup_steps=4", "--verbose=0",
        f"--output_dir={tmp_path}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    train_py = os.path.join(ROOT, "scripts", "train.py")
    uninterrupted = subprocess.Popen(
        [sys.executable, train_py, *flags, "--run_name=a", f"--backup_dir={tmp_path}/backup_a"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    b_flags = [*flags, "--run_name=b", f"--backup_dir={tmp_path}/backup_b"]
    killed = subprocess.run([sys.executable, "-c", KILLER, *b_flags], cwd=ROOT, timeout=600,
                            env=dict(env, KILL_AT_STEP="11"), capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "b").exists() or not (tmp_path / "b" / "model.keras").exists()
    backups = sorted(os.listdir(tmp_path / "backup_b"))
    assert backups[-1] == "ckpt-s000000010-e00001", backups

    resumed = subprocess.run([sys.executable, train_py, *b_flags], cwd=ROOT, env=env, timeout=600,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr and "epoch 2, step 4 of 6" in resumed.stderr
    out, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-3000:]

    a, b = keras_file_arrays(tmp_path / "a" / "model.keras"), keras_file_arrays(tmp_path / "b" / "model.keras")
    assert set(a) == set(b)
    assert any(k.startswith("d_optimizer/") for k in a) and any(k.startswith("optimizer/") for k in a)
    assert int(b["optimizer/vars/0"]) == 18 and int(b["d_optimizer/vars/0"]) == 18  # step counters
    # Same seed + deterministic ops on CPU: bit-identical (tolerance 0).
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].size)
    assert worst == 0.0, worst

    results_a = json.loads((tmp_path / "a" / "results.json").read_text())
    results_b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results_b["resumed_from"] == {"epoch": 1, "step": 4, "global_step": 10}
    assert results_a["history"] == results_b["history"]  # incl. the interrupted epoch's means
    assert results_a["test"] == results_b["test"]
    assert not (tmp_path / "backup_a").exists() and not (tmp_path / "backup_b").exists()


def _fit_with_backup(backup_dir, epochs=3, crash_at=None, save_steps=1, fingerprint=None):
    """fit() 3 epochs of 4 steps with a backup every step; optionally crash after a step."""
    keras.utils.set_random_seed(0)
    images, labels = tiny_batch(batch=16, num_classes=4)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    model = tiny_model(mode="mbakt")
    backup = resume.ResumableBackup(backup_dir, steps_per_epoch=4, save_steps=save_steps,
                                    fingerprint=fingerprint or {"run": 1})
    backup.restore(model)
    callbacks = [backup] + ([_CrashAfter(crash_at)] if crash_at else [])
    model.fit(backup.stream(dataset), steps_per_epoch=4, epochs=epochs,
              initial_epoch=backup.initial_epoch, callbacks=callbacks, verbose=0, shuffle=False)
    return model, backup


class _CrashAfter(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) >= self.step:
            raise KeyboardInterrupt  # a crash right after this step (after its backup)


def test_backup_restores_weights_both_optimizers_and_position(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fit_with_backup(tmp_path, crash_at=6)
    restored = tiny_model(mode="mbakt")
    backup = resume.ResumableBackup(tmp_path, steps_per_epoch=4, fingerprint={"run": 1})
    position = backup.restore(restored)
    assert (position.epoch, position.step, position.global_step) == (1, 2, 6)
    assert backup.batches_done == 6
    assert int(restored.optimizer.iterations) == 6 and int(restored.d_optimizer.iterations) == 6
    # Slots of both optimizers are back (SGD momentum, Adam moments): non-zero.
    assert all(np.abs(v.numpy()).sum() > 0 for v in restored.optimizer.variables[2:4])
    assert all(np.abs(v.numpy()).sum() > 0 for v in restored.d_optimizer.variables[2:4])
    assert len(backup.checkpoints()) == 2  # keep=2: older ones deleted
    assert len(backup.history["loss"]) == 1  # epoch 1's logs travel with the backup

    other = resume.ResumableBackup(tmp_path, steps_per_epoch=4, fingerprint={"run": 2})
    with pytest.raises(ValueError, match="belongs to another run: run was 1, now 2"):
        other.restore(tiny_model(mode="mbakt"))


def test_a_run_restarted_after_its_last_epoch_does_not_train_again(tmp_path):
    # E.g. killed while saving its outputs: the epoch-end backup of the last epoch remains.
    finished, _ = _fit_with_backup(tmp_path, epochs=2)
    restarted, backup = _fit_with_backup(tmp_path, epochs=2)
    assert (backup.position.epoch, backup.position.step) == (2, 0)
    assert int(restarted.optimizer.iterations) == 8 and len(backup.history["loss"]) == 2
    for a, b in zip(finished.weights, restarted.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    backup.finish()
    assert not tmp_path.exists()


def test_training_stream_skips_to_the_exact_batch():
    """Batch k of a resumed stream is batch k of the uninterrupted one (shuffle and augmentation)."""

    def splits():
        keras.utils.set_random_seed(3)
        return data.load_classification(
            "synthetic", batch_size=8, validation_fraction=0.0, seed=3,
            synthetic_kwargs=dict(num_train=32, num_test=8, image_shape=(12, 12, 1), num_classes=3))

    full = [x.numpy() for x, _ in resume.training_stream(splits().train).take(11)]
    tail = [x.numpy() for x, _ in resume.training_stream(splits().train, batches_done=6).take(5)]
    for a, b in zip(full[6:], tail):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full[0], full[4])  # epochs differ (reshuffled, re-augmented)


def test_atomic_saves_keep_the_previous_file_when_a_save_fails(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"v": 1})

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"v": 2, "half')  # a crash mid-write
            raise Boom()
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no temporary left

    model = tiny_model(mode="plain")
    model_path = tmp_path / "model.keras"
    atomic.save_model(model, model_path)
    before = model_path.read_bytes()

    def failing_save(filepath, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK half a zip")
        raise Boom()

    model.save = failing_save
    with pytest.raises(Boom):
        atomic.save_model(model, model_path)
    assert model_path.read_bytes() == before
    assert keras.models.load_model(model_path) is not None
    assert sorted(os.listdir(tmp_path)) == ["model.keras", "results.json"]
    (tmp_path / ".model.keras.tmp-x.keras").write_bytes(b"left by a SIGKILL")
    (tmp_path / ".other.tmp-y").write_bytes(b"not ours")
    atomic.remove_stale_temporaries(tmp_path, ["model.keras"])
    assert sorted(os.listdir(tmp_path)) == [".other.tmp-y", "model.keras", "results.json"]


def test_incomplete_backups_are_ignored_and_cleaned(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fit_with_backup(tmp_path, crash_at=3)
    # What a SIGKILL during a backup leaves: a temporary folder, never a ckpt-* one.
    (tmp_path / ".ckpt-s000000004-e00001.tmp-abc").mkdir()
    (tmp_path / ".ckpt-s000000004-e00001.tmp-abc" / "model.weights.h5").write_bytes(b"half")
    backup = resume.ResumableBackup(tmp_path, steps_per_epoch=4, fingerprint={"run": 1})
    position = backup.restore(tiny_model(mode="mbakt"))
    assert position.global_step == 3
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))
