"""Image classification datasets as ready tf.data pipelines: Fashion-MNIST, synthetic, a folder, or TFDS.

Every split yields `(images float32 (B, H, W, C) in [0, 255], labels int32 (B,))`.

Example:
>>> splits = load_classification(
...     "synthetic", batch_size=32, synthetic_kwargs=dict(num_train=320, num_test=64))
>>> splits.info.input_shape, splits.info.num_train, splits.info.num_validation
((28, 28, 1), 288, 32)
"""

import inspect
import os

from mbakt_tf.data import fashion_mnist, folder, split_plan, synthetic, tfds_source
from mbakt_tf.data.augment import build_augmentation
from mbakt_tf.data.pipeline import make_dataset, validate_arrays
from mbakt_tf.data.types import DatasetInfo

LOCAL_DATASETS = ("fashion_mnist", "synthetic", "folder")

# Horizontal flips change the class of digits and characters; natural images and clothes keep it.
_NO_FLIP = {"synthetic", "mnist", "emnist", "kmnist", "svhn_cropped", "binary_alpha_digits",
            "omniglot", "cmaterdb"}


def available_datasets():
    """Names this package loads locally, without TFDS.

    `load_classification` also accepts any TFDS image-classification name
    (e.g. "cifar10"), which needs internet or a prepared TFDS `data_dir`.

    Example:
    >>> available_datasets()
    ['fashion_mnist', 'synthetic', 'folder']
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
        name: "fashion_mnist", "synthetic", "folder", or a TFDS name (see
            `mbakt_tf.data`).
        data_dir: fashion_mnist: the directory holding its four IDX files
            (None searches the default locations); "folder": your images,
            one sub-folder per class (see `folder`); TFDS: the TFDS data
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
            that do not form a classification dataset; for "folder", a
            `DataFolderError` naming the file or folder (see `folder`).

    Example:
    >>> splits = load_classification("fashion_mnist", batch_size=128)  # doctest: +SKIP
    >>> splits.info.num_train, splits.info.num_validation, splits.info.num_test  # doctest: +SKIP
    (54000, 6000, 10000)
    """
    split_plan.check_arguments(name, train_limit, test_limit, synthetic_kwargs)
    common = dict(batch_size=batch_size, validation_fraction=validation_fraction,
                  image_size=image_size, augment=augment, seed=seed,
                  train_limit=train_limit, test_limit=test_limit)
    if name == "fashion_mnist":
        train, test = fashion_mnist.load_fashion_mnist(data_dir)
        source = "IDX files in " + os.path.dirname(fashion_mnist.find_files(data_dir)["train_images"])
        return _from_arrays(name, train, test, fashion_mnist.CLASS_NAMES, source, **common)
    if name == "folder":
        return folder.load_folder_classification(data_dir, **common)
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
    base_name = dataset_name.split("/")[0].split(":")[0]
    return split_plan.choose_augmentation(
        augment, lambda: build_augmentation(input_shape, flip=base_name not in _NO_FLIP, seed=seed))


def _splits(info, plan, batch_size, image_size, augment, seed):
    augmentation = _augmentation(augment, info.name, info.input_shape, seed)
    return split_plan.build_splits(info, plan, make_dataset, batch_size, image_size, augmentation, seed)


def _from_arrays(name, train, test, class_names, source, batch_size, validation_fraction,
                 image_size, augment, seed, train_limit, test_limit):
    num_classes = len(class_names)
    train = validate_arrays(*train, num_classes=num_classes, name=f"{name} train")
    test = validate_arrays(*test, num_classes=num_classes, name=f"{name} test")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"{name}: train images {train[0].shape[1:]} and test images "
            f"{test[0].shape[1:]} differ in shape."
        )
    plan = split_plan.carve_arrays(train, test, validation_fraction, seed, train_limit, test_limit)
    info = DatasetInfo(name=name, num_classes=num_classes, class_names=list(class_names),
                       input_shape=split_plan.input_shape(train[0].shape[1:], image_size, name),
                       source=source, **plan.counts)
    return _splits(info, plan, batch_size, image_size, augment, seed)


def _from_tfds(name, data_dir, download, batch_size, validation_fraction, image_size, augment,
               seed, train_limit, test_limit):
    source = tfds_source.load_tfds(name, data_dir=data_dir, download=download)
    input_shape = split_plan.input_shape(source.image_shape, image_size, name)
    plan = split_plan.carve_stream(source.train, source.test, source.num_train, source.num_test,
                                   validation_fraction, seed, train_limit, test_limit)
    info = DatasetInfo(name=name, num_classes=source.num_classes, input_shape=input_shape,
                       class_names=source.class_names,
                       source=f"TFDS {name} (splits train, {source.test_split}) in {source.data_dir}",
                       **plan.counts)
    return _splits(info, plan, batch_size, image_size, augment, seed)
