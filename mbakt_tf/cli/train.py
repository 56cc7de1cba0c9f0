"""Train an MBAKT (or plain / BYOT) classifier, print every branch's test accuracy, save it.

Usage:
  python scripts/train.py --flagfile=flags/quickstart.cfg
  python scripts/train.py --dataset=fashion_mnist --backbone=small_resnet8 --mode=mbakt --epochs=10
  python scripts/train.py --flagfile=flags/quickstart.cfg --strategy=mirrored --cpu_devices=2
  python scripts/train.py --flagfile=flags/quickstart.cfg --backup_dir=/tmp/qs_backup --backup_steps=100
  python scripts/train.py --flagfile=flags/quickstart.cfg --tensorboard_steps=50   # TensorBoard every 50 steps too
  python scripts/train.py --dataset=folder --data_dir=PATH --image_size=64   # your images: PATH/<class>/*.jpg
  python scripts/launch_workers.py --num_workers=2 -- scripts/train.py --strategy=multi_worker ...

Writes model.keras, main_branch.keras, results.json, curves.png and TensorBoard logs (logs/,
unless --tensorboard=false) into output_dir/run_name.

Exit codes: 0 done, 1 bad flags (usage error, also a run folder it cannot write), 2 data not found
or bad (e.g. an unreadable image in --data_dir, named), 3 non-finite loss.
"""

import os
import sys

from absl import app, flags

from mbakt_tf.cli import print_class_counts, run_app
from mbakt_tf.cli.quiet_start import start_tensorflow
from mbakt_tf.cli import flags as cli_flags

cli_flags.define_data_flags()
cli_flags.define_model_flags()
cli_flags.define_training_flags()
cli_flags.define_distribution_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        mbakt_config = cli_flags.mbakt_config_from_flags()
        train_config = cli_flags.train_config_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error)) from error

    start_tensorflow()  # without its C++ start-up lines (TF_CPP_MIN_LOG_LEVEL=0 shows them)
    from mbakt_tf import distribute, guards, training

    # The strategy first: logical CPU devices and MultiWorkerMirroredStrategy
    # must be set up before TensorFlow runs any op; its replica count checks the batch.
    try:
        strategy = distribute.make_strategy(train_config.strategy, train_config.cpu_devices)
        distribute.check_batch_size(train_config.batch_size, strategy)
    except (ValueError, RuntimeError) as error:
        raise app.UsageError(str(error)) from error
    if train_config.deterministic:  # before the data pipeline is built
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    try:
        splits = training.load_data(train_config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_class_counts(splits.info)
    try:
        result = training.train(train_config, mbakt_config, splits=splits, strategy=strategy)
    except guards.NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except training.NotWritableError as error:  # raised before the model is built
        raise app.UsageError(f"--output_dir/--run_name: {error}") from error
    if not distribute.is_chief(strategy):
        _, task_id = distribute.task_info(strategy)
        print(f"worker {task_id} done (the chief writes the outputs).")
        return 0
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
    if os.path.isfile(os.path.join(result.run_dir, "curves.png")):
        print(f"Training curves:        {result.run_dir}/curves.png")
    if train_config.tensorboard:
        print(f"TensorBoard:            tensorboard --logdir {result.run_dir}/{training.LOG_DIR}")
    return 0


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
