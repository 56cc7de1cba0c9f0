"""Export a trained MBAKT model's main branch (or one early exit) for serving and Android.

Writes a SavedModel, TFLite float32 / float16 / dynamic-range / int8 files,
labels.txt and manifest.json, checks parity of every file against the Keras
model on held-out images, and benchmarks LiteRT latency (int8 vs float32).

Usage:
  python scripts/export.py --model=saved_models/quickstart
  python scripts/export.py --model=saved_models/quickstart/model.keras --branch=1 --test_limit=2000
  python scripts/export.py --model=saved_models/quickstart --int8_io=uint8 --formats=float32,int8
  python scripts/export.py --model=saved_models/quickstart --rgb_input --int8_io=uint8   # MediaPipe Tasks
The dataset (for int8 calibration and parity) defaults to the one in the run's results.json.
Every TFLite file gets TFLite Metadata (labels, normalisation, image type) and is run by
MediaPipe Tasks (ImageClassifier / ImageSegmenter) against LiteRT, in .venv-mediapipe
(`make setup-mediapipe`); MediaPipe takes RGB uint8/float32 input only: --rgb_input, --int8_io=uint8.
Exit status: 0 when every check passed, 1 when a check failed (files are still written),
2 for a model that cannot be exported (not an MBAKT model, unknown branch).
"""

import sys

from absl import flags

from mbakt_tf.cli import define_saved_run_flags, run_app, run_checked_tool

FLAGS = flags.FLAGS
define_saved_run_flags()
flags.DEFINE_string(
    "output_dir", None,
    "Where to write (default: <run folder>_export, or <run folder>_export_branch_k with --branch).",
)
flags.DEFINE_string(
    "branch", None,
    "Export early exit k instead of the main branch: k or branch_k (1 = shallowest); 'main' or unset: main.",
)
flags.DEFINE_list(
    "formats", ["float32", "float16", "dynamic_range", "int8"],
    "TFLite variants to write (the SavedModel is always written).",
)
flags.DEFINE_enum("int8_io", "int8", ["int8", "uint8"],
                  "Input/output dtype of the int8 file: int8 (pixel - 128) or uint8 (pixel bytes).")
flags.DEFINE_integer("representative_samples", 300, "Training images that calibrate the int8 ranges.")
flags.DEFINE_integer("test_limit", None,
                     "Parity and accuracy on at most this many test images (default: all).")
flags.DEFINE_float("max_int8_accuracy_drop", 0.01,
                   "Largest accepted int8 test-accuracy drop vs the Keras model (0.01 = 1 point).")
flags.DEFINE_integer("benchmark_runs", 200, "Timed LiteRT invocations per file (0: no benchmark).")
flags.DEFINE_integer("benchmark_warmup", 20, "Untimed LiteRT invocations before timing.")
flags.DEFINE_integer("num_threads", 1, "LiteRT threads for parity runs and the benchmark.")
flags.DEFINE_bool("strict", True, "Exit with status 1 when a parity or verification check fails.")
flags.DEFINE_bool("fresh_process_check", True,
                  "Reload the SavedModel in a fresh process without mbakt_tf; false: in this one (about 7 s less).")
flags.DEFINE_bool("rgb_input", False,
                  "Files take RGB (H, W, 3) [0, 255], as MediaPipe Tasks feed them; a grayscale model "
                  "converts in the graph (BT.601 luma, builtin ops).")
flags.DEFINE_enum("tflite_metadata", "auto", ["auto", "require", "off"],
                  "TFLite Metadata + MediaPipe Tasks check: auto (when .venv-mediapipe or "
                  "$MBAKT_MEDIAPIPE_PYTHON has MediaPipe, else the manifest says why not), require, off.")
flags.DEFINE_string("mediapipe_python", None,
                    "Python with mediapipe (default: $MBAKT_MEDIAPIPE_PYTHON, then .venv-mediapipe).")
flags.DEFINE_float("min_mediapipe_agreement", 0.99,
                   "Least fraction of test images (pixels) where MediaPipe's class agrees with LiteRT's.")


def export_config_from_flags():
    from mbakt_tf.export import ExportConfig

    return ExportConfig(
        branch=FLAGS.branch,
        formats=tuple(FLAGS.formats),
        int8_io=FLAGS.int8_io,
        representative_samples=FLAGS.representative_samples,
        test_limit=FLAGS.test_limit,
        max_int8_accuracy_drop=FLAGS.max_int8_accuracy_drop,
        benchmark_runs=FLAGS.benchmark_runs,
        benchmark_warmup=FLAGS.benchmark_warmup,
        num_threads=FLAGS.num_threads,
        rgb_input=FLAGS.rgb_input,
        tflite_metadata=FLAGS.tflite_metadata,
        mediapipe_python=FLAGS.mediapipe_python,
        min_mediapipe_agreement=FLAGS.min_mediapipe_agreement,
        fresh_process_check=FLAGS.fresh_process_check,
        strict=False,  # the script reports failed checks itself, then sets the exit status
    )


def _load_exporter():
    from mbakt_tf import export

    errors = (export.NotMBAKTModelError, ValueError, FileNotFoundError,
              export.mediapipe_tasks.MediaPipeUnavailableError)
    return export.export_from_file, errors, lambda result: export.format_report(result.manifest)


def _check_branch(model_path, config):
    """An unknown --branch is refused from the saved config, before TensorFlow starts."""
    from mbakt_tf import saved_runs

    names = saved_runs.saved_branch_names(model_path)
    if names is not None:
        config.branch_of(names)


def main(argv):
    return run_checked_tool(argv, export_config_from_flags, _load_exporter, checks_file="manifest.json",
                            check_saved_model=_check_branch)


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
