"""absl flag definitions grouped by concern, and their conversion to config objects.

Every flag here is a field of `TrainConfig` or `MBAKTConfig`: its default,
help and choices come from the dataclass (`config_flags`), never restated.
Only the scripts import this module; the library never reads flags. Light: no
TensorFlow, so `--help` and usage errors come before it loads.
"""

import dataclasses

from absl import flags

from mbakt_tf.cli import backbone_names
from mbakt_tf.cli.config_flags import config_from_flags, define_config_flags
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.train_config import TrainConfig

FLAGS = flags.FLAGS

DATA_FLAGS = (
    "task", "dataset", "data_dir", "num_classes", "ignore_label", "image_size", "validation_fraction",
    "train_limit", "test_limit", "augment", "batch_size",
)
TRAINING_FLAGS = (
    "epochs", "optimizer", "learning_rate", "momentum", "weight_decay", "schedule", "d_learning_rate",
    "seed", "jit_compile", "output_dir", "run_name", "verbose", "tensorboard", "tensorboard_steps",
)
DISTRIBUTION_FLAGS = (
    "strategy", "cpu_devices", "sync_batchnorm", "deterministic", "backup_dir", "backup_steps",
    "stop_on_non_finite", "collapse_patience",
)
# Flags where 0 stands for the field's None (an absl float flag cannot be unset on the command line).
ZERO_MEANS_NONE = ("gate_main_weight", "max_adversarial_grad_ratio")


def define_data_flags():
    define_config_flags(TrainConfig, DATA_FLAGS)


def define_model_flags():
    """`--backbone` and every `MBAKTConfig` field."""
    define_config_flags(TrainConfig, ["backbone"], choices={"backbone": backbone_names()})
    define_config_flags(MBAKTConfig, [field.name for field in dataclasses.fields(MBAKTConfig)])


def define_training_flags():
    define_config_flags(TrainConfig, TRAINING_FLAGS)


def define_distribution_flags():
    """Strategy, devices, determinism, backups and guards (scripts/train.py)."""
    define_config_flags(TrainConfig, DISTRIBUTION_FLAGS)


def mbakt_config_from_flags():
    return config_from_flags(MBAKTConfig, **{name: FLAGS[name].value or None for name in ZERO_MEANS_NONE})


def train_config_from_flags():
    """A `TrainConfig` from the flags defined (scripts without distribution flags keep those defaults)."""
    return config_from_flags(TrainConfig)

