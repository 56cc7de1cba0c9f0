"""Plot the main branch's gain over plain against training-set size, from finished comparisons.

Usage:
  python scripts/gain_plot.py --compare_dirs=saved_models/compare_fashion_mnist_1k,\
saved_models/compare_fashion_mnist_5k,saved_models/compare_fashion_mnist_full --output=docs/gain_vs_size.png

Reads each folder's results.json (written by scripts/compare.py), pairs every variant's seeds with
plain's, prints the gains and writes the plot.
"""

import json
import os
import sys

from absl import app, flags

from mbakt_tf.cli import run_app

flags.DEFINE_list("compare_dirs", None, "Folders written by scripts/compare.py (each with results.json).")
flags.DEFINE_string("output", "gain_vs_size.png", "Where to write the plot (PNG).")
flags.mark_flag_as_required("compare_dirs")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from mbakt_tf import reporting

    points = {}
    for folder in FLAGS.compare_dirs:
        path = os.path.join(folder, "results.json")
        if not os.path.isfile(path):
            print(f"error: {path} does not exist: run scripts/compare.py for it first.", file=sys.stderr)
            return 2
        with open(path) as f:
            results = json.load(f)
        size = next(iter(results["runs"].values()))["dataset"]["num_train"]
        points[size] = reporting.gain_over_plain(results)
        for variant, gain in sorted(points[size].items()):
            print(f"{size:>7,} images  {variant:<24} {gain['mean']:+.2f} ± {gain['std']:.2f} points "
                  f"({gain['n']} seeds)")
    reporting.plot_gain_over_plain(points, FLAGS.output)
    print(f"Written: {FLAGS.output}")
    return 0


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
