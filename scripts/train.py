"""Train MBAKT: see `python scripts/train.py --helpfull` and flags/*.cfg."""

from mbakt_tf.cli.train import run

if __name__ == "__main__":
    run()
