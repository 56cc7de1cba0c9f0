"""QAT and pruning of a trained MBAKT model's main branch: see `python scripts/optimize.py --helpfull`."""

from mbakt_tf.cli.optimize import run

if __name__ == "__main__":
    run()
