"""Graph ops in each design's traced training step: a machine-independent proxy for fixed per-step cost.

On a CPU every op costs a few microseconds of dispatch whatever its size, so a step with three times
the ops of plain pays that overhead three times, beyond its FLOPs (issue 20, item 4).

Usage:
  .venv/bin/python experiments/train_step_op_count.py
"""

import collections

import keras
import numpy as np
import tensorflow as tf

from mbakt_tf.benchmark import VARIANTS
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.model import MBAKT


def main():
    images = np.random.default_rng(0).uniform(size=(128, 28, 28, 1)).astype("float32")
    labels = np.random.default_rng(0).integers(0, 10, 128).astype("int32")
    for name, fields in VARIANTS.items():
        model = MBAKT.from_backbone("small_resnet8", 10, (28, 28, 1), config=MBAKTConfig(**fields))
        model.compile()
        graph = tf.function(model.train_step).get_concrete_function(
            (tf.constant(images), tf.constant(labels))).graph
        ops = graph.get_operations()
        kinds = collections.Counter(op.type for op in ops).most_common(4)
        print(f"{name:>10}: {len(ops):5d} ops, {len(model.trainable_variables):3d} trainable variables; "
              f"most common {kinds}")


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
