"""Evaluate a saved MBAKT model (every branch and the ensemble) on a dataset split.

Usage:
  python scripts/evaluate.py --model=saved_models/quickstart/model.keras
The dataset and image size default to those recorded in the run's results.json.
Exit codes: 0 done, 1 bad flags or model, 2 data not found or bad (or not the model's classes).
"""

import sys

from absl import app, flags

from mbakt_tf.cli import define_saved_run_flags, model_path_flag, run_app
from mbakt_tf.cli.quiet_start import start_tensorflow

FLAGS = flags.FLAGS
define_saved_run_flags()
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.DEFINE_integer("test_limit", None, "Evaluate only this many test examples.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from mbakt_tf import saved_runs

    model_path = model_path_flag(FLAGS.model)
    try:
        saved_runs.check_mbakt_model_file(model_path)  # before TensorFlow's start: refused at once
    except saved_runs.NotMBAKTModelError as error:
        raise app.UsageError(f"--model: {error}") from error
    start_tensorflow()
    from mbakt_tf import training

    try:
        model = saved_runs.load_mbakt_model(model_path)
    except saved_runs.NotMBAKTModelError as error:
        raise app.UsageError(f"--model: {error}") from error
    try:
        # The model says which task it was trained for: segmenters read label maps.
        splits = saved_runs.load_run_splits(
            model, model_path, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
            image_size=FLAGS.image_size, batch_size=FLAGS.batch_size, augment=False,
            test_limit=FLAGS.test_limit,
        )
    except (ValueError, FileNotFoundError) as error:  # data not found, bad, or not the model's classes
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = model.evaluate(splits.test, return_dict=True, verbose=0)
    print(f"{model_path} on {splits.info.name} test ({splits.info.num_test} images):")
    print(training.format_branch_table(results, training.parameter_counts(model)))
    return 0


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
