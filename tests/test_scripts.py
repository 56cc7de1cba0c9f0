"""The train and evaluate scripts end to end, in fresh processes, on synthetic data."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", name), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )


def test_train_then_evaluate_on_synthetic_data(tmp_path):
    train = run_script(
        "train.py", "--dataset=synthetic", "--backbone=small_resnet8", "--mode=mbakt",
        "--epochs=1", "--batch_size=16", "--train_limit=64", "--test_limit=32",
        "--validation_fraction=0.2", f"--output_dir={tmp_path}", "--run_name=run", "--verbose=2",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    for head in ("main", "branch_1", "branch_2", "ensemble"):
        assert f"\n{head} " in train.stdout
    run_dir = tmp_path / "run"
    assert (run_dir / "model.keras").is_file() and (run_dir / "main_branch.keras").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) >= {"main_accuracy", "branch_1_accuracy", "ensemble_accuracy"}
    assert results["parameters"]["main"] < results["parameters"]["training_network"]
    assert "val_main_accuracy" in results["history"]

    evaluate = run_script("evaluate.py", f"--model={run_dir}", "--test_limit=32")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    main_row = [line for line in evaluate.stdout.splitlines() if line.startswith("main ")][0]
    accuracy = float(main_row.split()[1].rstrip("%")) / 100
    assert accuracy == pytest.approx(results["test"]["main_accuracy"], abs=5e-5)  # table rounds to 0.01%


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone=resnet1000"], "flag --backbone=resnet1000: value should be one of"),
        (["--alpha=2"], "alpha must be in [0, 1]"),
        (["--temperature=0"], "temperature must be > 0"),
        (["--batch_size=0"], "batch_size must be >= 1"),
        (["--mode=fancy"], "flag --mode=fancy: value should be one of"),
    ],
)
def test_train_rejects_bad_flags_before_any_work(tmp_path, args, message):
    result = run_script("train.py", f"--output_dir={tmp_path}", "--epochs=1", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert not any(tmp_path.iterdir())
