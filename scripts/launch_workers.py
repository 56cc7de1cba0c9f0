"""Run a script as N local MultiWorkerMirroredStrategy workers on 127.0.0.1 (one TF_CONFIG each).

Usage:
  python scripts/launch_workers.py --num_workers=2 -- scripts/train.py --strategy=multi_worker \
      --dataset=synthetic --epochs=1 --batch_size=32

Exits with the largest worker exit code; if one worker fails, the others are stopped.
"""

import sys

from mbakt_tf.distribute import main

if __name__ == "__main__":
    sys.exit(main())
