"""Time the MBAKT training step against the plain one on the same batch and backbone.

Usage:
  python scripts/benchmark.py --backbone=small_resnet8 --input_shape=28,28,1 --batch_size=128
  python scripts/benchmark.py --jit_compile --mixed_precision
"""

import sys

from absl import app, flags

from mbakt_tf.cli import backbone_names, run_app
from mbakt_tf.cli.config_flags import define_config_flags
from mbakt_tf.cli.quiet_start import start_tensorflow
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.train_config import TrainConfig

define_config_flags(TrainConfig, ["backbone"], choices={"backbone": backbone_names()})
flags.DEFINE_list("input_shape", ["28", "28", "1"], "Image shape height,width,channels.")
flags.DEFINE_integer("num_classes", 10, "Number of classes.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_list(
    "variants", ["plain", "branches", "byot", "mbakt_exit", "one", "mbakt", "mbakt_deep"],
    "Variants to time (see mbakt_tf.benchmark.VARIANTS).",
)
flags.DEFINE_integer("steps", 10, "Steps per timed round.")
flags.DEFINE_integer("repeats", 5, "Timed rounds; the median is reported, and the fastest round's ratios.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, compilation).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
flags.DEFINE_bool("mixed_precision", False, "Use the mixed_float16 policy.")
define_config_flags(MBAKTConfig, ["adaptation"])
flags.DEFINE_string("output_json", None, "Also write the report to this JSON file.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    start_tensorflow()
    from mbakt_tf import atomic, benchmark

    try:
        input_shape = tuple(int(v) for v in FLAGS.input_shape)
    except ValueError as error:
        raise app.UsageError(f"--input_shape must be integers, got {FLAGS.input_shape}") from error
    if len(input_shape) != 3:
        raise app.UsageError(f"--input_shape must be height,width,channels, got {FLAGS.input_shape}")
    unknown = [v for v in FLAGS.variants if v not in benchmark.VARIANTS]
    if unknown:
        raise app.UsageError(f"Unknown --variants {unknown}; known: {list(benchmark.VARIANTS)}")
    if FLAGS.batch_size < 1 or FLAGS.steps < 1 or FLAGS.repeats < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--batch_size, --steps and --repeats must be >= 1, --warmup >= 0.")
    report = benchmark.benchmark_train_step(
        FLAGS.backbone, input_shape, num_classes=FLAGS.num_classes, batch_size=FLAGS.batch_size,
        variants=FLAGS.variants, base_config=MBAKTConfig(adaptation=FLAGS.adaptation), steps=FLAGS.steps, repeats=FLAGS.repeats, warmup=FLAGS.warmup,
        jit_compile=FLAGS.jit_compile, mixed_precision=FLAGS.mixed_precision,
    )
    print()
    print(benchmark.format_report(report))
    if FLAGS.output_json:
        atomic.write_json(FLAGS.output_json, report)
    return 0


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
