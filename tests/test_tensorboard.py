"""TensorBoard logs of a training run, read back from the event files, and the unwritable-folder check."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from mbakt_tf import training
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.training import NotWritableError, TrainConfig

TINY_DATA = dict(num_train=48, num_test=8, image_shape=(12, 12, 1), num_classes=3)
# Every head's accuracy, every loss term and the discriminator's numbers must be in the logs.
EXPECTED = {
    "ce", "ensemble_ce", "kd", "hint", "adv", "d_loss", "d_balanced_accuracy",
    "main_accuracy", "branch_1_accuracy", "branch_2_accuracy", "ensemble_accuracy",
    "val_main_accuracy", "val_branch_1_accuracy", "val_branch_2_accuracy", "val_ensemble_accuracy",
}


def tiny_train_config(output_dir, **overrides):
    values = dict(
        dataset="synthetic", synthetic_kwargs=TINY_DATA, epochs=2, batch_size=8, validation_fraction=0.25,
        output_dir=str(output_dir), run_name="run", verbose=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_scalars(log_dir):
    """{tag: [(step, value), ...]} of every scalar summary in the event files of `log_dir`."""
    accumulator = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
    }


@pytest.fixture(scope="module")
def mbakt_run(trained_run):
    """The shared tiny run (conftest.py): 3 epochs, adversary on from step 1, TensorBoard per epoch and every 2 steps."""
    config, result, _ = trained_run
    assert config.tensorboard and config.tensorboard_steps == 2
    return config, result


def test_every_history_entry_and_the_learning_rate_are_logged_per_epoch(mbakt_run):
    config, result = mbakt_run
    history = result.history
    assert EXPECTED <= set(history)
    logs = os.path.join(result.run_dir, "logs")
    train_scalars = read_scalars(os.path.join(logs, "train"))
    val_scalars = read_scalars(os.path.join(logs, "validation"))

    for key, values in history.items():
        scalars, name = (val_scalars, key[len("val_"):]) if key.startswith("val_") else (train_scalars, key)
        logged = scalars[f"epoch_{name}"]
        assert [step for step, _ in logged] == list(range(config.epochs)), key
        np.testing.assert_allclose([value for _, value in logged], values, rtol=1e-5, atol=1e-6, err_msg=key)

    # The generator's learning rate (cosine schedule) at the end of each epoch.
    steps_per_epoch = result.info.num_train // config.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch)
    expected_rates = [float(schedule((epoch + 1) * steps_per_epoch)) for epoch in range(config.epochs)]
    logged_rates = train_scalars["epoch_learning_rate"]
    assert [step for step, _ in logged_rates] == list(range(config.epochs))
    np.testing.assert_allclose([value for _, value in logged_rates], expected_rates, rtol=1e-5, atol=1e-7)
    assert expected_rates[0] > 0


def test_tensorboard_steps_also_logs_every_n_steps(mbakt_run):
    config, result = mbakt_run
    train_scalars = read_scalars(os.path.join(result.run_dir, "logs", "train"))
    steps_per_epoch = result.info.num_train // config.batch_size
    total = config.epochs * steps_per_epoch
    for name in ("loss", "adv", "d_balanced_accuracy", "ensemble_accuracy"):
        logged = train_scalars[f"batch_{name}"]
        assert [step for step, _ in logged] == list(range(2, total + 1, 2)), name
        # Keras logs the running mean over the epoch: at an epoch's last step it is the epoch's value.
        by_step = dict(logged)
        for epoch in range(config.epochs):
            assert by_step[(epoch + 1) * steps_per_epoch] == pytest.approx(result.history[name][epoch], rel=1e-5)


def test_unwritable_run_folder_fails_before_any_work(tmp_path):
    # Tests run as root, where chmod does not stop writes: a run folder under a
    # regular file cannot be created by anyone. The dataset does not exist
    # either, so a data error would mean the check came too late.
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = tiny_train_config(blocker, dataset="no_such_dataset", synthetic_kwargs=None)
    with pytest.raises(NotWritableError, match=r"Cannot write to '.*a_file/run': Not a directory"):
        training.train(config, MBAKTConfig(mode="plain"))
    assert blocker.read_text() == "not a folder"


def test_logs_folder_is_checked_only_with_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "logs").write_text("a file where the logs folder goes")
    with pytest.raises(NotWritableError, match=r"run/logs'"):
        training.check_run_dirs(tiny_train_config(tmp_path), str(run_dir))
    assert training.check_run_dirs(tiny_train_config(tmp_path, tensorboard=False), str(run_dir)) is None
    assert training.check_run_dirs(tiny_train_config(tmp_path), str(tmp_path / "other")) == str(
        tmp_path / "other" / "logs"
    )
    assert not [name for name in os.listdir(tmp_path / "other" / "logs")]  # the probe file is gone


def test_tensorboard_steps_needs_tensorboard():
    with pytest.raises(ValueError, match="tensorboard_steps needs tensorboard=True"):
        TrainConfig(tensorboard=False, tensorboard_steps=10)
    with pytest.raises(ValueError, match="tensorboard_steps must be >= 0"):
        TrainConfig(tensorboard_steps=-1)


def test_a_comparison_is_one_tensorboard_log_root(tmp_path):
    # What `tensorboard --logdir <compare out_dir>` sees: one run per variant, seed and split.
    from tensorboard.backend.event_processing import plugin_event_multiplexer

    from mbakt_tf import comparison

    out_dir = tmp_path / "compare"
    config = tiny_train_config(tmp_path, epochs=1)
    comparison.run_comparison(
        config, MBAKTConfig(), ["plain"], seeds=[0, 1], out_dir=str(out_dir), log=lambda _: None
    )
    multiplexer = plugin_event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(out_dir))
    multiplexer.Reload()
    assert sorted(multiplexer.Runs()) == [
        f"runs/plain_seed{seed}/logs/{split}" for seed in (0, 1) for split in ("train", "validation")
    ]
    for seed in (0, 1):
        tags = multiplexer.GetAccumulator(f"runs/plain_seed{seed}/logs/validation").Tags()["tensors"]
        assert "epoch_main_accuracy" in tags


def test_without_the_tensorboard_package_the_callback_fails_at_once(tmp_path, monkeypatch):
    # `sys.modules[name] = None` makes `import name` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install tensorboard.*--tensorboard=false"):
        training.tensorboard_callback(str(tmp_path / "logs"))
