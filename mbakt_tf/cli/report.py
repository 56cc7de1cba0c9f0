"""Regenerate the README's results tables and the gain plot from the kept run records (results/).

Usage:
  python scripts/report.py            # rewrite every <!-- results:... --> section of README.md and docs/*.md
  python scripts/report.py --check    # exit 1, naming each section, when any differs from the records

Each section is rebuilt from results/<comparison>/<variant>_seed<k>.json (written by
scripts/compare.py); the headline table's rows are listed in results/headline.json.
"""

import glob
import os
import sys

from absl import app, flags

from mbakt_tf.cli import run_app

flags.DEFINE_string("results_dir", "results", "Folder of kept run records (one sub-folder per comparison).")
flags.DEFINE_list(
    "files", None, "Markdown files whose results sections to rebuild (default: README.md and docs/*.md)."
)
flags.DEFINE_bool("check", False, "Change nothing: exit 1 if any section differs from the records.")
flags.DEFINE_string(
    "gain_plot", "docs/gain_vs_size.png",
    "Where to write the plot of the headline rows' gains over plain against training-set size; empty: none.",
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from mbakt_tf import reporting, results_report

    files = FLAGS.files or ["README.md"] + sorted(glob.glob("docs/*.md"))
    stale = []
    for path in files:
        try:
            changed = (results_report.check_file if FLAGS.check else results_report.update_file)(
                path, FLAGS.results_dir
            )
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 2
        sections = results_report.count_sections(path)
        verb = "differ from the records" if FLAGS.check else "rewritten"
        print(f"{path}: {sections} results sections, {len(changed)} {verb}"
              + "".join(f"\n  results:{kind} {arg or ''}" for kind, arg in changed))
        stale += [(path, section) for section in changed]
    for records_dir in sorted(glob.glob(os.path.join(FLAGS.results_dir, "*", ""))):
        mixed = results_report.mixed_code_commits(results_report.load_records(records_dir))
        if mixed:
            print(f"warning: {records_dir} mixes method code: "
                  + "; ".join(f"{commit}: {len(names)} runs" for commit, names in mixed.items()), file=sys.stderr)
    if FLAGS.check:
        if stale:
            print("Run `python scripts/report.py` to rebuild them from the records.", file=sys.stderr)
            return 1
        return 0
    if FLAGS.gain_plot:
        points = results_report.gain_points(
            results_report.load_headline_rows(FLAGS.results_dir), FLAGS.results_dir
        )
        if points:
            reporting.plot_gain_over_plain(points, FLAGS.gain_plot)
            print(f"Written: {FLAGS.gain_plot} ({len(points)} training-set sizes)")
    return 0


def run():
    run_app(main)


if __name__ == "__main__":
    sys.exit(run())
