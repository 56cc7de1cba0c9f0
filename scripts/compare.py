"""Compare plain / BYOT / MBAKT over seeds: see `python scripts/compare.py --helpfull`."""

from mbakt_tf.cli.compare import run

if __name__ == "__main__":
    run()
