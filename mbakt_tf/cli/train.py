"""Train an MBAKT (or plain / BYOT) classifier, print every branch's test accuracy, save it.

Usage:
  python scripts/train.py --flagfile=flags/quickstart.cfg
  python scripts/train.py --dataset=fashion_mnist --backbone=small_resnet8 --mode=mbakt --epochs=10
"""

import sys

from absl import app, flags, logging

from mbakt_tf.cli import flags as cli_flags

cli_flags.define_data_flags()
cli_flags.define_model_flags()
cli_flags.define_training_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        mbakt_config = cli_flags.mbakt_config_from_flags()
        train_config = cli_flags.train_config_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error)) from error

    from mbakt_tf import training

    try:
        splits = training.load_data(train_config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = training.train(train_config, mbakt_config, splits=splits)
    info = result.info
    print()
    print(
        f"Test results on {info.name} ({info.num_test} images), backbone {train_config.backbone}, "
        f"mode {mbakt_config.mode}, {train_config.epochs} epochs in {result.wall_time_seconds:.0f} s:"
    )
    print(training.format_branch_table(result.test_results, result.parameter_counts))
    print()
    print(f"Saved the MBAKT model:  {result.run_dir}/model.keras")
    print(f"Saved the main branch:  {result.run_dir}/main_branch.keras")
    print(f"Results and history:    {result.run_dir}/results.json")
    return 0


def run():
    logging.set_verbosity(logging.WARNING)
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
