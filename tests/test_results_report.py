"""Kept run records (results/), plain at equal time, and the README tables generated from them."""

import glob
import json
import os
import pathlib

import pytest

from mbakt_tf import comparison, results_report, run_timing
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.training import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_PATH = pathlib.Path(ROOT)


def fake_record(accuracy, epochs, epoch_seconds):
    return {
        "test": {"main_accuracy": accuracy, "ensemble_accuracy": accuracy + 0.01},
        "history": {"val_main_accuracy": [accuracy - 0.1] * (epochs - 1) + [accuracy]},
        "parameters": {"main": 1234},
        "train_seconds": epoch_seconds * epochs,
        "train_config": {"epochs": epochs},
        "dataset": {"num_train": 1000},
        "timing": {"epoch_seconds": [3 * epoch_seconds] + [epoch_seconds] * (epochs - 1)},
    }


# Seconds per epoch and test accuracy of each variant, by seed.
EPOCH_SECONDS = {"plain": 2.0, "mbakt_no_kd": 3.0}
ACCURACY = {"plain": 0.80, "mbakt_no_kd": 0.83, "plain@mbakt_no_kd": 0.81}


def fake_train_fn(calls):
    def train_fn(config, mbakt_config):
        variant = config.run_name.rsplit("_seed", 1)[0].replace("-at-", "@")
        calls.append((variant, config.seed, config.epochs))
        run_dir = os.path.join(config.output_dir, config.run_name)
        os.makedirs(run_dir)
        seconds = EPOCH_SECONDS.get(variant, 2.0)
        record = fake_record(ACCURACY[variant] + config.seed / 1000, config.epochs, seconds)
        record["mbakt_config"] = mbakt_config.to_dict()
        with open(os.path.join(run_dir, "results.json"), "w") as f:
            json.dump(record, f)

    return train_fn


def run(tmp_path, out_name, calls, seeds=(0, 1, 2)):
    return comparison.run_comparison(
        TrainConfig(dataset="synthetic", epochs=10), MBAKTConfig(), ["plain", "mbakt_no_kd", "plain@mbakt_no_kd"],
        list(seeds), str(tmp_path / out_name), fake_train_fn(calls), log=lambda m: None,
        records_dir=str(tmp_path / "results" / "cmp"),
    )


def test_records_are_kept_and_a_comparison_resumes_from_them_elsewhere(tmp_path):
    calls = []
    runs = run(tmp_path, "machine_a", calls, seeds=(0,))
    # plain@mbakt_no_kd trains plain for mbakt_no_kd's time: 10 epochs x 3.0 s / 2.0 s.
    assert calls == [("plain", 0, 10), ("mbakt_no_kd", 0, 10), ("plain@mbakt_no_kd", 0, 15)]
    assert runs[("plain@mbakt_no_kd", 0)]["equal_time"]["epochs"] == 15
    assert runs[("plain@mbakt_no_kd", 0)]["equal_time"]["reference"] == "mbakt_no_kd"
    assert sorted(os.listdir(tmp_path / "results" / "cmp")) == [
        "mbakt_no_kd_seed0.json", "plain-at-mbakt_no_kd_seed0.json", "plain_seed0.json",
    ]
    # Another machine: no saved_models folder, only the committed records. Seed 0 is not retrained.
    calls.clear()
    runs = run(tmp_path, "machine_b", calls)
    assert [c[:2] for c in calls] == [(v, s) for s in (1, 2) for v in ("plain", "mbakt_no_kd", "plain@mbakt_no_kd")]
    assert runs[("plain@mbakt_no_kd", 0)]["equal_time"]["epochs"] == 15
    assert not (tmp_path / "machine_b" / "runs" / "plain_seed0").exists()
    assert len(results_report.load_records(str(tmp_path / "results" / "cmp"))) == 9


def test_equal_time_needs_its_reference_and_plain_first(tmp_path):
    with pytest.raises(ValueError, match="needs 'plain' and 'byot'"):
        comparison.run_comparison(
            TrainConfig(dataset="synthetic"), MBAKTConfig(), ["plain@byot", "plain", "byot"], [0],
            str(tmp_path), fake_train_fn([]), log=lambda m: None,
        )
    with pytest.raises(ValueError, match="needs 'plain' and 'byot'"):  # plain after it
        comparison.check_variants(MBAKTConfig(), ["byot", "plain@byot", "plain"])
    comparison.check_variants(MBAKTConfig(), ["plain", "byot", "plain@byot"])
    with pytest.raises(ValueError, match="Unknown variant 'mbakt_fast'"):
        comparison.variant_config(MBAKTConfig(), "plain@mbakt_fast")
    assert comparison.run_dir_name("plain@byot:alpha=0.2", 2) == "plain-at-byot-alpha0.2_seed2"


def test_fastest_epoch_ignores_the_first_and_loaded_epochs():
    slow_then_idle = {"timing": {"epoch_seconds": [30.0, 9.0, 4.0, 4.2]}, "train_seconds": 0}
    assert run_timing.fastest_epoch_seconds(slow_then_idle) == 4.0
    assert run_timing.fastest_epoch_seconds({"train_seconds": 50.0, "train_config": {"epochs": 10}}) == 5.0
    summary = run_timing.timing_summary([5.0, 2.0, 2.2], [4.0, 1.0, 1.2], 10)
    assert summary["step_seconds"] == pytest.approx(0.11)


def test_sections_rebuild_from_records_and_check_catches_a_changed_number(tmp_path):
    run(tmp_path, "out", [])
    results_dir = tmp_path / "results"
    (results_dir / "headline.json").write_text(json.dumps({"rows": [
        {"label": "1,000", "comparison": "cmp", "byot": "byot", "one": "one"},
    ]}))
    page = tmp_path / "page.md"
    page.write_text(
        "# Results\n<!-- results:headline -->\nstale\n<!-- /results -->\ntext\n"
        "<!-- results:table cmp -->\n<!-- /results -->\n<!-- results:gains cmp -->\n<!-- /results -->\n"
    )
    assert len(results_report.check_file(str(page), str(results_dir))) == 3
    results_report.update_file(str(page), str(results_dir))
    text = page.read_text()
    assert results_report.check_file(str(page), str(results_dir)) == []
    # default 0.83 + s/1000 against plain 0.80 + s/1000 and plain at equal time 0.81 + s/1000, per seed.
    assert "| 1,000 | **+3.00 ± 0.00 (3)** | **+2.00 ± 0.00 (3)** | not measured | not measured | 83.10 / 80.10 (3) |" in text
    assert "| plain@mbakt_no_kd | 3 | 15 | 81.10 ± 0.10 |" in text
    assert text.startswith("# Results\n") and "\ntext\n" in text
    # A record changes: the check names the sections that no longer match.
    path = results_dir / "cmp" / "plain_seed1.json"
    record = json.loads(path.read_text())
    record["test"]["main_accuracy"] -= 0.01
    path.write_text(json.dumps(record))
    stale = results_report.check_file(str(page), str(results_dir))
    assert ("headline", None) in stale and ("table", "cmp") in stale
    with pytest.raises(results_report.RecordsNotFoundError, match="no kept records"):
        results_report.render_section("table", "missing", str(results_dir))
    # A comparison still running: the means are over the seeds both sides have (here seed 0: plain's
    # mean over its 3 seeds would be 79.77), and with the default missing, plain's own (seed 1's plain
    # lowered above).
    for seed in (1, 2):
        (results_dir / "cmp" / f"mbakt_no_kd_seed{seed}.json").unlink()
    assert "| 83.00 / 80.00 (1) |" in results_report.render_section("headline", None, str(results_dir))
    for path in (results_dir / "cmp").glob("*.json"):
        if not path.name.startswith("plain_seed"):
            path.unlink()
    assert "| 1,000 | not measured | not measured | not measured | not measured | - / 79.77 |" in (
        results_report.render_section("headline", None, str(results_dir)))


def test_a_comparison_that_mixes_method_code_says_so(tmp_path):
    # The fingerprint of a copy of the method's files, before and after one of them changes.
    for path in run_timing.METHOD_FILES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes((ROOT_PATH / path).read_bytes())
    before = run_timing.method_code_fingerprint(run_timing._read_from(str(tmp_path)))
    assert before == run_timing.LOADED_METHOD_CODE  # what this process runs
    (tmp_path / "README.md").write_text("not a method file\n")
    assert run_timing.method_code_fingerprint(run_timing._read_from(str(tmp_path))) == before
    with open(tmp_path / run_timing.METHOD_FILES[0], "a") as f:
        f.write("\n# changed\n")
    after = run_timing.method_code_fingerprint(run_timing._read_from(str(tmp_path)))
    assert after != before

    runs = {("plain", 0): {"code_commit": "aaaaaaa1", "method_code": before},
            ("mbakt_no_kd", 0): {"code_commit": "bbbbbbb2-dirty", "method_code": before}}
    assert results_report.mixed_code_commits(runs) == {}  # two commits, one method
    runs[("plain", 1)] = {"code_commit": "ccccccc3", "method_code": after}
    runs[("plain", 2)] = {}
    assert results_report.mixed_code_commits(runs) == {
        "bbbbbbb": ["mbakt_no_kd_seed0", "plain_seed0"], "ccccccc": ["plain_seed1"], "unknown": ["plain_seed2"]}
    assert "Not like for like" in results_report.comparison_table({
        (v, s): dict(fake_record(0.8, 2, 1.0), **r) for (v, s), r in runs.items()})


def test_readme_and_docs_tables_match_the_kept_records():
    pages = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    results_dir = os.path.join(ROOT, "results")
    assert results_report.count_sections(pages[0]) >= 1, "README.md has no generated results section"
    headline = open(pages[0]).read().split("<!-- results:headline -->", 1)
    assert len(headline) == 2, "README.md has no generated headline table"
    for page in pages:
        stale = results_report.check_file(page, results_dir)
        assert stale == [], f"{page}: {stale} differ from results/: run `python scripts/report.py`"


def test_epoch_timer_splits_training_from_validation_in_a_real_fit():
    import keras
    import numpy as np

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = run_timing.EpochTimer(steps_per_epoch=4)
    model.fit(x, y, batch_size=16, epochs=3, validation_data=(x, y), callbacks=[timer], verbose=0)
    summary = timer.summary()
    assert len(summary["epoch_seconds"]) == len(summary["train_epoch_seconds"]) == 3
    assert len(summary["epoch_cpu_seconds"]) == 3 and min(summary["epoch_cpu_seconds"]) > 0
    assert all(t <= e for t, e in zip(summary["train_epoch_seconds"], summary["epoch_seconds"]))
    assert summary["step_seconds"] > 0
