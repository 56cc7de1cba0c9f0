"""Real Fashion-MNIST: the claim "it learns" checked on real data (slow; `make test-slow`)."""

import pytest

from mbakt_tf import MBAKTConfig
from mbakt_tf.training import TrainConfig, train


@pytest.mark.slow
def test_mbakt_learns_fashion_mnist_in_one_epoch(tmp_path):
    result = train(
        TrainConfig(
            dataset="fashion_mnist", backbone="small_resnet8", epochs=1, batch_size=128,
            train_limit=20000, output_dir=str(tmp_path), run_name="real", verbose=0,
        ),
        MBAKTConfig(mode="mbakt"),
    )
    assert result.info.num_test == 10000
    for head in ("main", "branch_1", "branch_2", "ensemble"):
        assert result.test_results[f"{head}_accuracy"] > 0.6, result.test_results
