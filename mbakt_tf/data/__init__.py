"""Image classification datasets as ready tf.data pipelines: local files, synthetic, or TFDS.

`load_classification(name, ...)` is the one entry point. Names:

* "fashion_mnist": the four Fashion-MNIST IDX files from `data_dir`, or from
  /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`)
  or ~/.keras/datasets/fashion-mnist. Works offline.
* "synthetic": generated, learnable, deterministic (see `synthetic`).
* any TensorFlow Datasets image-classification name ("cifar10", "mnist",
  "oxford_iiit_pet", ...), with `data_dir` as the TFDS data directory;
  "tfds:NAME" forces TFDS for a name that is also local ("tfds:fashion_mnist").

Every split yields `(images float32 (B, H, W, C) in [0, 255], labels int32 (B,))`.

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

import dataclasses
import inspect
import os


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
class DatasetSplits:
    """`train`, `validation` (or None) and `test` tf.data pipelines and their `info`."""

    train: object
    validation: object
    test: object
    info: DatasetInfo


# Submodules import the two classes above from this package, so they come after them.
from mbakt_tf.data import augment, fashion_mnist, idx, pipeline, synthetic, tfds_source  # noqa: E402
from mbakt_tf.data.augment import build_augmentation  # noqa: E402
from mbakt_tf.data.idx import read_idx, write_idx  # noqa: E402
from mbakt_tf.data.pipeline import make_dataset, validate_arrays  # noqa: E402
from mbakt_tf.data.segmentation import SegmentationInfo, load_segmentation  # noqa: E402

LOCAL_DATASETS = ("fashion_mnist", "synthetic")

# Horizontal flips change the class of digits and characters; natural images and clothes keep it.
_NO_FLIP = {"synthetic", "mnist", "emnist", "kmnist", "svhn_cropped", "binary_alpha_digits",
            "omniglot", "cmaterdb"}


def available_datasets():
    """Names this package loads locally, without TFDS.

    `load_classification` also accepts any TFDS image-classification name
    (e.g. "cifar10"), which needs internet or a prepared TFDS `data_dir`.

    Example:
    >>> available_datasets()
    ['fashion_mnist', 'synthetic']
    """
    return list(LOCAL_DATASETS)


def load_classification(
    name,
    data_dir=None,
    batch_size=128,
    validation_fraction=0.1,
    image_size=None,
    augment=True,
    seed=0,
    train_limit=None,
    test_limit=None,
    synthetic_kwargs=None,
    download=True,
):
    """Loads an image classification dataset as batched train/validation/test pipelines.

    Args:
        name: "fashion_mnist", "synthetic", or a TFDS name (see module doc).
        data_dir: fashion_mnist: the directory holding its four IDX files
            (None searches the default locations); TFDS: the TFDS data
            directory. Ignored by "synthetic".
        batch_size: global batch size of every split.
        validation_fraction: share of the train split held out as validation,
            picked at random with `seed` (same seed, same split); 0 gives
            `validation=None`.
        image_size: None keeps the native size; an int or (h, w) resizes
            every split (e.g. 32 for keras-cv backbones on 28 px images).
        augment: True: pad-and-crop translation, plus horizontal flip where
            it keeps the class (not digits, not "synthetic"); False: none; or
            a callable on float32 image batches. Training split only.
        seed: seeds the validation carve, shuffling and augmentation.
        train_limit: use only the first N training examples (after the carve).
        test_limit: use only the first N test examples.
        synthetic_kwargs: for "synthetic": keyword arguments of
            `synthetic.make_synthetic_splits` (num_classes, image_shape,
            num_train, num_test, seed, noise_std).
        download: TFDS only: download and prepare missing data if the
            network answers.

    Returns:
        `DatasetSplits`: `train` shuffled each epoch, augmented, full batches
        only; `validation` and `test` in order, unaugmented, last batch
        partial; `info` a `DatasetInfo`.

    Raises:
        DatasetNotFoundError: the data is not on this machine and cannot be
            downloaded (the message lists where it looked and how to get it).
        ValueError: unknown name, bad arguments, corrupt files, or arrays
            that do not form a classification dataset.

    Example:
    >>> splits = load_classification("fashion_mnist", batch_size=128)  # doctest: +SKIP
    >>> splits.info.num_train, splits.info.num_validation, splits.info.num_test  # doctest: +SKIP
    (54000, 6000, 10000)
    """
    for arg, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{arg} must be None or >= 1, got {value}.")
    if synthetic_kwargs is not None and name != "synthetic":
        raise ValueError(f"synthetic_kwargs is only for name='synthetic', not {name!r}.")
    common = dict(batch_size=batch_size, validation_fraction=validation_fraction,
                  image_size=image_size, augment=augment, seed=seed,
                  train_limit=train_limit, test_limit=test_limit)
    if name == "fashion_mnist":
        train, test = fashion_mnist.load_fashion_mnist(data_dir)
        source = "IDX files in " + os.path.dirname(fashion_mnist.find_files(data_dir)["train_images"])
        return _from_arrays(name, train, test, fashion_mnist.CLASS_NAMES, source, **common)
    if name == "synthetic":
        kwargs = {"seed": seed, **(synthetic_kwargs or {})}
        accepted = inspect.signature(synthetic.make_synthetic_splits).parameters
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"Unknown synthetic_kwargs {unknown}; accepted: {', '.join(accepted)}."
            )
        train, test = synthetic.make_synthetic_splits(**kwargs)
        num_classes = kwargs.get("num_classes", synthetic.DEFAULTS["num_classes"])
        class_names = [f"class_{i}" for i in range(num_classes)]
        return _from_arrays(name, train, test, class_names, "synthetic", **common)
    tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name
    return _from_tfds(tfds_name, data_dir, download, **common)


def _augmentation(augment, dataset_name, input_shape, seed):
    if callable(augment):
        return augment
    if not augment:
        return None
    base_name = dataset_name.split("/")[0].split(":")[0]
    return build_augmentation(input_shape, flip=base_name not in _NO_FLIP, seed=seed)


def _input_shape(native_shape, image_size, name):
    size = pipeline.image_size_pair(image_size)
    if size is None:
        if None in tuple(native_shape):
            raise ValueError(
                f"Dataset {name!r} has images of varying size {tuple(native_shape)}: "
                "pass image_size (an int or (h, w))."
            )
        size = tuple(native_shape[:2])
    return tuple(int(d) for d in size) + (int(native_shape[-1]),)


def _build_splits(info_kwargs, train, validation, test, counts, batch_size, image_size,
                  augment, seed):
    """Pipelines for the three sources; `counts` = (num_train, num_validation, num_test)."""
    info = DatasetInfo(num_train=counts[0], num_validation=counts[1], num_test=counts[2],
                       **info_kwargs)
    common = dict(batch_size=batch_size, image_size=image_size, seed=seed)
    augmentation = _augmentation(augment, info.name, info.input_shape, seed)
    return DatasetSplits(
        train=make_dataset(train, training=True, augmentation=augmentation,
                           num_examples=counts[0], **common),
        validation=None if validation is None else make_dataset(
            validation, num_examples=counts[1], **common),
        test=make_dataset(test, num_examples=counts[2], **common),
        info=info,
    )


def _from_arrays(name, train, test, class_names, source, batch_size, validation_fraction,
                 image_size, augment, seed, train_limit, test_limit):
    num_classes = len(class_names)
    images, labels = validate_arrays(*train, num_classes=num_classes, name=f"{name} train")
    test_images, test_labels = validate_arrays(*test, num_classes=num_classes, name=f"{name} test")
    if images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"{name}: train images {images.shape[1:]} and test images "
            f"{test_images.shape[1:]} differ in shape."
        )
    train_idx, val_idx = pipeline.carve_validation(len(images), validation_fraction, seed)
    train_idx = train_idx[:train_limit]
    test_set = (test_images[:test_limit], test_labels[:test_limit])
    validation = (images[val_idx], labels[val_idx]) if len(val_idx) else None
    info_kwargs = dict(name=name, num_classes=num_classes, class_names=list(class_names),
                       input_shape=_input_shape(images.shape[1:], image_size, name), source=source)
    counts = (len(train_idx), len(val_idx), len(test_set[0]))
    return _build_splits(info_kwargs, (images[train_idx], labels[train_idx]), validation,
                         test_set, counts, batch_size, image_size, augment, seed)


def _from_tfds(name, data_dir, download, batch_size, validation_fraction, image_size, augment,
               seed, train_limit, test_limit):
    source = tfds_source.load_tfds(name, data_dir=data_dir, download=download)
    input_shape = _input_shape(source.image_shape, image_size, name)
    train_idx, val_idx = pipeline.carve_validation(source.num_train, validation_fraction, seed)
    train, validation = source.train, None
    if len(val_idx):
        train = pipeline.select(source.train, train_idx, source.num_train)
        validation = pipeline.select(source.train, val_idx, source.num_train)
    num_train, num_test, test = len(train_idx), source.num_test, source.test
    if train_limit is not None:
        train, num_train = train.take(train_limit), min(num_train, train_limit)
    if test_limit is not None:
        test, num_test = test.take(test_limit), min(num_test, test_limit)
    info_kwargs = dict(name=name, num_classes=source.num_classes, input_shape=input_shape,
                       class_names=source.class_names,
                       source=f"TFDS {name} (splits train, {source.test_split}) in {source.data_dir}")
    return _build_splits(info_kwargs, train, validation, test,
                         (num_train, len(val_idx), num_test), batch_size, image_size, augment,
                         seed)


__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "augment",
    "available_datasets",
    "build_augmentation",
    "fashion_mnist",
    "idx",
    "load_classification",
    "make_dataset",
    "pipeline",
    "read_idx",
    "synthetic",
    "tfds_source",
    "validate_arrays",
    "write_idx",
]
