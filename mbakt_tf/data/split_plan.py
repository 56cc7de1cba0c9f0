"""The split plan both tasks share: argument checks, validation carve, limits, input shape, augmentation.

A loader reads its source (arrays or a tf.data stream of examples), lets
`carve_arrays` or `carve_stream` cut the seeded validation split from train
and apply the limits, builds its info from the counts, and `build_splits`
turns the three parts into pipelines with the task's `make_dataset`.

Example:
>>> import numpy as np
>>> images, labels = np.zeros((10, 4, 4, 1), np.uint8), np.arange(10)
>>> plan = carve_arrays((images, labels), (images, labels), validation_fraction=0.2, seed=0,
...                     train_limit=5, test_limit=None)
>>> plan.counts
{'num_train': 5, 'num_validation': 2, 'num_test': 10}
"""

import dataclasses

from mbakt_tf.data import pipeline
from mbakt_tf.data.types import DatasetSplits


@dataclasses.dataclass
class SplitPlan:
    """The train / validation (or None) / test parts of a dataset and how many examples each has."""

    train: object
    validation: object
    test: object
    num_train: int
    num_validation: int
    num_test: int

    @property
    def counts(self):
        """`num_train`, `num_validation` and `num_test`, as `DatasetInfo` takes them."""
        return dict(num_train=self.num_train, num_validation=self.num_validation, num_test=self.num_test)


def check_arguments(name, train_limit, test_limit, synthetic_kwargs):
    """Raises `ValueError` for a limit below 1, or `synthetic_kwargs` for another dataset than "synthetic"."""
    for arg, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{arg} must be None or >= 1, got {value}.")
    if synthetic_kwargs is not None and name != "synthetic":
        raise ValueError(f"synthetic_kwargs is only for name='synthetic', not {name!r}.")


def carve_arrays(train, test, validation_fraction, seed, train_limit, test_limit):
    """A `SplitPlan` of numpy `(inputs, targets)` pairs: seeded validation carve, then the limits."""
    (images, targets), (test_images, test_targets) = train, test
    train_idx, val_idx = pipeline.carve_validation(len(images), validation_fraction, seed)
    train_idx = train_idx[:train_limit]
    test = (test_images[:test_limit], test_targets[:test_limit])
    validation = (images[val_idx], targets[val_idx]) if len(val_idx) else None
    return SplitPlan((images[train_idx], targets[train_idx]), validation, test,
                     len(train_idx), len(val_idx), len(test[0]))


def carve_stream(train, test, num_train, num_test, validation_fraction, seed, train_limit, test_limit):
    """A `SplitPlan` of tf.data streams of examples (`num_train`, `num_test` long): carve, then limits."""
    train_idx, val_idx = pipeline.carve_validation(num_train, validation_fraction, seed)
    validation = None
    if len(val_idx):
        train, validation = (pipeline.select(train, train_idx, num_train),
                             pipeline.select(train, val_idx, num_train))
    num_train = len(train_idx)
    if train_limit is not None:
        train, num_train = train.take(train_limit), min(num_train, train_limit)
    if test_limit is not None:
        test, num_test = test.take(test_limit), min(num_test, test_limit)
    return SplitPlan(train, validation, test, num_train, len(val_idx), num_test)


def input_shape(native_shape, image_size, name):
    """(H, W, C) of the images the pipelines yield: `image_size` if given, else the native size.

    Example:
    >>> input_shape((28, 28, 1), 32, "fashion_mnist"), input_shape((28, 28, 1), None, "fashion_mnist")
    ((32, 32, 1), (28, 28, 1))
    """
    size = pipeline.image_size_pair(image_size)
    if size is None:
        if None in tuple(native_shape):
            raise ValueError(
                f"Dataset {name!r} has images of varying size {tuple(native_shape)}: "
                "pass image_size (an int or (h, w))."
            )
        size = tuple(native_shape[:2])
    return tuple(int(d) for d in size) + (int(native_shape[-1]),)


def choose_augmentation(augment, default):
    """`augment` if it is a callable, None if it is false, else `default()` (the task's own)."""
    if callable(augment):
        return augment
    return default() if augment else None


def build_splits(info, plan, make_dataset, batch_size, image_size, augmentation, seed):
    """`DatasetSplits` of `plan`'s parts through the task's `make_dataset`; training alone augments."""
    common = dict(batch_size=batch_size, image_size=image_size, seed=seed)
    return DatasetSplits(
        train=make_dataset(plan.train, training=True, augmentation=augmentation,
                           num_examples=plan.num_train, **common),
        validation=None if plan.validation is None else make_dataset(
            plan.validation, num_examples=plan.num_validation, **common),
        test=make_dataset(plan.test, num_examples=plan.num_test, **common),
        info=info,
    )
