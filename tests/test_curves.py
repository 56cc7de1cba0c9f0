"""curves.png: a real run writes it beside results.json; what it draws follows the heads in the history."""

import json
import logging
import os
import sys

import matplotlib.image

from mbakt_tf import curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A segmentation run's history (keys as SegmentationMBAKT logs them): mIoU is drawn, not pixel accuracy.
SEGMENTATION_HISTORY = {
    "loss": [1.2, 0.9, 0.8], "ce": [1.1, 0.8, 0.7], "kd": [0.3, 0.2, 0.2], "hint": [0.5, 0.4, 0.4],
    "adv": [0.7, 0.7, 0.6], "d_loss": [0.69, 0.68, 0.66], "d_balanced_accuracy": [0.5, 0.55, 0.6],
    "adv_grad_ratio": [0.1, 0.1, 0.1],
    **{f"{prefix}{head}_{metric}": [0.2, 0.3, 0.4]
       for prefix in ("", "val_") for head in ("main", "branch_1", "ensemble") for metric in ("accuracy", "miou")},
    "val_loss": [1.0, 0.9, 0.85], "val_main_loss": [1.0, 0.9, 0.85],
}


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 300


def test_a_training_run_writes_curves_png_of_its_heads(trained_run, tmp_path):
    config, result, _ = trained_run
    run_dir = result.run_dir
    assert_png(os.path.join(run_dir, "curves.png"))
    with open(os.path.join(run_dir, "results.json")) as f:
        history = json.load(f)["history"]
    assert history == result.history

    drawn = curves.save_curves(history, str(tmp_path / "again.png"))
    assert_png(tmp_path / "again.png")
    heads = ["main", "branch_1", "branch_2", "ensemble"]
    assert drawn == {
        "train accuracy": [f"{head}_accuracy" for head in heads],
        "validation accuracy": [f"val_{head}_accuracy" for head in heads],
        "training losses": ["loss", "ce", "ensemble_ce", "kd", "hint", "adv"],
        "discriminator": ["d_balanced_accuracy", "d_loss"],
    }
    assert all(len(history[key]) == config.epochs for keys in drawn.values() for key in keys)


def test_segmentation_history_is_drawn_in_miou(tmp_path):
    drawn = curves.save_curves(SEGMENTATION_HISTORY, str(tmp_path / "curves.png"), title="segmentation")
    assert_png(tmp_path / "curves.png")
    assert drawn == {
        "train mIoU": ["main_miou", "branch_1_miou", "ensemble_miou"],
        "validation mIoU": ["val_main_miou", "val_branch_1_miou", "val_ensemble_miou"],
        "training losses": ["loss", "ce", "kd", "hint", "adv"],
        "discriminator": ["d_balanced_accuracy", "d_loss"],
    }


def test_plain_history_has_no_discriminator_panel_and_heads_in_numeric_order():
    history = {"loss": [1.0], "ce": [1.0], "main_accuracy": [0.5], "val_main_accuracy": [0.4],
               "branch_10_accuracy": [0.3], "branch_2_accuracy": [0.2]}
    assert curves.panels(history) == {
        "train accuracy": ["main_accuracy", "branch_2_accuracy", "branch_10_accuracy"],
        "validation accuracy": ["val_main_accuracy"],
        "training losses": ["loss", "ce"],
    }


def test_without_matplotlib_the_picture_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    # `sys.modules[name] = None` makes `import name` raise ImportError, as if it were not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "curves.png"
    with caplog.at_level(logging.WARNING, logger="mbakt_tf.curves"):
        assert curves.save_curves(SEGMENTATION_HISTORY, str(path)) is None
    assert not path.exists()
    messages = [record.getMessage() for record in caplog.records if record.name == "mbakt_tf.curves"]
    assert len(messages) == 1 and "matplotlib is not installed" in messages[0] and "\n" not in messages[0]


def test_empty_history_draws_nothing(tmp_path):
    assert curves.save_curves({}, str(tmp_path / "curves.png")) is None
    assert not os.path.exists(tmp_path / "curves.png")
