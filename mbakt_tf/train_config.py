"""`TrainConfig`: everything about a run except the MBAKT objective, and the names it accepts.

Light (no TensorFlow), so that the scripts define their flags from it and
answer `--help` before TensorFlow loads; `mbakt_tf.training` runs it.
"""

import dataclasses
import os
from typing import Optional

from mbakt_tf.config import MBAKTConfig, config_field  # noqa: F401 - MBAKTConfig: the doctest
from mbakt_tf.tasks import TASK_NAMES

OPTIMIZERS = ("sgd", "adam", "adamw")
TASKS = TASK_NAMES
SCHEDULES = ("cosine", "constant")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")  # see distribute.make_strategy


@dataclasses.dataclass
class TrainConfig:
    """Everything about a run except the MBAKT objective (that is `MBAKTConfig`).

    Example:
    >>> TrainConfig(epochs=2, batch_size=64).run_name_for(MBAKTConfig(mode="plain"))
    'fashion_mnist_small_resnet8_plain_seed0'
    """

    task: str = config_field(
        "classification",
        "classification: one label per image; segmentation: one label per pixel (encoder-decoder, "
        "datasets fashion_mnist, synthetic, folder, oxford_iiit_pet; metrics mIoU and pixel accuracy).",
        TASKS,
    )
    dataset: str = config_field(
        "fashion_mnist",
        "'fashion_mnist' (local IDX files), 'synthetic', 'folder' (your images in --data_dir: one sub-folder "
        "per class, or images/ + masks/ for segmentation; see docs/own_data.md), or any TFDS "
        "image-classification name.",
    )
    data_dir: Optional[str] = config_field(
        None,
        "folder: your data folder (PATH/<class>/*.jpg, or PATH/train/<class>/ and PATH/test/<class>/; "
        "segmentation: PATH/images/ + PATH/masks/). Fashion-MNIST: folder with the four IDX .gz files "
        "(default: search /usr/share/datasets/fashion-mnist, ~/.keras/datasets/fashion-mnist). TFDS: its data_dir.",
    )
    num_classes: Optional[int] = config_field(
        None,
        "Segmentation from a folder: classes per pixel (default: the lines of DATA_DIR/labels.txt, else the "
        "largest mask value + 1, the ignore label left out).",
    )
    ignore_label: Optional[int] = config_field(
        None, "Segmentation from a folder: the mask value of pixels that count in no loss and no metric "
              "(default 255).")
    image_size: Optional[int] = config_field(
        None, "Resize images to this square size (keeps native size if unset).")
    validation_fraction: float = config_field(0.1, "Fraction of the train split held out for validation.")
    train_limit: Optional[int] = config_field(None, "Use only this many training examples (quick runs).")
    test_limit: Optional[int] = config_field(None, "Use only this many test examples (quick runs).")
    augment: bool = config_field(True, "Random translation (and flips) on the training split.")
    backbone: str = config_field("small_resnet8", "Backbone name.")  # choices: backbones.available_backbones()
    epochs: int = config_field(10, "Training epochs.")
    batch_size: int = config_field(128, "Global batch size.")
    optimizer: str = config_field("sgd", "Optimizer of the network.", OPTIMIZERS)
    learning_rate: float = config_field(0.05, "Initial learning rate of the network.")
    momentum: float = config_field(0.9, "SGD momentum (Nesterov).")
    weight_decay: float = config_field(5e-4, "Weight decay of the network's optimizer.")
    schedule: str = config_field("cosine", "Learning-rate schedule.", SCHEDULES)
    d_learning_rate: float = config_field(2e-4, "Adam learning rate of the discriminator.")
    seed: int = config_field(0, "Seed of weights, shuffling, augmentation and the validation carve.")
    jit_compile: bool = config_field(False, "XLA-compile the training step.")
    output_dir: str = config_field("saved_models", "Runs are written to output_dir/run_name/.")
    run_name: Optional[str] = config_field(None, "Run folder name (default: dataset_backbone_mode_seedN).")
    verbose: int = config_field(1, "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch.")
    synthetic_kwargs: Optional[dict] = None  # arguments of data.synthetic (tests); no flag
    # Distribution and fault tolerance (see distribute.py, resume.py, guards.py).
    strategy: str = config_field(
        "default",
        "default: one device; one_device; mirrored: all local GPUs, else all logical CPUs "
        "(--cpu_devices); multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG "
        "(launch with scripts/launch_workers.py).",
        STRATEGIES,
    )
    cpu_devices: Optional[int] = config_field(
        None, "Split the CPU into this many logical devices (so --strategy=mirrored runs N replicas without GPUs).")
    sync_batchnorm: bool = config_field(
        False, "BatchNorm with global batch statistics across replicas (default: per replica, as Keras does).")
    deterministic: bool = config_field(
        False, "tf.config.experimental.enable_op_determinism(): same seed, same result (slower on GPU).")
    backup_dir: Optional[str] = config_field(
        None,
        "Back up the training state here; rerunning the same command after a crash resumes exactly "
        "from the newest backup. Deleted when the run completes.",
    )
    backup_steps: int = config_field(0, "Also back up every N steps (0: at epoch ends only).")
    stop_on_non_finite: bool = config_field(
        True, "Stop with an error naming the loss term and step when a loss becomes NaN or infinite.")
    collapse_patience: int = config_field(
        200, "Warn when d_balanced_accuracy stays near 0 or 1 for this many steps (0: never).")
    # TensorBoard logs in <run folder>/logs (per epoch; also every N steps with tensorboard_steps).
    tensorboard: bool = config_field(
        True,
        "TensorBoard logs of every loss term, head accuracy, discriminator metric and the learning rate, "
        "per epoch, in <run folder>/logs (--tensorboard=false: none). View: tensorboard --logdir <run folder>.",
    )
    tensorboard_steps: int = config_field(
        0, "Also log the training metrics to TensorBoard every N steps (0: per epoch only).")

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises `ValueError` naming the first field that makes no sense."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "d_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}."
            )
        for name in ("num_classes", "ignore_label"):
            if getattr(self, name) is not None and (self.task, self.dataset) != ("segmentation", "folder"):
                raise ValueError(f"{name} is for task='segmentation' with dataset='folder' (your masks).")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
        if self.ignore_label is not None and self.ignore_label < 0:
            raise ValueError(f"ignore_label must be >= 0, got {self.ignore_label}.")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}.")
        if self.cpu_devices is not None and self.cpu_devices < 1:
            raise ValueError(f"cpu_devices must be >= 1, got {self.cpu_devices}.")
        if self.strategy == "multi_worker" and (self.cpu_devices or 1) > 1:
            raise ValueError(
                "cpu_devices > 1 does not apply to strategy='multi_worker' (one replica per "
                "worker on CPU): start more workers instead."
            )
        if self.jit_compile and self.strategy in ("mirrored", "multi_worker"):
            raise ValueError(
                f"jit_compile=True is not supported with strategy={self.strategy!r}: the XLA-compiled "
                "two-optimizer step fails under MirroredStrategy on TF 2.21 / Keras 3.15."
            )
        for name in ("backup_steps", "collapse_patience", "tensorboard_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.backup_steps and not self.backup_dir:
            raise ValueError("backup_steps needs backup_dir (where the backups go).")
        if self.tensorboard_steps and not self.tensorboard:
            raise ValueError("tensorboard_steps needs tensorboard=True (it logs every N steps to TensorBoard).")

    def dataset_label(self):
        """The dataset in default run names: its name, or the data folder's name for dataset='folder'.

        Example:
        >>> TrainConfig(dataset="folder", data_dir="/data/flowers/").dataset_label()
        'flowers'
        """
        if self.dataset == "folder" and self.data_dir:
            return os.path.basename(os.path.normpath(self.data_dir)) or self.dataset
        return self.dataset

    def run_name_for(self, mbakt_config):
        dataset = self.dataset_label()
        dataset = dataset if self.task == "classification" else f"{dataset}_{self.task}"
        return self.run_name or f"{dataset}_{self.backbone}_{mbakt_config.mode}_seed{self.seed}"

    def to_dict(self):
        return dataclasses.asdict(self)
