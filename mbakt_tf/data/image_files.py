"""Image files on disk: find them, check that every one decodes, and decode them in tf.data.

The folder loaders (`folder`, `folder_segmentation`) read JPEG, PNG, BMP and
GIF files (the formats of `keras.utils.image_dataset_from_directory`, and of
`tf.io.decode_image`, which decodes them; a GIF gives its first frame). Every
file is decoded once by `scan` before a pipeline is built, so a corrupt file
is reported by name before any training, not as a tf.data error in epoch 3.

Unreadable files are refused, not skipped: skipping would silently change the
dataset (its counts, its split, the classes' balance), and one truncated file
usually means more of them; the error lists every unreadable file so they can
be replaced or deleted in one go.

Channels: a dataset whose images are all grayscale (with or without alpha)
stays one-channel; otherwise every image is decoded as RGB (grayscale ones
repeated over three channels). Alpha is dropped. GIF has no grayscale mode
(TensorFlow decodes every GIF as RGB): a GIF whose three channels are equal
counts as grayscale.

Example:
>>> import os, tempfile
>>> import numpy as np
>>> folder = tempfile.mkdtemp()
>>> path = os.path.join(folder, "a.png")
>>> tf.io.write_file(path, tf.io.encode_png(np.full((6, 4, 1), 7, np.uint8)))
>>> list_images(folder)[0] == [path], scan_images([path])
(True, [(6, 4, 1)])
>>> decode_image(path, channels=3, size=(2, 2)).numpy().shape
(2, 2, 3)
"""

import os

import numpy as np
import tensorflow as tf

from mbakt_tf.data.types import DataFolderError

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # as keras.utils.image_dataset_from_directory
MAX_LISTED = 10  # files named in one error message


def is_image_file(name):
    """True for a visible file name with an image extension (any case)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder, recursive=True):
    """`(image paths, other files)` under `folder`, each sorted; hidden files and folders left out.

    `recursive` walks sub-folders too (as Keras does inside a class folder).
    "Other files" are visible files without an image extension (notes,
    spreadsheets), which the loaders ignore and report.
    """
    images, others = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if name.startswith("."):
                continue
            (images if is_image_file(name) else others).append(os.path.join(root, name))
    return sorted(images), sorted(others)


def visible_subfolders(folder):
    """Names of the visible sub-folders of `folder`, sorted (Python string order, as Keras sorts classes)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def _decode_any(path):
    return tf.io.decode_image(tf.io.read_file(path), expand_animations=False)


def _decode_error(path):
    """The first line of TensorFlow's message for a file that does not decode."""
    try:
        _decode_any(path)
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error)).strip()
        if message.startswith("{{"):
            message = message.split("}}", 1)[-1].strip()
        return message.splitlines()[0].split(" [Op:")[0] if message else type(error).__name__
    return "decodes now (it changed while being read?)"


def unreadable_error(paths, what="image"):
    """A `DataFolderError` listing the files in `paths` that do not decode, each with TensorFlow's reason."""
    lines = [f"  {path}: {_decode_error(path)}" for path in paths[:MAX_LISTED]]
    if len(paths) > MAX_LISTED:
        lines.append(f"  ... and {len(paths) - MAX_LISTED} more")
    return DataFolderError(
        f"{len(paths)} {what} file(s) cannot be read (corrupt, truncated or not an image):\n"
        + "\n".join(lines) + "\nReplace or delete them and run again. Unreadable files are refused rather "
        "than skipped, so that the dataset (counts, splits, class balance) never changes silently."
    )


def scan(paths, measure=None, what="image"):
    """Decodes every file in `paths` once (in parallel); the list of `measure(image)` per file, in order.

    Args:
        paths: file paths.
        measure: a function of the decoded uint8 image (H, W, C) returning
            tensors (default: its shape as a tuple of ints).
        what: the kind of file, for the error message ("image", "mask").

    Raises:
        DataFolderError: naming every file that does not decode (see the module doc).
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return []
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).enumerate()
    ds = ds.map(lambda i, path: (i, (measure or tf.shape)(_decode_any(path))), num_parallel_calls=AUTOTUNE)
    found = {}
    for index, value in ds.ignore_errors().as_numpy_iterator():
        found[int(index)] = tuple(int(v) for v in value) if measure is None else value
    unreadable = [path for i, path in enumerate(paths) if i not in found]
    if unreadable:
        raise unreadable_error(unreadable, what)
    return [found[i] for i in range(len(paths))]


def _image_measure(image):
    """[height, width, channels, 1 if the channels are all equal else 0] of a decoded image."""
    same = tf.reduce_all(tf.equal(image, image[..., :1]))
    return tf.concat([tf.shape(image), [tf.cast(same, tf.int32)]], axis=0)


def scan_images(paths):
    """`scan` for images: (height, width, channels) per file, a GIF of equal channels counted as one channel."""
    measured = scan(paths, _image_measure)
    return [(int(h), int(w), 1 if str(path).lower().endswith(".gif") and same else int(c))
            for path, (h, w, c, same) in zip(paths, measured)]


def dataset_channels(shapes):
    """1 when every image is grayscale (1 channel, or 2 with alpha), else 3 (RGB)."""
    return 1 if all(shape[-1] in (1, 2) for shape in shapes) else 3


def check_sizes(paths, shapes, image_size):
    """(height, width) every image ends at: `image_size`, or the one size all images share.

    Raises:
        DataFolderError: without `image_size`, images of different sizes (two are named).
    """
    if image_size is not None:
        return tuple(int(s) for s in image_size)
    first = tuple(shapes[0][:2])
    for path, shape in zip(paths, shapes):
        if tuple(shape[:2]) != first:
            raise DataFolderError(
                f"Images differ in size: {paths[0]} is {first[0]}x{first[1]}, {path} is "
                f"{shape[0]}x{shape[1]} (height x width). Pass image_size (--image_size=N) to resize "
                "every image to N x N."
            )
    return first


def to_channels(image, channels):
    """A decoded uint8 image (H, W, 1..4) as (H, W, `channels`): alpha dropped, gray <-> RGB converted."""
    count = tf.shape(image)[-1]
    image = image[..., : count - 1 + count % 2]  # 2 -> 1 and 4 -> 3: drop alpha
    if channels == 1:
        image = tf.cond(tf.shape(image)[-1] == 3, lambda: _luma(image), lambda: image)
    else:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    return tf.ensure_shape(image, [None, None, channels])


def _luma(rgb):
    """ITU-R BT.601 luma of uint8 RGB, rounded: equal channels give their value back exactly."""
    weights = tf.constant([0.299, 0.587, 0.114])
    luma = tf.reduce_sum(tf.cast(rgb, tf.float32) * weights, axis=-1, keepdims=True)
    return tf.cast(tf.round(tf.clip_by_value(luma, 0.0, 255.0)), tf.uint8)


def resize_image(image, size):
    """uint8 (H, W, C) to `size` (bilinear, antialiased, rounded back to uint8); unchanged when it fits."""
    def resized():
        out = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    out = tf.cond(same, lambda: image, resized)
    return tf.ensure_shape(out, tuple(size) + (image.shape[-1],))


def decode_image(path, channels, size):
    """The image file at `path` as uint8 (size[0], size[1], `channels`), for a tf.data `map`."""
    return resize_image(to_channels(_decode_any(path), channels), size)
