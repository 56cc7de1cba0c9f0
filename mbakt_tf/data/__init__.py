"""Image datasets as ready tf.data pipelines, for classification and segmentation.

`load_classification(name, ...)` and `load_segmentation(name, ...)` are the
entry points; both return `DatasetSplits` (`train`, `validation` or None,
`test`, `info`) with the same split plan: a seeded validation carve from the
train split, train/test limits, one batch size, an optional resize, and
augmentation on the training split only.

Classification (`classification.py`), batches of `(images float32 (B, H, W, C)
in [0, 255], labels int32 (B,))`, `info` a `DatasetInfo`:

* "fashion_mnist": the four Fashion-MNIST IDX files from `data_dir`, or from
  /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`)
  or ~/.keras/datasets/fashion-mnist. Works offline.
* "synthetic": generated, learnable, deterministic (see `synthetic`).
* "folder": your own images, one sub-folder per class in `data_dir` (or
  `data_dir/train/<class>/` and `data_dir/test/<class>/`); class names are the
  folder names (see `folder`). Works offline.
* any TensorFlow Datasets image-classification name ("cifar10", "mnist",
  "oxford_iiit_pet", ...), with `data_dir` as the TFDS data directory;
  "tfds:NAME" forces TFDS for a name that is also local ("tfds:fashion_mnist").

Segmentation (`segmentation.py`), batches of `(images, masks int32 (B, H, W))`,
`info` a `SegmentationInfo` (with `ignore_label`): "fashion_mnist" (item
pixels get the item's class + 1), "synthetic" (shapes), "folder" (your
`images/` + `masks/`, see `folder_segmentation`), "oxford_iiit_pet" (TFDS
trimaps).

Bad input in a folder (an empty class folder, an unreadable image, a mask
that does not fit its image, ...) raises `DataFolderError` naming the file or
folder, before any pipeline is built.

Modules: `types` (what the loaders return), `split_plan` (the plan both tasks
share), `classification`, `segmentation`, the sources `fashion_mnist`, `idx`,
`synthetic`, `tfds_source`, `folder` and `folder_segmentation` (with
`folder_layout`: split folders and carves, `image_files`: finding, checking
and decoding files), and `pipeline` / `augment` (tf.data and augmentation).

Example:
>>> from mbakt_tf import data
>>> splits = data.load_classification(
...     "synthetic", batch_size=32, synthetic_kwargs=dict(num_train=320, num_test=64))
>>> splits.info.input_shape, splits.info.num_train, splits.info.num_validation
((28, 28, 1), 288, 32)
>>> images, labels = next(iter(splits.train))
>>> tuple(images.shape), labels.dtype.name
((32, 28, 28, 1), 'int32')
"""

from mbakt_tf.data import (
    augment, classification, fashion_mnist, folder, folder_layout, folder_segmentation, idx, image_files,
    pipeline, segmentation, split_plan, synthetic, tfds_source, types,
)
from mbakt_tf.data.augment import build_augmentation
from mbakt_tf.data.classification import LOCAL_DATASETS, available_datasets, load_classification
from mbakt_tf.data.idx import read_idx, write_idx
from mbakt_tf.data.pipeline import make_dataset, validate_arrays
from mbakt_tf.data.segmentation import available_segmentation_datasets, load_segmentation
from mbakt_tf.data.types import (
    DataFolderError, DatasetInfo, DatasetNotFoundError, DatasetSplits, SegmentationInfo,
)

__all__ = [
    "LOCAL_DATASETS",
    "DataFolderError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "SegmentationInfo",
    "augment",
    "available_datasets",
    "available_segmentation_datasets",
    "build_augmentation",
    "classification",
    "fashion_mnist",
    "folder",
    "folder_layout",
    "folder_segmentation",
    "idx",
    "image_files",
    "load_classification",
    "load_segmentation",
    "make_dataset",
    "pipeline",
    "read_idx",
    "segmentation",
    "split_plan",
    "synthetic",
    "tfds_source",
    "types",
    "validate_arrays",
    "write_idx",
]
