"""Export a trained MBAKT model for serving and Android: see `python scripts/export.py --helpfull`."""

from mbakt_tf.cli.export import run

if __name__ == "__main__":
    run()
