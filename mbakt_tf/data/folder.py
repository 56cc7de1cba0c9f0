"""Image classification from a folder of your own images: one sub-folder per class.

The convention of `keras.utils.image_dataset_from_directory` and TFDS's
`ImageFolder`; `load_classification("folder", data_dir=PATH)` reads either

    PATH/<class>/*.jpg|jpeg|png|bmp|gif        (test split carved: 20% of each class)
or
    PATH/train/<class>/...    PATH/test/<class>/...    [PATH/validation/<class>/...]

Class names are the class folder names, sorted (Python string order, as Keras
sorts them): class i is the i-th name, and that list goes into the
`DatasetInfo`, so the exported `labels.txt` and TFLite Metadata carry them.
Files inside a class folder are read recursively; hidden files and files
without an image extension are ignored (and reported in `info.source`).
Grayscale images stay one-channel, anything else is read as RGB (see
`image_files`); `image_size` resizes, and without it all images must share
one size. The test carve and the file order do not depend on the run's seed
(see `folder_layout`); the validation carve does, as for every dataset.

Every file is decoded once before the pipelines are built, so bad input fails
here, with a `DataFolderError` naming the file or folder: an empty class
folder, an unreadable image (refused, not skipped: see `image_files`), a
single class, a test or validation class that train lacks, an image outside
the class folders.

Example:
>>> import os, tempfile
>>> import numpy as np
>>> root = tempfile.mkdtemp()
>>> for name in ("cat", "dog"):
...     os.makedirs(os.path.join(root, name))
...     for i in range(5):
...         tf.io.write_file(os.path.join(root, name, f"{i}.png"),
...                          tf.io.encode_png(np.full((8, 8, 3), 40 * i, np.uint8)))
>>> splits = load_folder_classification(root, batch_size=4)
>>> splits.info.class_names, splits.info.input_shape, splits.info.num_test
(['cat', 'dog'], (8, 8, 3), 2)
>>> splits.info.class_counts["test"]
{'cat': 1, 'dog': 1}
"""

import os

import numpy as np
import tensorflow as tf

from mbakt_tf.data import folder_layout, image_files, split_plan
from mbakt_tf.data.augment import build_augmentation
from mbakt_tf.data.pipeline import image_size_pair, make_dataset
from mbakt_tf.data.types import DataFolderError, DatasetInfo

AUTOTUNE = tf.data.AUTOTUNE


def read_class_folders(folder, class_names=None):
    """`(paths, labels, class names, ignored files)` of a class-per-folder tree.

    Args:
        folder: holds one sub-folder per class.
        class_names: the training split's classes, for a test or validation
            folder (its classes must be among them); None: this folder's
            sub-folders, sorted, are the classes.

    Raises:
        DataFolderError: no class folder, a single class, an empty class
            folder, an image outside the class folders, a class not in
            `class_names`.
    """
    loose = [entry.name for entry in os.scandir(folder) if entry.is_file() and image_files.is_image_file(entry.name)]
    if loose:
        raise DataFolderError(
            f"{os.path.join(folder, sorted(loose)[0])}: an image outside the class folders "
            f"({len(loose)} such file(s) in {folder}). Put every image in {folder}/<class name>/."
        )
    classes = image_files.visible_subfolders(folder)
    if class_names is None:
        if not classes:
            raise DataFolderError(
                f"{folder}: no class folders. Put the images of each class in a sub-folder named "
                f"after the class: {folder}/<class name>/*.jpg."
            )
        if len(classes) == 1:
            raise DataFolderError(
                f"{folder}: only one class folder ({classes[0]}/); classification needs at least two."
            )
        class_names = classes
    else:
        unknown = [name for name in classes if name not in class_names]
        if unknown:
            raise DataFolderError(
                f"{os.path.join(folder, unknown[0])}: class {unknown[0]!r} has no folder in the training "
                f"split (its classes: {', '.join(class_names)}). The model can only learn the classes "
                "it trains on: add training images of it, or remove this folder."
            )
    paths, labels, ignored = [], [], []
    for name in classes:
        class_folder = os.path.join(folder, name)
        images, others = image_files.list_images(class_folder)
        if not images:
            raise DataFolderError(
                f"{class_folder}: an empty class folder (no {', '.join(image_files.IMAGE_EXTENSIONS)} "
                "files). Add images of this class, or remove the folder."
            )
        paths += images
        labels += [class_names.index(name)] * len(images)
        ignored += others
    return paths, labels, list(class_names), ignored


def load_folder_classification(data_dir, batch_size=128, validation_fraction=0.1, image_size=None,
                               augment=True, seed=0, train_limit=None, test_limit=None,
                               test_fraction=folder_layout.TEST_FRACTION):
    """Loads a class-per-folder tree of images as batched train/validation/test pipelines.

    Args:
        data_dir: the data folder (see the module doc for its layouts).
        batch_size, validation_fraction, image_size, augment, seed,
        train_limit, test_limit: as for `load_classification`; a
            validation/ folder replaces the validation carve.
        test_fraction: without a test/ folder, the share of each class's
            images carved into the test split (fixed seed).

    Returns:
        `DatasetSplits` whose `info.class_names` are the folder names and
        `info.class_counts` the images per class in each split.

    Raises:
        DatasetNotFoundError: `data_dir` is not a folder.
        DataFolderError: bad input, named (see the module doc).
    """
    data_dir = folder_layout.data_folder(data_dir)
    folders = folder_layout.split_folders(data_dir)
    paths, labels, class_names, ignored = read_class_folders(folders["train"])
    ranges = {"train": np.arange(len(paths))}
    for split in ("validation", "test"):
        if folders[split] is not None:
            more_paths, more_labels, _, more_ignored = read_class_folders(folders[split], class_names)
            ranges[split] = np.arange(len(paths), len(paths) + len(more_paths))
            paths, labels, ignored = paths + more_paths, labels + more_labels, ignored + more_ignored
    shapes = image_files.scan_images(paths)
    channels = image_files.dataset_channels(shapes)
    size = image_files.check_sizes(paths, shapes, image_size_pair(image_size))
    paths, labels = np.array(paths), np.array(labels, np.int32)

    train = ranges["train"]
    if "test" in ranges:
        test = ranges["test"]
    else:
        train, test = folder_layout.carve_test(
            labels[train], test_fraction, describe=lambda g: os.path.join(folders["train"], class_names[g]))
    plan = folder_layout.plan_indices(train, ranges.get("validation"), test, validation_fraction, seed,
                                      train_limit, test_limit)
    parts = {"train": plan.train, "validation": plan.validation, "test": plan.test}
    counts = {split: {name: int(np.sum(labels[idx] == k)) for k, name in enumerate(class_names)}
              for split, idx in parts.items() if idx is not None}
    if folders["train"] == data_dir:
        layout = "one folder per class"
    else:
        layout = ", ".join(f"{split}/" for split in folder_layout.SPLIT_FOLDERS if split in ranges)
    if "test" not in ranges:
        layout += f"; test split: {test_fraction:.0%} of each class carved"
    source = f"image folder {os.path.abspath(data_dir)} ({layout}; {'grayscale' if channels == 1 else 'RGB'})"
    if ignored:
        source += f"; ignored {len(ignored)} file(s) that are not images, e.g. {ignored[0]}"
    input_shape = tuple(size) + (channels,)
    info = DatasetInfo(name=os.path.basename(os.path.abspath(data_dir)), num_classes=len(class_names),
                       input_shape=input_shape, class_names=class_names, source=source,
                       class_counts=counts, **plan.counts)

    def dataset(indices):
        ds = tf.data.Dataset.from_tensor_slices((paths[indices], labels[indices]))
        return ds.map(lambda path, label: (image_files.decode_image(path, channels, size), label),
                      num_parallel_calls=AUTOTUNE)

    plan = split_plan.SplitPlan(*(None if idx is None else dataset(idx) for idx in parts.values()),
                                **plan.counts)
    augmentation = split_plan.choose_augmentation(
        augment, lambda: build_augmentation(input_shape, flip=True, seed=seed))
    return split_plan.build_splits(info, plan, make_dataset, batch_size, size, augmentation, seed)
