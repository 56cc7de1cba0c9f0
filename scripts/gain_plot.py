"""Gain over plain against training-set size: see `python scripts/gain_plot.py --helpfull`."""

from mbakt_tf.cli.gain_plot import run

if __name__ == "__main__":
    run()
