"""Compare plain, BYOT and MBAKT (and ablations) like for like over several seeds.

Usage:
  python scripts/compare.py --flagfile=flags/compare_fashion_mnist.cfg
  python scripts/compare.py --dataset=fashion_mnist --epochs=10 --seeds=0,1,2 --ablations
  python scripts/compare.py --flagfile=flags/compare_fashion_mnist_segmentation.cfg   # mIoU

Writes results.json, results.md and validation_accuracy.png into
output_dir/run_name (default saved_models/compare_<dataset>_<backbone>). Finished
(variant, seed) runs under runs/ are read back, not retrained: rerun the same
command to resume. Each run's TensorBoard logs are in runs/<variant>_seed<k>/logs,
so `tensorboard --logdir output_dir/run_name` shows every variant and seed side by side.
"""

import os
import sys
import time

from absl import app, flags

from mbakt_tf.cli import print_class_counts, run_app
from mbakt_tf.cli.quiet_start import start_tensorflow
from mbakt_tf.cli import config_flags
from mbakt_tf.cli import flags as cli_flags

cli_flags.define_data_flags()
cli_flags.define_model_flags()
cli_flags.define_training_flags()
flags.DEFINE_list(
    "variants", ["plain", "byot", "one", "mbakt"],
    "Variants to train: plain, byot, one (ONE-style: peers, gated teacher, ce + kd), mbakt, an ablation "
    "(mbakt_no_kd, ...) or a design (mbakt_exit, mbakt_peer, mbakt_deep); any of them may override "
    "MBAKTConfig fields after colons, e.g. byot:alpha=0.2 or mbakt:gamma=0:beta=0.1.",
)
flags.DEFINE_bool(
    "ablations", False,
    "Also train each single-loss ablation of mbakt: no kd, no hint, no adv, no ensemble teacher.",
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every variant trains once per seed.")
flags.DEFINE_string(
    "results_dir", "results",
    "Kept records: each finished run's small record (no weights) is written to "
    "<results_dir>/<run name>/<variant>_seed<k>.json, and a run with a record there is not retrained. "
    "Commit that folder to continue a comparison elsewhere. Empty: no records.",
)
flags.DEFINE_bool(
    "report_only", False,
    "Train nothing: write the tables and plots of the runs that finished (e.g. while the comparison "
    "is still running in another process).",
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        base_config = cli_flags.mbakt_config_from_flags()
        train_config = cli_flags.train_config_from_flags()
        seeds = list(config_flags.int_tuple("seeds", FLAGS.seeds))
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    if not seeds:
        raise app.UsageError("--seeds must name at least one seed.")

    start_tensorflow()
    from mbakt_tf import comparison

    try:
        variants = list(FLAGS.variants) + (list(comparison.ABLATIONS) if FLAGS.ablations else [])
        comparison.check_variants(base_config, variants)
    except ValueError as error:
        raise app.UsageError(str(error)) from error

    from mbakt_tf import atomic, reporting, tasks, training

    task = tasks.get_task(train_config.task)
    metric = task.metric  # what the table and the plot show
    dataset_name = f"{train_config.dataset_label()}{task.run_suffix}"
    comparison_name = FLAGS.run_name or f"compare_{dataset_name}_{train_config.backbone}"
    out_dir = os.path.join(FLAGS.output_dir, comparison_name)
    records_dir = os.path.join(FLAGS.results_dir, comparison_name) if FLAGS.results_dir else None
    try:  # the data first: bad input is refused before the comparison folder is made
        splits = training.load_data(train_config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_class_counts(splits.info)
    try:
        training.check_writable(out_dir)
    except training.NotWritableError as error:
        raise app.UsageError(f"--output_dir/--run_name: {error}") from error

    def train_fn(config, mbakt_config):
        if config.seed == train_config.seed:
            return training.train(config, mbakt_config, splits=splits)
        return training.train(config, mbakt_config)

    start = time.time()
    runs = comparison.run_comparison(
        train_config, base_config, variants, seeds, out_dir, train_fn=train_fn, train=not FLAGS.report_only,
        records_dir=records_dir,
    )
    if not runs:
        print(f"error: no finished run of {variants} under {out_dir}/runs.", file=sys.stderr)
        return 2
    variants = [v for v in variants if any(key[0] == v for key in runs)]
    costs = comparison.main_branch_costs(
        train_config.backbone, splits.info, base_config, variants, task=train_config.task
    )
    summary = comparison.summarize(runs, costs)
    runs_by_name = {f"{v}_seed{s}": r for (v, s), r in runs.items()}
    atomic.write_json(
        os.path.join(out_dir, "results.json"),
        {
            "summary": summary,
            "train_config": train_config.to_dict(),
            "base_mbakt_config": base_config.to_dict(),
            "seeds": seeds,
            "runs": runs_by_name,
        },
        sort_keys=True,
    )
    table = reporting.markdown_table(summary, variants, metric=metric)
    gains = reporting.paired_gains_table(
        {"runs": runs_by_name}, [v for v in variants if v.split(":")[0] in ("plain", "byot", "one") or comparison.equal_time_reference(v)], metric,
    )
    if gains:
        table += "\nMain-branch gain, paired by seed (mean ± std of the per-seed differences):\n\n" + gains
    atomic.write_text(os.path.join(out_dir, "results.md"), table)
    reporting.plot_validation_curves(runs, os.path.join(out_dir, f"validation_{metric}.png"), variants, metric)
    print()
    print(f"Test {'mIoU' if metric == 'miou' else 'accuracy'} on {splits.info.name}, mean ± std over seeds {seeds} "
          f"({time.time() - start:.0f} s this invocation):")
    print(table)
    print(f"Written: {out_dir}/results.json, results.md, validation_{metric}.png")
    print(f"Each run: {out_dir}/runs/<variant>_seed<k>/ (results.json, curves.png, model.keras)")
    if records_dir:
        print(f"Kept records (commit them): {records_dir}/<variant>_seed<k>.json")
    if train_config.tensorboard:
        print(f"TensorBoard, every run side by side: tensorboard --logdir {out_dir}")
    return 0


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
