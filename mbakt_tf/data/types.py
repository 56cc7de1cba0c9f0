"""What the loaders return: `DatasetSplits` of tf.data pipelines and a `DatasetInfo` (or `SegmentationInfo`).

Example:
>>> info = SegmentationInfo(name="shapes", num_classes=3, input_shape=(32, 32, 1),
...                         class_names=["background", "square", "disc"], num_train=90,
...                         num_validation=10, num_test=20, ignore_label=255)
>>> info.to_dict()["ignore_label"], isinstance(info, DatasetInfo)
(255, True)
"""

import dataclasses
from typing import Optional


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says where and what to do."""


@dataclasses.dataclass
class DatasetInfo:
    """What a model needs to know about a loaded dataset.

    `input_shape` is (H, W, C) of the images the pipelines yield (after any
    resize). `num_*` count examples, not batches; `num_validation` is 0 when
    there is no validation split. `source` says where the data came from.
    """

    name: str
    num_classes: int
    input_shape: tuple
    class_names: list
    num_train: int
    num_validation: int
    num_test: int
    source: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SegmentationInfo(DatasetInfo):
    """`DatasetInfo` of a segmentation dataset; classes are per pixel, 0 = background.

    `ignore_label` is the mask value of pixels that count in no loss and no
    metric, or None when every pixel is labelled.
    """

    ignore_label: Optional[int] = None


@dataclasses.dataclass
class DatasetSplits:
    """`train`, `validation` (or None) and `test` tf.data pipelines and their `info`."""

    train: object
    validation: object
    test: object
    info: DatasetInfo
