"""README results tables and the gain plot from results/: see `python scripts/report.py --helpfull`."""

from mbakt_tf.cli.report import run

if __name__ == "__main__":
    run()
