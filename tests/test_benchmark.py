import pytest

from mbakt_tf import benchmark


def test_benchmark_times_every_variant_and_its_flops():
    variants = ("plain", "branches", "byot", "mbakt_exit", "mbakt")
    report = benchmark.benchmark_train_step(
        "small_resnet8", (16, 16, 1), num_classes=4, batch_size=8, variants=variants, steps=2, repeats=2,
        warmup=1, log=lambda m: None,
    )
    assert set(report["timings"]) == set(variants)
    assert report["ratio_to_plain"]["plain"] == 1.0
    for timing in report["timings"].values():
        assert timing["median_seconds"] > 0 and len(timing["all_seconds"]) == 2
    assert set(report["extra_seconds"]) == {"branches - plain", "byot - branches", "mbakt_exit - byot"}
    # The peers copy the last stage twice: more training FLOPs than the exits.
    flops = report["flops_ratio_to_plain"]
    assert flops["plain"] == 1.0 and 1.0 < flops["branches"] < flops["mbakt"]
    text = benchmark.format_report(report)
    assert "discriminator update" in text and "x plain" in text and "step / FLOPs ratio" in text
    assert "fastest round" in text and report["fastest_ratio_to_plain"]["plain"] == 1.0
    ops = report["step_ops"]
    assert "step ops" in text and ops["plain"] < ops["byot"] < ops["mbakt_exit"]
    fastest = {k: min(t["all_seconds"]) for k, t in report["timings"].items()}
    assert report["fastest_ratio_to_plain"]["mbakt"] == pytest.approx(fastest["mbakt"] / fastest["plain"])


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile, mixed_precision", [(True, False), (False, True)])
def test_benchmark_runs_the_default_design_compiled_and_in_mixed_precision(jit_compile, mixed_precision):
    report = benchmark.benchmark_train_step(
        "small_resnet8", (16, 16, 1), num_classes=4, batch_size=8, variants=("plain", "mbakt"), steps=2,
        repeats=2, warmup=1, jit_compile=jit_compile, mixed_precision=mixed_precision, log=lambda m: None,
    )
    assert report["timings"]["mbakt"]["median_seconds"] > 0 and report["flops_ratio_to_plain"]["mbakt"] > 1.0
