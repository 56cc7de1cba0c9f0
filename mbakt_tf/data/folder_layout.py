"""Where the splits of a folder dataset come from: `train/`, `test/`, `validation/` sub-folders, or carves.

A data folder either holds the split folders `train/` and, optionally,
`test/` and `validation/`, or it holds the data itself (class folders, or
`images/` + `masks/`), which is then the training data. A missing test split
is carved from the training files: `TEST_FRACTION` of each class (at least one
file), picked with a fixed seed (`FILE_ORDER_SEED`), not the run's seed, so
every seed of a comparison is tested on the same images. A missing validation
split is the usual seeded carve from train (`split_plan.carve_arrays`).

Files are then put in one fixed mixed order (the same for every run), so that
`train_limit` / `test_limit` take every class, not the first classes of a
sorted list.

Example:
>>> import numpy as np
>>> classes = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
>>> train, test = carve_test(classes, describe=str)
>>> len(train), len(test), classes[test].tolist()
(8, 2, [0, 1])
>>> plan = plan_indices(train, None, test, validation_fraction=0.25, seed=0, train_limit=None, test_limit=None)
>>> plan.counts
{'num_train': 6, 'num_validation': 2, 'num_test': 2}
"""

import os

import numpy as np

from mbakt_tf.data import split_plan
from mbakt_tf.data.image_files import visible_subfolders
from mbakt_tf.data.types import DataFolderError, DatasetNotFoundError

SPLIT_FOLDERS = ("train", "validation", "test")
TEST_FRACTION = 0.2
FILE_ORDER_SEED = 0


def data_folder(data_dir):
    """`data_dir` as a path, `~` expanded (a shell leaves `--data_dir=~/x` as it is).

    Raises:
        ValueError: `data_dir` is None.
    """
    if data_dir is None:
        raise ValueError("dataset='folder' needs data_dir, the folder of your images (--data_dir=PATH).")
    return os.path.expanduser(os.fspath(data_dir))


def split_folders(data_dir):
    """`{"train": folder, "validation": folder or None, "test": folder or None}` of a data folder.

    Raises:
        ValueError: `data_dir` is None.
        DatasetNotFoundError: `data_dir` is not a folder.
        DataFolderError: split folders without `train/`, or another folder beside them.
    """
    data_dir = data_folder(data_dir)
    if not os.path.isdir(data_dir):
        raise DatasetNotFoundError(
            f"No folder {data_dir!r} (data_dir of dataset='folder'): pass the folder that holds one "
            "sub-folder per class, or train/ and test/ (see docs/own_data.md)."
        )
    subfolders = visible_subfolders(data_dir)
    present = [split for split in SPLIT_FOLDERS if split in subfolders]
    if not present:
        return {"train": data_dir, "validation": None, "test": None}
    if "train" not in present:
        raise DataFolderError(
            f"{data_dir} has {' and '.join(s + '/' for s in present)} but no train/ folder: "
            "put the training data in train/ (test/ and validation/ are optional)."
        )
    others = [name for name in subfolders if name not in SPLIT_FOLDERS]
    if others:
        raise DataFolderError(
            f"{os.path.join(data_dir, others[0])}: a folder beside train/. A data folder with split folders "
            "holds only train/, test/ and validation/: rename it to one of them, or move it out."
        )
    return {split: os.path.join(data_dir, split) if split in present else None for split in SPLIT_FOLDERS}


def carve_test(groups, fraction=TEST_FRACTION, describe=str):
    """`(train indices, test indices)`: `round(fraction * n)` (at least 1) files of each group go to test.

    Args:
        groups: the group (class) index of every file.
        fraction: share of each group's files in the test split.
        describe: names a group in the error message (e.g. its folder).

    Raises:
        DataFolderError: a group of one file, which cannot give both splits one.
    """
    groups = np.asarray(groups)
    train, test = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        num_test = max(1, int(round(fraction * len(members))))
        if num_test >= len(members):
            raise DataFolderError(
                f"{describe(group)}: {len(members)} file(s); carving a test split ({fraction:.0%} of "
                "each class) needs at least 2. Add images, or give the test images a test/ folder."
            )
        order = np.random.default_rng([FILE_ORDER_SEED, int(group)]).permutation(members)
        test.append(order[:num_test])
        train.append(order[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def mixed(indices):
    """`indices` in the fixed mixed order every run uses."""
    indices = np.asarray(indices)
    return indices[np.random.default_rng(FILE_ORDER_SEED).permutation(len(indices))]


def plan_indices(train, validation, test, validation_fraction, seed, train_limit, test_limit):
    """A `split_plan.SplitPlan` of file indices: mixed order, then the validation carve (unless
    `validation` indices are given, e.g. from a validation/ folder) and the limits."""
    train, test = mixed(train), mixed(test)
    if validation is None:
        plan = split_plan.carve_arrays((train, train), (test, test), validation_fraction, seed,
                                       train_limit, test_limit)
        return split_plan.SplitPlan(plan.train[0], None if plan.validation is None else plan.validation[0],
                                    plan.test[0], **plan.counts)
    train, test, validation = train[:train_limit], test[:test_limit], mixed(validation)
    return split_plan.SplitPlan(train, validation, test, len(train), len(validation), len(test))
