"""A run on disk: model loading errors are covered in test_export; here the recorded settings and helpers."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mbakt_tf import saved_runs
from mbakt_tf.checks import Checks
from mbakt_tf.reporting import format_size, text_table
from tests.helpers import tiny_model, tiny_segmenter

SYNTHETIC = dict(num_classes=4, image_shape=(16, 16, 1), num_train=40, num_test=24)


def _write_run(run_dir, train_config, test=None):
    os.makedirs(run_dir, exist_ok=True)
    model_path = os.path.join(run_dir, "model.keras")
    with open(model_path, "w") as f:
        f.write("stand-in: load_run_splits reads only results.json beside it")
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"train_config": train_config, "test": test or {}}, f)
    return model_path


def test_run_splits_follow_the_recorded_settings_and_the_models_task(tmp_path):
    recorded = {"dataset": "synthetic", "synthetic_kwargs": SYNTHETIC, "validation_fraction": 0.25, "seed": 3,
                "backbone": "small_resnet8"}
    test = {"main_accuracy": 0.5, "branch_1_accuracy": 0.25, "main_miou": 0.125}
    model_path = _write_run(tmp_path / "run", recorded, test)

    classifier = tiny_model()
    splits = saved_runs.load_run_splits(classifier, model_path, batch_size=8, augment=False)
    assert splits.info.num_train == 30 and splits.info.num_validation == 10  # 40 images, 25% held out
    images, labels = next(iter(splits.test))
    assert images.shape == (8, 16, 16, 1) and labels.shape == (8,)
    source = saved_runs.provenance(classifier, model_path, splits, head="branch_1")
    assert (source["backbone"], source["num_train"], source["recorded_test_accuracy"]) == ("small_resnet8", 30, 0.25)
    assert "recorded_test_miou" not in source

    segmenter = tiny_segmenter()
    maps = saved_runs.load_run_splits(segmenter, model_path, batch_size=8, augment=False)
    images, labels = next(iter(maps.test))
    assert labels.shape == (8, 16, 16)  # a segmenter gets label maps from the same recorded dataset
    assert maps.info.class_names[0] == "background"
    assert saved_runs.provenance(segmenter, model_path, maps)["recorded_test_miou"] == 0.125


def test_run_splits_need_a_dataset(tmp_path):
    model_path = _write_run(tmp_path / "run", {})
    with pytest.raises(ValueError, match="No dataset: .* pass dataset="):
        saved_runs.load_run_splits(tiny_model(), model_path, batch_size=8)
    splits = saved_runs.load_run_splits(
        tiny_model(), model_path, dataset="synthetic", batch_size=8, synthetic_kwargs=SYNTHETIC)
    assert splits.info.num_test == 24


def test_take_images_stops_at_the_limit():
    images = np.arange(10 * 2 * 2 * 1, dtype=np.float32).reshape(10, 2, 2, 1)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(10))).batch(4)
    taken, labels = saved_runs.take_images(dataset, limit=6)
    np.testing.assert_array_equal(labels, np.arange(6))
    np.testing.assert_array_equal(taken, images[:6])
    assert len(saved_runs.take_images(dataset)[0]) == 10


def test_sibling_dir_sits_beside_the_run_folder(tmp_path):
    model_path = os.path.join(tmp_path, "saved_models", "quickstart", "model.keras")
    assert saved_runs.sibling_dir(model_path, "_export") == os.path.join(
        tmp_path, "saved_models", "quickstart_export")


def test_checks_tables_and_sizes():
    checks = Checks()
    checks.add("a", True, "fine")
    checks.add("b", False, "2 > 1")
    assert not checks.ok and [c["name"] for c in checks.failed] == ["b"]
    assert checks.summary() == "Checks: 1/2 passed\n  FAILED b: 2 > 1"
    assert Checks(checks.items).failure_message() == "b: 2 > 1"
    assert text_table([("x", "long header"), ("value", "1")]).splitlines() == [
        "x      long header", "-----  -----------", "value  1"]
    assert (format_size(181248), format_size(1646264), format_size(None)) == ("177.0 KiB", "1.57 MiB", "-")
