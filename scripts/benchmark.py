"""Time MBAKT's training step against plain: see `python scripts/benchmark.py --helpfull`."""

from mbakt_tf.cli.benchmark import run

if __name__ == "__main__":
    run()
