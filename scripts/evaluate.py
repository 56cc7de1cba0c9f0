"""Evaluate a saved MBAKT model: see `python scripts/evaluate.py --helpfull`."""

from mbakt_tf.cli.evaluate import run

if __name__ == "__main__":
    run()
