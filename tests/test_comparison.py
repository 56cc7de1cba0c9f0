import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mbakt_tf import atomic, comparison, reporting
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.training import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_result(accuracy, epochs=2):
    return {
        "test": {"main_accuracy": accuracy, "branch_1_accuracy": accuracy - 0.1, "ensemble_accuracy": accuracy + 0.01},
        "history": {"val_main_accuracy": [accuracy - 0.2, accuracy][:epochs]},
        "parameters": {"main": 1234},
        "train_seconds": 10.0,
    }


def test_variant_configs_and_unknown_variant():
    base = MBAKTConfig(alpha=0.4, beta=0.1, gamma=0.2)
    assert comparison.variant_config(base, "plain").mode == "plain"
    assert comparison.variant_config(base, "mbakt_no_kd").alpha == 0.0
    assert comparison.variant_config(base, "mbakt_no_hint").beta == 0.0
    assert comparison.variant_config(base, "mbakt_no_adv").gamma == 0.0
    assert comparison.variant_config(base, "mbakt_no_ensemble").resolved_teacher == "main"
    assert comparison.variant_config(base, "mbakt_mean_teacher").ensemble == "mean"
    assert comparison.variant_config(base, "mbakt_unconditioned_adv").discriminator_condition == "none"
    assert comparison.variant_config(base, "mbakt_deep").branch_design == "deep"
    assert comparison.variant_config(base, "mbakt") == dataclasses.replace(base, mode="mbakt")
    # Published methods keep their own design whatever the base says.
    byot = comparison.variant_config(MBAKTConfig(branch_design="peer", ensemble="gated"), "byot")
    assert (byot.mode, byot.branch_design, byot.resolved_teacher, byot.uses_gate) == ("byot", "exit", "main", False)
    assert byot.alpha == 0.5  # BYOT distils whatever MBAKT's default alpha is
    one = comparison.variant_config(base, "one")
    assert (one.resolved_branch_design(), one.ensemble, one.alpha, one.beta, one.gamma) == ("peer", "gated", 0.5, 0.0, 0.0)
    assert one.uses_gate and not one.uses_adversary and one.gate_main_weight is None
    assert comparison.variant_config(MBAKTConfig(), "mbakt_uniform_gate").gate_main_weight is None
    assert MBAKTConfig().gate_main_weight == 0.8
    with pytest.raises(ValueError, match="Unknown variant 'mbakt_no_fun'"):
        comparison.variant_config(base, "mbakt_no_fun")


def test_variant_overrides_tune_a_method_and_name_its_runs():
    byot = comparison.variant_config(MBAKTConfig(), "byot:alpha=0.2")
    assert (byot.mode, byot.alpha, byot.branch_design) == ("byot", 0.2, "exit")
    mbakt = comparison.variant_config(MBAKTConfig(), "mbakt_peer:gamma=0:teacher=main:branch_stages=none")
    assert (mbakt.branch_design, mbakt.gamma, mbakt.teacher, mbakt.branch_stages) == ("peer", 0, "main", None)
    assert comparison.run_dir_name("byot:alpha=0.2", 1) == "byot-alpha0.2_seed1"
    assert comparison.run_dir_name("plain", 0) == "plain_seed0"
    with pytest.raises(ValueError, match="'alfa=0.2' is not field=value"):
        comparison.variant_config(MBAKTConfig(), "byot:alfa=0.2")
    with pytest.raises(ValueError, match="alpha must be in"):
        comparison.variant_config(MBAKTConfig(), "byot:alpha=2")


def test_resume_trains_only_unfinished_runs(tmp_path):
    calls = []

    def train_fn(config, mbakt_config):
        calls.append((mbakt_config.mode, config.seed))
        run_dir = os.path.join(config.output_dir, config.run_name)
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "results.json"), "w") as f:
            json.dump(fake_result(0.5 + config.seed / 10), f)

    train_config = TrainConfig(dataset="synthetic")
    seeds = [0, 1]
    first = comparison.run_comparison(train_config, MBAKTConfig(), ["plain"], seeds, str(tmp_path), train_fn, log=lambda m: None)
    assert calls == [("plain", 0), ("plain", 1)]
    # A crash after one run: remove the second, rerun everything.
    os.remove(tmp_path / "runs" / "plain_seed1" / "results.json")
    os.rmdir(tmp_path / "runs" / "plain_seed1")
    calls.clear()
    messages = []
    second = comparison.run_comparison(
        train_config, MBAKTConfig(), ["plain", "mbakt"], seeds, str(tmp_path), train_fn, log=messages.append
    )
    assert calls == [("mbakt", 0), ("plain", 1), ("mbakt", 1)]
    assert second[("plain", 0)] == first[("plain", 0)]
    assert "finished before" in messages[0]
    # Reporting on a comparison still running trains nothing and leaves the unfinished out.
    calls.clear()
    messages.clear()
    report = comparison.run_comparison(
        train_config, MBAKTConfig(), ["plain", "one"], seeds, str(tmp_path), train_fn, log=messages.append,
        train=False,
    )
    assert calls == [] and set(report) == {("plain", 0), ("plain", 1)}
    assert "one seed 0: not finished, left out" in messages[1]


def test_summary_markdown_and_json(tmp_path):
    runs = {("plain", 0): fake_result(0.80), ("plain", 1): fake_result(0.82), ("mbakt", 0): fake_result(0.85)}
    summary = comparison.summarize(runs, {"plain": {"flops": 2_500_000}, "mbakt": {"flops": 2_500_000}})
    assert summary["plain"]["accuracy"]["main"]["mean"] == pytest.approx(0.81)
    assert summary["plain"]["accuracy"]["main"]["std"] == pytest.approx(0.0141421, rel=1e-4)
    table = reporting.markdown_table(summary, ["plain", "mbakt"])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| variant | seeds | main acc. (%) | branch_1 acc. (%) | ensemble acc. (%)")
    assert lines[2] == "| plain | 2 | 81.00 ± 1.41 | 71.00 ± 1.41 | 82.00 ± 1.41 | 1,234 | 2.50 | 10 |"
    assert lines[3].startswith("| mbakt | 1 | 85.00 | 75.00 | 86.00 |")
    path = tmp_path / "r.json"
    atomic.write_json(str(path), summary, sort_keys=True)
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary))
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind
    png = tmp_path / "curves.png"
    reporting.plot_validation_curves(runs, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def compare_script_args(tmp_path, batch_size, train_limit, test_limit, seeds, variants):
    """`scripts/compare.py` on synthetic data, one epoch, its outputs and records under `tmp_path`."""
    return [
        sys.executable, os.path.join(ROOT, "scripts", "compare.py"), "--dataset=synthetic",
        "--backbone=small_resnet8", "--epochs=1", f"--batch_size={batch_size}", f"--train_limit={train_limit}",
        f"--test_limit={test_limit}", "--validation_fraction=0.25", f"--seeds={seeds}", f"--variants={variants}",
        f"--output_dir={tmp_path}", "--run_name=cmp", "--verbose=0", f"--results_dir={tmp_path}/results",
    ]


def test_compare_script_keeps_a_record_of_its_run(tmp_path):
    """Fast twin of the slow test below: one run through the script."""
    args = compare_script_args(tmp_path, batch_size=8, train_limit=16, test_limit=8, seeds="0", variants="plain")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert os.listdir(tmp_path / "results" / "cmp") == ["plain_seed0.json"]
    summary = json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]
    assert summary["plain"]["accuracy"]["main"]["n"] == 1
    assert (tmp_path / "cmp" / "results.md").read_text().startswith("| variant |")
    # Resuming from the kept record without training: test_records_are_kept_and_a_comparison_resumes_from_them_elsewhere.


@pytest.mark.slow
def test_compare_script_on_synthetic_data_resumes(tmp_path):
    args = compare_script_args(tmp_path, batch_size=16, train_limit=32, test_limit=16, seeds="0,1",
                               variants="plain,mbakt")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "cmp"
    # Each run's record is kept (and nothing is written to the checkout's results/).
    assert sorted(os.listdir(tmp_path / "results" / "cmp")) == [
        "mbakt_seed0.json", "mbakt_seed1.json", "plain_seed0.json", "plain_seed1.json",
    ]
    assert not os.path.exists(os.path.join(ROOT, "results", "cmp"))
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert set(summary) == {"plain", "mbakt"}
    assert summary["plain"]["accuracy"]["main"]["n"] == 2
    assert summary["plain"]["params"] == summary["mbakt"]["params"]
    assert summary["plain"]["flops"] == summary["mbakt"]["flops"]
    assert "ensemble" in summary["mbakt"]["accuracy"]
    report = (out / "results.md").read_text()
    assert report.startswith("| variant |")
    assert "| variant | gain over plain (points) |" in report
    assert re.search(r"\| mbakt \| [+-]\d+\.\d\d ± \d+\.\d\d \(2\) \|", report)
    assert (out / "validation_accuracy.png").stat().st_size > 1000

    second = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("finished before, read from disk") == 4
    assert json.loads((out / "results.json").read_text())["summary"] == summary

    # --report_only while byot has not run: nothing trains, byot is left out of the tables.
    report = subprocess.run(
        args + ["--variants=plain,mbakt,byot:alpha=0.2", "--report_only"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout.count("not finished, left out") == 2 and "training" not in report.stdout
    assert set(json.loads((out / "results.json").read_text())["summary"]) == {"plain", "mbakt"}
    nothing = subprocess.run(
        args + ["--variants=one", "--report_only"], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=600,
    )
    assert nothing.returncode == 2 and "no finished run of ['one']" in nothing.stderr

    # The gain-over-plain plot reads the same results.json.
    png = tmp_path / "gain.png"
    gain = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "gain_plot.py"), f"--compare_dirs={out}", f"--output={png}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert gain.returncode == 0, gain.stderr[-3000:]
    assert "mbakt" in gain.stdout and "(2 seeds)" in gain.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "gain_plot.py"), f"--compare_dirs={tmp_path / 'none'}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert missing.returncode == 2 and "run scripts/compare.py for it first" in missing.stderr


def test_gain_over_plain_pairs_seeds():
    runs = {
        f"{variant}_seed{seed}": {"test": {"main_accuracy": accuracy}}
        for variant, seed, accuracy in [
            ("plain", 0, 0.80), ("plain", 1, 0.82), ("plain", 2, 0.90),
            ("one", 0, 0.81), ("one", 1, 0.84),  # seed 2 unfinished: left out
            ("mbakt_no_kd", 3, 0.99),  # no plain run for seed 3: no gain
        ]
    }
    gains = reporting.gain_over_plain({"runs": runs})
    assert set(gains) == {"one"}
    assert gains["one"]["n"] == 2
    assert gains["one"]["mean"] == pytest.approx(1.5)
    assert gains["one"]["std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))


def test_paired_gains_over_any_baseline():
    runs = {
        f"{variant}_seed{seed}": {"test": {"main_miou": miou}}
        for variant, seed, miou in [
            ("plain", 0, 0.70), ("plain", 1, 0.72), ("byot", 0, 0.75), ("byot", 1, 0.74),
            ("mbakt", 0, 0.78), ("mbakt", 1, 0.78),
        ]
    }
    over_byot = reporting.paired_gains({"runs": runs}, "byot", metric="miou")
    assert over_byot["mbakt"]["mean"] == pytest.approx(3.5) and over_byot["plain"]["mean"] == pytest.approx(-3.5)
    lines = reporting.paired_gains_table({"runs": runs}, ["plain", "byot", "one"], metric="miou").splitlines()
    assert lines[0] == "| variant | gain over plain (points) | gain over byot (points) |"
    assert lines[2] == "| plain | - | -3.50 ± 2.12 (2) |"
    assert lines[4] == "| mbakt | +7.00 ± 1.41 (2) | +3.50 ± 0.71 (2) |"


def test_tables_and_plots_keep_every_branch():
    runs = {("one", 0): fake_result(0.80)}
    for k in range(1, 7):  # six peers: none may drop out of the table or the plot
        runs[("one", 0)]["test"][f"branch_{k}_accuracy"] = 0.7
    summary = comparison.summarize(runs)
    header = reporting.markdown_table(summary).splitlines()[0]
    assert "branch_6 acc." in header and header.index("branch_2 acc.") < header.index("branch_6 acc.")
    assert reporting.head_order({"branch_10", "main", "branch_9"}) == ["main", "branch_9", "branch_10"]
