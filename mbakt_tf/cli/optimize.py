"""Quantization-aware training and pruning of a trained MBAKT model's main branch (tfmot).

Fine-tunes a tf_keras copy of the main branch with tensorflow-model-optimization, in a
separate process (tfmot needs tf_keras and its own virtualenv: `make setup-optimize`),
with the labels and, for `qat_kd` and `prune`, the MBAKT ensemble's soft targets. Writes
full-int8 TFLite files from QAT, float32 and int8 files of the pruned model, the
post-training int8 baseline, and report.json / report.md with test accuracies, sizes and
gzip sizes.

Usage:
  python scripts/optimize.py --model=saved_models/quickstart
  python scripts/optimize.py --model=saved_models/quickstart --methods=qat_kd --epochs=2
  python scripts/optimize.py --model=saved_models/quickstart --target_sparsity=0.75 --methods=prune
The dataset defaults to the one in the run's results.json.
Exit status: 0 when every check passed, 1 when a check failed (files are still written),
2 for a model or environment that cannot be optimized (not an MBAKT model, no tfmot Python,
a layer the tf_keras bridge does not support).
"""

import sys

from absl import flags

from mbakt_tf.cli import define_saved_run_flags, run_app, run_checked_tool

FLAGS = flags.FLAGS
define_saved_run_flags()
flags.DEFINE_string("output_dir", None, "Where to write (default: <run folder>_optimize).")
flags.DEFINE_list("methods", ["qat", "qat_kd", "prune"],
                  "qat: QAT with the labels; qat_kd: QAT with the labels and the teacher's soft "
                  "targets; prune: magnitude pruning (with the teacher when there is one).")
flags.DEFINE_integer("epochs", 1, "Fine-tuning epochs of each method.")
flags.DEFINE_integer("batch_size", 128, "Fine-tuning batch size.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Fine-tuning optimizer (SGD: momentum 0.9, Nesterov).")
flags.DEFINE_float("learning_rate", 0.005, "Initial fine-tuning learning rate (cosine decay to 0).")
flags.DEFINE_enum("teacher", "auto", ["auto", "ensemble", "main", "none"],
                  "Soft targets: the branches' ensemble, the float main branch, none; auto: the "
                  "ensemble when the model has branches.")
flags.DEFINE_float("alpha", 0.5, "Weight of the distillation term (1 - alpha on cross-entropy).")
flags.DEFINE_float("temperature", None, "Distillation temperature (default: the model's).")
flags.DEFINE_float("target_sparsity", 0.5, "Fraction of zero weights in every pruned layer.")
flags.DEFINE_float("pruning_end_fraction", 0.7,
                   "The pruning schedule reaches the target after this fraction of the steps.")
flags.DEFINE_integer("train_limit", None, "Fine-tune on at most this many training images per epoch.")
flags.DEFINE_integer("test_limit", None, "Evaluate on at most this many test images (default: all).")
flags.DEFINE_bool("augment", True, "Augment the fine-tuning images (the teacher sees the same images).")
flags.DEFINE_integer("representative_samples", 300, "Training images that calibrate post-training int8.")
flags.DEFINE_enum("int8_io", "int8", ["int8", "uint8"], "Input/output dtype of the int8 files.")
flags.DEFINE_integer("seed", 0, "Seed of the tf_keras fine-tune.")
flags.DEFINE_bool("keep_work", False, "Keep <output_dir>/work (the files passed between the processes).")
flags.DEFINE_string("tfmot_python", None,
                    "Python with tensorflow-model-optimization and tf_keras (default: "
                    "$MBAKT_TFMOT_PYTHON, then .venv-optimize/bin/python, then this Python).")
flags.DEFINE_bool("strict", True, "Exit with status 1 when a check fails.")


def optimize_config_from_flags():
    from mbakt_tf.optimize import OptimizeConfig

    return OptimizeConfig(
        methods=tuple(FLAGS.methods),
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        teacher=FLAGS.teacher,
        alpha=FLAGS.alpha,
        temperature=FLAGS.temperature,
        target_sparsity=FLAGS.target_sparsity,
        pruning_end_fraction=FLAGS.pruning_end_fraction,
        train_limit=FLAGS.train_limit,
        test_limit=FLAGS.test_limit,
        augment=FLAGS.augment,
        representative_samples=FLAGS.representative_samples,
        int8_io=FLAGS.int8_io,
        seed=FLAGS.seed,
        keep_work=FLAGS.keep_work,
        tfmot_python=FLAGS.tfmot_python,
        strict=False,  # the script reports failed checks itself, then sets the exit status
    )


def _load_optimizer():
    from mbakt_tf import optimize, saved_runs, tf_keras_bridge

    errors = (optimize.TfmotUnavailableError, tf_keras_bridge.UnsupportedLayerError,
              saved_runs.NotMBAKTModelError, ValueError, FileNotFoundError)
    return optimize.optimize_from_file, errors, lambda result: optimize.format_report(result.report)


def main(argv):
    from mbakt_tf import optimize

    return run_checked_tool(argv, optimize_config_from_flags, _load_optimizer, checks_file="report.json",
                            check_saved_model=optimize.check_saved_model)


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
