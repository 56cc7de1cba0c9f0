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


class DataFolderError(ValueError):
    """A folder of images (or masks) that cannot make a dataset; the message names the file or folder.

    Raised by the folder loaders before any pipeline is built: an empty class
    folder, an unreadable image, a mask that does not fit its image, ...
    """


@dataclasses.dataclass
class DatasetInfo:
    """What a model needs to know about a loaded dataset.

    `input_shape` is (H, W, C) of the images the pipelines yield (after any
    resize). `num_*` count examples, not batches; `num_validation` is 0 when
    there is no validation split. `source` says where the data came from.
    `class_counts`, when the loader knows them, is `{split: {class name:
    examples}}` (segmentation: images showing the class).
    """

    name: str
    num_classes: int
    input_shape: tuple
    class_names: list
    num_train: int
    num_validation: int
    num_test: int
    source: str = ""
    class_counts: Optional[dict] = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def counts_table(self):
        """`class_counts` as text: a row per class, a column per split ("" when there are none).

        Example:
        >>> info = DatasetInfo("pets", 2, (8, 8, 3), ["cat", "dog"], 3, 0, 2,
        ...                    class_counts={"train": {"cat": 2, "dog": 1}, "test": {"cat": 1, "dog": 1}})
        >>> print(info.counts_table())
        class   train  test
        ------  -----  ----
        cat     2      1
        dog     1      1
        images  3      2
        """
        if not self.class_counts:
            return ""
        from mbakt_tf.reporting import text_table

        splits = [split for split, counts in self.class_counts.items() if counts]
        header = "class (images showing it)" if isinstance(self, SegmentationInfo) else "class"
        rows = [(header,) + tuple(splits)]
        rows += [(name,) + tuple(str(self.class_counts[split].get(name, 0)) for split in splits)
                 for name in self.class_names]
        totals = {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}
        rows.append(("images",) + tuple(str(totals.get(split, "")) for split in splits))
        return text_table(rows)


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
