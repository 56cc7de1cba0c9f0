"""Fashion-MNIST from its four IDX files on disk, found without network access.

The files keep their upstream names (`train-images-idx3-ubyte.gz`, ...); an
uncompressed copy without `.gz` is accepted too. With `data_dir=None` they
are looked for in `DEFAULT_SEARCH_DIRS`: where Debian's `dataset-fashion-mnist`
package installs them, then the cache `keras.datasets.fashion_mnist` fills.

Example:
>>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()  # doctest: +SKIP
>>> x_train.shape, x_train.dtype, CLASS_NAMES[y_train[0]]  # doctest: +SKIP
((60000, 28, 28, 1), dtype('uint8'), 'Ankle boot')
"""

import os

from mbakt_tf.data.types import DatasetNotFoundError
from mbakt_tf.data.idx import read_idx

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28, 1)

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist
DEFAULT_SEARCH_DIRS = (
    DEBIAN_DIR,
    os.path.join(os.environ.get("KERAS_HOME", "~/.keras"), "datasets", "fashion-mnist"),
)

DOWNLOAD_URL = "https://github.com/zalandoresearch/fashion-mnist"


def search_dirs(data_dir=None):
    """Directories `find_files` looks in: `[data_dir]` if given, else `DEFAULT_SEARCH_DIRS`.

    An explicit `data_dir` is the only place searched, so a mistyped path is
    an error instead of a silent fall-back to another copy.
    """
    dirs = [data_dir] if data_dir is not None else list(DEFAULT_SEARCH_DIRS)
    return [os.path.abspath(os.path.expanduser(os.fspath(d))) for d in dirs]


def find_files(data_dir=None):
    """Paths of the four IDX files, all from the first searched directory that holds them all.

    Returns a dict with the keys of `FILES`.

    Raises:
        DatasetNotFoundError: no searched directory holds all four files. The
            message lists every directory searched, what each one lacks, and
            how to get the data.
    """
    problems = []
    for directory in search_dirs(data_dir):
        found, missing = {}, []
        for key, filename in FILES.items():
            candidates = [os.path.join(directory, filename), os.path.join(directory, filename[:-3])]
            path = next((c for c in candidates if os.path.isfile(c)), None)
            if path is None:
                missing.append(filename)
            else:
                found[key] = path
        if not missing:
            return found
        if not os.path.isdir(directory):
            problems.append(f"  {directory}  (no such directory)")
        else:
            problems.append(f"  {directory}  (missing: {', '.join(missing)})")
    raise DatasetNotFoundError(
        "Fashion-MNIST IDX files not found. Searched:\n"
        + "\n".join(problems)
        + "\nTo get the data, do one of:\n"
        "  * apt-get install dataset-fashion-mnist   (Debian/Ubuntu; installs them in "
        f"{DEBIAN_DIR})\n"
        f"  * download the four files {', '.join(FILES.values())} from {DOWNLOAD_URL} "
        "(data/fashion) into one of the directories above\n"
        "  * pass data_dir=<directory that holds the four files>\n"
        "  * on a machine with internet, use the TFDS copy: name='tfds:fashion_mnist'"
    )


def load_fashion_mnist(data_dir=None):
    """Loads Fashion-MNIST as numpy arrays.

    Args:
        data_dir: directory holding the four IDX files; `None` searches
            `DEFAULT_SEARCH_DIRS`.

    Returns:
        `((train_images, train_labels), (test_images, test_labels))`: images
        uint8 of shape (N, 28, 28, 1), labels uint8 of shape (N,).

    Raises:
        DatasetNotFoundError: the files are not there (see `find_files`).
        ValueError: a file is corrupt, or images and labels do not fit together.

    Example:
    >>> (x_train, y_train), _ = load_fashion_mnist("/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
    >>> x_train.shape, y_train.shape  # doctest: +SKIP
    ((60000, 28, 28, 1), (60000,))
    """
    paths = find_files(data_dir)
    splits = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"])
        labels = read_idx(paths[f"{split}_labels"])
        if images.ndim != 3:
            raise ValueError(
                f"{paths[f'{split}_images']}: expected images of rank 3 (N, H, W), "
                f"got shape {images.shape}."
            )
        if labels.ndim != 1:
            raise ValueError(
                f"{paths[f'{split}_labels']}: expected labels of rank 1 (N,), got shape {labels.shape}."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {split}: {len(images)} images in {paths[f'{split}_images']} but "
                f"{len(labels)} labels in {paths[f'{split}_labels']}."
            )
        splits.append((images[..., None], labels))
    return tuple(splits)
