"""Any TensorFlow Datasets (TFDS) image-classification dataset, by name.

`load_tfds` builds the TFDS builder, prepares the data if needed and possible,
and returns the train and test splits as `(image, label)` tf.data datasets in
a fixed order, with what the rest of the package needs from the builder's
info: number of classes, class names, image shape (grayscale stays 1 channel).

A dataset that is not prepared in `data_dir` is downloaded and prepared when
`download=True`; when that fails (no network), the error says where it looked
and what to do. TFDS is imported lazily: importing `mbakt_tf.data` does not
load it.

Example:
>>> import tensorflow_datasets as tfds
>>> with tfds.testing.mock_data(num_examples=8):  # offline: fake examples, real metadata
...     source = load_tfds("cifar10")
>>> source.num_classes, source.image_shape, source.num_train
(10, (32, 32, 3), 8)
"""

import dataclasses

from mbakt_tf.data.types import DatasetNotFoundError


@dataclasses.dataclass
class TFDSSource:
    """Train and test splits of a TFDS dataset, unbatched `(image uint8 HxWxC, label int64)`.

    `num_train`/`num_test` are exact counts; `image_shape` has `None` for
    sizes that vary between images.
    """

    name: str
    train: object
    test: object
    num_train: int
    num_test: int
    num_classes: int
    class_names: list
    image_shape: tuple
    test_split: str
    data_dir: str


def get_builder(name, data_dir=None):
    """`tfds.builder(name, data_dir=data_dir)`, with an unknown name as a plain `ValueError`."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
        from mbakt_tf.data import available_datasets

        raise ValueError(
            f"Unknown dataset {name!r}. Local datasets: {', '.join(available_datasets())}. "
            "Any TensorFlow Datasets (TFDS) image-classification name is accepted too "
            f"(e.g. 'cifar10', 'mnist', 'oxford_iiit_pet'), but TFDS does not know {name!r}."
        ) from e


def load_tfds(name, data_dir=None, download=True):
    """Loads the train and test splits of the TFDS image-classification dataset `name`.

    Args:
        name: a TFDS name, optionally with config/version ("cifar10",
            "mnist:3.*.*").
        data_dir: TFDS data directory; `None` uses TFDS's default
            (`$TFDS_DATA_DIR` or ~/tensorflow_datasets).
        download: download and prepare the dataset if it is not prepared in
            `data_dir`.

    Returns:
        A `TFDSSource`. The test split is "test", or "validation" for
        datasets without a test split (e.g. imagenette).

    Raises:
        ValueError: unknown name, or not an image-classification dataset
            (supervised keys must be an Image and a ClassLabel feature).
        DatasetNotFoundError: the data is not prepared and could not be
            downloaded.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = get_builder(name, data_dir)
    image_key, label_key = _check_image_classification(builder, name)
    if builder.is_prepared():
        reason = "it is marked prepared but its files could not be read"
    elif not download:
        reason = "it is not prepared there and download=False"
    else:
        try:
            builder.download_and_prepare()
            reason = "download_and_prepare ran but did not produce it"
        except Exception as e:  # noqa: BLE001 - any download failure ends the same way
            reason = f"it is not prepared there and downloading it failed ({type(e).__name__}: {e})"
    # Not prepared still falls through to as_dataset: that is what fails for
    # missing data, and what `tfds.testing.mock_data` replaces with fake data.
    splits = builder.info.splits
    test_split = "test"
    if splits and "test" not in splits:
        if "validation" not in splits:
            raise ValueError(
                f"TFDS dataset {name!r} has neither a 'test' nor a 'validation' split "
                f"(splits: {', '.join(splits)})."
            )
        test_split = "validation"
    try:
        train = builder.as_dataset(split="train", as_supervised=True, shuffle_files=False)
        test = builder.as_dataset(split=test_split, as_supervised=True, shuffle_files=False)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r}: no usable data in {builder.data_dir} (data_dir="
            f"{data_dir or tfds.core.constants.DATA_DIR!r}): {reason}.\n"
            "Either run on a machine with internet access (load with download=True and TFDS "
            "downloads and prepares it), or pass data_dir=<a TFDS data directory where it was "
            f"prepared>, e.g. a copy of ~/tensorflow_datasets/{builder.name} from a machine that "
            f"ran tfds.load({builder.name!r})."
            + (
                "\nOffline, Fashion-MNIST is available from local IDX files: name='fashion_mnist'."
                if builder.name == "fashion_mnist"
                else ""
            )
        ) from e
    label = builder.info.features[label_key]
    return TFDSSource(
        name=name,
        train=train,
        test=test,
        num_train=_num_examples(splits, "train", train),
        num_test=_num_examples(splits, test_split, test),
        num_classes=int(label.num_classes),
        class_names=list(label.names),
        image_shape=tuple(builder.info.features[image_key].shape),
        test_split=test_split,
        data_dir=builder.data_dir,
    )


def _check_image_classification(builder, name):
    import tensorflow_datasets as tfds

    keys = builder.info.supervised_keys
    features = builder.info.features
    if (
        not keys
        or len(keys) != 2
        or not all(isinstance(k, str) for k in keys)
        or not isinstance(features[keys[0]], tfds.features.Image)
        or not isinstance(features[keys[1]], tfds.features.ClassLabel)
    ):
        raise ValueError(
            f"TFDS dataset {name!r} is not an image-classification dataset: its supervised "
            f"keys {keys} are not (Image, ClassLabel) features."
        )
    return keys


def _num_examples(splits, split, ds):
    """Exact example count: from the split info, else the dataset's known cardinality."""
    if splits and split in splits:
        return int(splits[split].num_examples)
    import tensorflow as tf

    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
