"""Guards: NaN stops training naming the term and step, collapse warnings, flag validation."""

import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import mbakt_tf
from mbakt_tf import branches, data, guards, resume, training
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.data import synthetic
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def splits_with_nan_batch(nan_batch, batch_size=8, num_batches=4):
    """Unshuffled, unaugmented training batches; batch `nan_batch` (1-based) holds NaN pixels."""
    images, labels = synthetic.make_synthetic(
        num_classes=4, image_shape=(16, 16, 1), num_examples=batch_size * num_batches)
    test = (images[:batch_size].copy(), labels[:batch_size])
    images[(nan_batch - 1) * batch_size:nan_batch * batch_size, 3, 3, 0] = np.nan
    info = data.DatasetInfo(
        name="nan_test", num_classes=4, input_shape=(16, 16, 1), class_names=list("abcd"),
        num_train=len(images), num_validation=0, num_test=batch_size)
    return data.DatasetSplits(
        train=data.make_dataset((images, labels), batch_size=batch_size),
        validation=None, test=data.make_dataset(test, batch_size=batch_size), info=info)


def test_nan_input_stops_training_naming_the_term_and_step_and_keeps_the_last_good_backup(tmp_path):
    config = training.TrainConfig(
        dataset="nan_test", epochs=2, batch_size=8, output_dir=str(tmp_path), run_name="run",
        verbose=0, backup_dir=str(tmp_path / "backup"), backup_steps=1, tensorboard=False,
    )
    with pytest.raises(guards.NonFiniteLossError) as caught:
        training.train(config, MBAKTConfig(mode="mbakt", adversarial_warmup_steps=0),
                       splits=splits_with_nan_batch(nan_batch=3))
    error = caught.value
    assert error.term == "ce" and error.step == 3
    message = str(error)
    assert "non-finite loss term 'ce' at step 3 (epoch 1, batch 3)" in message
    assert "Last good backup: step 2" in message
    # The run's outputs were not written; the newest backup is step 2, finite.
    assert not (tmp_path / "run" / "model.keras").exists()
    assert not (tmp_path / "run" / "logs").exists()  # tensorboard=False
    backup = resume.ResumableBackup(tmp_path / "backup", steps_per_epoch=4,
                                    fingerprint=training.run_fingerprint(config, MBAKTConfig(
                                        mode="mbakt", adversarial_warmup_steps=0)))
    model = training.build_model(config, MBAKTConfig(mode="mbakt", adversarial_warmup_steps=0),
                                 splits_with_nan_batch(3).info, 4)
    position = backup.restore(model)
    assert (position.epoch, position.step, position.global_step) == (0, 2, 2)
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_non_finite_guard_names_the_first_bad_term():
    guard = guards.NonFiniteLossGuard()
    guard.set_model(keras.Sequential())  # no optimizer: the step is not known
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"ce": 1.0, "kd": 0.5, "loss": 1.5})
    with pytest.raises(guards.NonFiniteLossError, match=r"non-finite loss term 'kd' at this step \(epoch 1, batch 2\): kd=inf, loss=inf"):
        guard.on_train_batch_end(1, {"ce": 1.0, "kd": np.float32(np.inf), "loss": np.inf})


class _Stub:
    def __init__(self, step):
        self.optimizer = type("Optimizer", (), {"iterations": keras.Variable(step)})()


def _feed(monitor, per_step, epoch_length=None):
    """Feeds Keras-style logs (running means over the epoch) of per-step accuracies."""
    epoch_length = epoch_length or len(per_step)
    for start in range(0, len(per_step), epoch_length):
        monitor.on_epoch_begin(start // epoch_length)
        values = per_step[start:start + epoch_length]
        for batch in range(len(values)):
            monitor.on_train_batch_end(
                batch, {"d_balanced_accuracy": float(np.mean(values[:batch + 1])), "d_loss": 0.01})


def test_collapse_monitor_warns_with_the_numbers(caplog):
    monitor = guards.DiscriminatorCollapseMonitor(patience=6, margin=0.02)
    monitor.set_model(_Stub(step=42))
    with caplog.at_level(logging.WARNING, logger="mbakt_tf.guards"):
        _feed(monitor, [0.6, 0.7] + [1.0] * 3 + [0.99] * 4, epoch_length=5)
    assert len(monitor.events) == 1
    event = monitor.events[0]
    assert event["side"] == "1" and event["steps"] == 6 and event["step"] == 42
    assert event["min"] == pytest.approx(0.99, abs=1e-6) and event["max"] == pytest.approx(1.0)
    assert "discriminator collapse: d_balanced_accuracy has been within 0.02 of 1 for 6 steps" in caplog.text
    assert "d_loss 0.0100" in caplog.text

    # Near 0, after a recovery: a second warning. Balanced accuracies: none.
    _feed(monitor, [0.5] * 3 + [0.0] * 6)
    assert [e["side"] for e in monitor.events] == ["1", "0"]
    quiet = guards.DiscriminatorCollapseMonitor(patience=3)
    quiet.set_model(_Stub(step=1))
    _feed(quiet, [0.5, 1.0, 0.4, 1.0, 0.97, 0.3, 1.0, 1.0])
    assert quiet.events == []


def test_train_config_rejects_bad_distribution_fields():
    for kwargs, message in [
        (dict(strategy="tpu"), "strategy must be one of"),
        (dict(cpu_devices=0), "cpu_devices must be >= 1"),
        (dict(strategy="multi_worker", cpu_devices=2), "cpu_devices > 1 does not apply"),
        (dict(strategy="mirrored", jit_compile=True), "jit_compile=True is not supported"),
        (dict(backup_steps=-1, backup_dir="x"), "backup_steps must be >= 0"),
        (dict(backup_steps=10), "backup_steps needs backup_dir"),
        (dict(collapse_patience=-1), "collapse_patience must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            training.TrainConfig(**kwargs)


FLAG_CASES = [
    (["--strategy=mirrored", "--cpu_devices=2", "--batch_size=15", "--backup_dir={out}/b"],
     "batch_size=15 is not divisible by the 2 replicas of the strategy"),
    (["--beta=-0.5"], "MBAKTConfig.beta must be >= 0, got -0.5"),
    (["--gamma=-1"], "MBAKTConfig.gamma must be >= 0"),
    (["--weight_decay=-0.1"], "weight_decay must be >= 0"),
    (["--temperature=-2"], "MBAKTConfig.temperature must be > 0"),
    (["--adversarial_temperature=0"], "MBAKTConfig.adversarial_temperature must be > 0"),
    (["--strategy=parameter_server"], "flag --strategy=parameter_server: value should be one of"),
    (["--adaptation=fancy"], "flag --adaptation=fancy: value should be one of"),
    (["--cpu_devices=0"], "cpu_devices must be >= 1"),
    (["--strategy=multi_worker", "--cpu_devices=2"], "cpu_devices > 1 does not apply"),
    (["--strategy=mirrored", "--jit_compile"], "jit_compile=True is not supported"),
    (["--backup_steps=5"], "backup_steps needs backup_dir"),
    (["--backup_dir={out}/backup", "--backup_steps=-1"], "backup_steps must be >= 0"),
    (["--backbone=resnet1000"], "flag --backbone=resnet1000: value should be one of"),
    (["--dataset=no_such_dataset"], "no_such_dataset"),
    (["--tensorboard", "--output_dir={blocker}"], "--output_dir/--run_name: Cannot write to '{blocker}/"),
]


# Runs scripts/train.py's main() once per flag set in one fresh process (one
# TensorFlow start-up instead of one per case); absl parses the flags as
# app.run does, and the errors are what the script prints.
FLAG_DRIVER = r"""
import contextlib, io, json, sys
from absl import app, flags
from mbakt_tf.cli import train as cli_train
FLAGS = flags.FLAGS
outcomes = []
for args in json.loads(sys.argv[1]):
    FLAGS.unparse_flags()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = cli_train.main(FLAGS(["train.py", *args]))
        outcomes.append(f"exit code {code}: {stderr.getvalue()}")
    except (flags.Error, app.UsageError) as error:
        outcomes.append(str(error))
print("RESULT " + json.dumps(outcomes))
"""


def test_train_script_rejects_every_bad_flag_before_any_work(tmp_path, tmp_path_factory):
    # A run folder under a regular file cannot be created by anyone (tests run as root, where chmod does
    # not stop writes).
    blocker = tmp_path_factory.mktemp("blocked") / "a_file"
    blocker.write_text("not a folder")
    cases = [[f"--output_dir={tmp_path}/out", "--dataset=synthetic", "--epochs=1",
              *(a.format(out=tmp_path, blocker=blocker) for a in args)] for args, _ in FLAG_CASES]
    process = subprocess.run(
        [sys.executable, "-c", FLAG_DRIVER, json.dumps(cases)], capture_output=True, text=True,
        cwd=ROOT, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, process.stderr[-3000:]
    for (args, message), outcome in zip(FLAG_CASES, json.loads(lines[0][len("RESULT "):])):
        assert message.format(blocker=blocker) in outcome, (args, outcome)
        assert "Epoch 1" not in outcome
    assert not any(tmp_path.iterdir())  # no run folder, no backup
    assert blocker.read_text() == "not a folder"


def _epochs(guard, rows):
    for epoch, (value, ratio) in enumerate(rows):
        guard.on_epoch_end(epoch, {"main_miou": value, "main_accuracy": 0.99, "adv_grad_ratio": ratio})


def test_takeover_guard_names_the_pattern_when_main_falls_as_the_adversary_grows(caplog):
    # The numbers of the keras-cv segmenter that collapsed (README "Segmentation", no gradient cap).
    model = keras.Sequential()
    model.config = MBAKTConfig(gamma=0.1, max_adversarial_grad_ratio=None)
    guard = guards.AdversarialTakeoverGuard(stop=True)
    guard.set_model(model)
    with caplog.at_level(logging.WARNING, logger="mbakt_tf.guards"):
        _epochs(guard, [(0.38, 0.0006), (0.61, 0.01), (0.75, 0.04), (0.79, 0.11), (0.74, 0.22), (0.60, 0.37)])
    assert len(guard.events) == 1 and model.stop_training
    event = guard.events[0]
    assert event["metric"] == "main_miou" and event["epoch"] == 6 and event["best_epoch"] == 4
    assert event["value"] == pytest.approx(0.60) and event["adv_grad_ratio_at_best"] == pytest.approx(0.11)
    assert "adversarial takeover: the main branch's training main_miou fell from 0.7900 (epoch 4) to 0.6000" in caplog.text
    assert "--max_adversarial_grad_ratio (now None)" in caplog.text


@pytest.mark.parametrize("rows", [
    [(0.80, 0.1), (0.70, 0.1)],               # fell, but the adversary did not grow: not its doing
    [(0.80, 0.1), (0.78, 0.3), (0.80, 0.3)],  # grew, but the main branch held (within drop)
])
def test_takeover_guard_stays_quiet_without_the_pattern(rows):
    guard = guards.AdversarialTakeoverGuard()
    guard.set_model(keras.Sequential())
    _epochs(guard, rows)
    assert guard.events == []


# ------------------------------------------------------------------ inference-mode gap


def _learnable_classification(num_examples=256, batch_size=16):
    images, labels = synthetic.make_synthetic(num_classes=4, image_shape=(16, 16, 1), num_examples=num_examples)
    return data.make_dataset((images, labels), batch_size=batch_size, training=True)


def _plain_small_resnet(stale):
    """A plain small_resnet8 classifier; `stale`: moving statistics left as Keras's exponential averages at
    momentum 0.999 (keras-cv MobileNetV3's), which after 48 steps still hold ~95% of their initial values."""
    model = mbakt_tf.MBAKT.from_backbone("small_resnet8", 4, (16, 16, 1), config=MBAKTConfig(mode="plain"))
    model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    if stale:
        model.precise_batch_norm_examples = 0
        for layer in branches.batch_norms(model.network):
            layer.momentum = 0.999
    return model


def test_inference_mode_gap_guard_names_the_pattern_on_stale_statistics(caplog):
    keras.utils.set_random_seed(0)
    train = _learnable_classification()
    model = _plain_small_resnet(stale=True)
    guard = guards.InferenceModeGapGuard(train)
    with caplog.at_level(logging.WARNING, logger="mbakt_tf.guards"):
        history = model.fit(train, epochs=3, verbose=0, callbacks=[guard]).history
    # The same images score well in training mode and badly in inference mode.
    assert min(history["training_mode_metric"][1:]) > 0.9
    assert min(history["inference_mode_gap"][1:]) > 0.3
    assert len(guard.events) == 1  # one warning per episode
    event = guard.events[0]
    assert event["epoch"] == 2 and event["examples"] == 64 and event["max_momentum"] == pytest.approx(0.999)
    assert not event["recalibrated"] and event["batch_norms_called_twice"] == []
    assert "inference-mode gap: at epoch 2 the main head's metric on 64 fixed training images" in caplog.text
    assert "momentum up to 0.999" in caplog.text and "branches.recalibrate_batch_norms" in caplog.text


def test_inference_mode_gap_guard_silent_when_statistics_are_recomputed(caplog):
    # The same run with the library's default: MBAKT's fit recomputes the statistics at each epoch end.
    keras.utils.set_random_seed(0)
    train = _learnable_classification()
    model = _plain_small_resnet(stale=False)
    guard = guards.InferenceModeGapGuard(train)
    with caplog.at_level(logging.WARNING, logger="mbakt_tf.guards"):
        history = model.fit(train, epochs=3, verbose=0, callbacks=[guard]).history
    assert guard.events == [] and "inference-mode gap" not in caplog.text
    assert max(abs(g) for g in history["inference_mode_gap"]) <= 0.05


def test_inference_mode_gap_guard_changes_no_state():
    keras.utils.set_random_seed(0)
    images, labels = synthetic.make_synthetic(num_classes=4, image_shape=(16, 16, 1), num_examples=32)
    model = helpers.tiny_model(mode="mbakt")
    guard = guards.InferenceModeGapGuard((images, labels))
    guard.set_model(model)
    before = [np.array(v) for v in model.variables]
    logs = {}
    guard.on_epoch_end(0, logs)
    assert set(logs) == {"training_mode_metric", "inference_mode_metric", "inference_mode_gap"}
    assert logs["inference_mode_gap"] == pytest.approx(logs["training_mode_metric"] - logs["inference_mode_metric"])
    assert all(np.array_equal(a, np.array(v)) for a, v in zip(before, model.variables))


def test_inference_mode_gap_guard_in_every_train_run_is_silent_on_a_healthy_run(trained_run):
    config, result, warnings = trained_run  # the shared tiny run (conftest.py), with what it warned
    assert len(result.history["inference_mode_gap"]) == config.epochs
    assert max(abs(g) for g in result.history["inference_mode_gap"]) <= 0.10
    assert not [message for message in warnings if "inference-mode gap" in message], warnings


_SAME_RUN = """
import json, sys, keras, numpy as np, tensorflow as tf
tf.config.experimental.enable_op_determinism()
import mbakt_tf
from mbakt_tf import data, guards, resume
from mbakt_tf.data import synthetic
images, labels = synthetic.make_synthetic(num_classes=4, image_shape=(16, 16, 1), num_examples=128)

class TakesTheBatchOnly(guards.InferenceModeGapGuard):
    def on_epoch_end(self, epoch, logs=None):
        pass

weights = []
for guard in (TakesTheBatchOnly, guards.InferenceModeGapGuard):
    keras.utils.set_random_seed(0)
    train = data.make_dataset((images, labels), batch_size=16, training=True, seed=3)
    model = mbakt_tf.MBAKT.from_backbone("small_resnet8", 4, (16, 16, 1), config=mbakt_tf.MBAKTConfig())
    model.compile()
    model.fit(resume.training_stream(train), steps_per_epoch=8, epochs=3, verbose=0, callbacks=[guard(train)])
    weights.append([np.array(v) for v in model.network.variables])
print(json.dumps(all(np.array_equal(a, b) for a, b in zip(*weights))))
"""


@pytest.mark.slow  # fast twin: test_inference_mode_gap_guard_changes_no_state
def test_the_inference_mode_gap_checks_change_nothing_in_the_run():
    # Against a run whose guard only takes its images (at the start, like every run's guard): measuring in
    # both modes at each epoch end leaves weights, statistics and random state exactly as they were.
    out = subprocess.run([sys.executable, "-c", _SAME_RUN], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "true"
