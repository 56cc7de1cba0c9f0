import pytest

from mbakt_tf import benchmark


@pytest.mark.parametrize("jit_compile, mixed_precision", [(False, False), (True, False), (False, True)])
def test_benchmark_times_every_variant(jit_compile, mixed_precision):
    report = benchmark.benchmark_train_step(
        "small_resnet8", (16, 16, 1), num_classes=4, batch_size=8, steps=2, repeats=2, warmup=1,
        jit_compile=jit_compile, mixed_precision=mixed_precision, log=lambda m: None,
    )
    assert set(report["timings"]) == {"plain", "branches", "byot", "mbakt"}
    assert report["ratio_to_plain"]["plain"] == 1.0
    for timing in report["timings"].values():
        assert timing["median_seconds"] > 0 and len(timing["all_seconds"]) == 2
    assert set(report["extra_seconds"]) == {"branches - plain", "byot - branches", "mbakt - byot"}
    text = benchmark.format_report(report)
    assert "discriminator update" in text and "x plain" in text
