"""Run a script as N local MultiWorkerMirroredStrategy workers: see `python scripts/launch_workers.py --help`."""

import sys

from mbakt_tf.cli.launch_workers import main

if __name__ == "__main__":
    sys.exit(main())
