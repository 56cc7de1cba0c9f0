"""Evaluate a saved MBAKT model (every branch and the ensemble) on a dataset split.

Usage:
  python scripts/evaluate.py --model=saved_models/quickstart/model.keras
The dataset and image size default to those recorded in the run's results.json.
"""

import json
import os
import sys

from absl import app, flags

from mbakt_tf.cli import run_app

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Path to a saved MBAKT model (.keras) or its run folder.")
flags.DEFINE_string("dataset", None, "Dataset name (default: the one in the run's results.json).")
flags.DEFINE_string("data_dir", None, "Dataset folder (see train.py --data_dir).")
flags.DEFINE_integer("image_size", None, "Resize images (default: as in the run's results.json).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.DEFINE_integer("test_limit", None, "Evaluate only this many test examples.")
flags.mark_flag_as_required("model")


def resolve_model_path(path):
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise app.UsageError(f"--model: no saved model at {path!r}.")
    return path


def recorded_train_config(model_path):
    results = os.path.join(os.path.dirname(model_path), "results.json")
    if not os.path.isfile(results):
        return {}
    with open(results) as f:
        return json.load(f).get("train_config", {})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    model_path = resolve_model_path(FLAGS.model)
    recorded = recorded_train_config(model_path)
    dataset = FLAGS.dataset or recorded.get("dataset")
    if dataset is None:
        raise app.UsageError("--dataset is required: the model has no results.json beside it.")

    import keras

    import mbakt_tf
    from mbakt_tf import data, training

    model = keras.models.load_model(model_path)
    if not isinstance(model, mbakt_tf.MBAKT):
        raise app.UsageError(f"{model_path} holds a {type(model).__name__}, not an MBAKT model.")
    from mbakt_tf.segmentation_model import MBAKTSegmenter

    # The model says which task it was trained for: segmenters read label maps.
    load = data.load_segmentation if isinstance(model, MBAKTSegmenter) else data.load_classification
    splits = load(
        dataset,
        data_dir=FLAGS.data_dir or recorded.get("data_dir"),
        batch_size=FLAGS.batch_size,
        validation_fraction=0.0,
        image_size=FLAGS.image_size or recorded.get("image_size"),
        augment=False,
        test_limit=FLAGS.test_limit,
        synthetic_kwargs=recorded.get("synthetic_kwargs"),
    )
    results = model.evaluate(splits.test, return_dict=True, verbose=0)
    print(f"{model_path} on {splits.info.name} test ({splits.info.num_test} images):")
    print(training.format_branch_table(results, training.parameter_counts(model)))
    return 0


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
