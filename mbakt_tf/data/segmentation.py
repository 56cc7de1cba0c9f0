"""Semantic segmentation datasets as ready tf.data pipelines: Fashion-MNIST, shapes, a folder, TFDS pets.

`load_segmentation(name, ...)` mirrors `load_classification`: the same splits
(seeded validation carve from train, limits, batch size, image size), the same
`DatasetSplits`, and a `SegmentationInfo` (a `DatasetInfo` plus
`ignore_label`). Every split yields `(images float32 (B, H, W, C) in [0, 255],
masks int32 (B, H, W))`; class 0 is the background everywhere. Names:

* "fashion_mnist": Fashion-MNIST from its local IDX files (see
  `fashion_mnist`), turned into a segmentation task: **a pixel whose value is
  above `threshold` (default `FASHION_MNIST_THRESHOLD` = 10 of 255) belongs to
  the item and gets the item's class + 1; every other pixel is background
  (class 0)**. 11 classes; no ignored pixels. Works offline.
* "synthetic": generated shapes (see `make_shapes`), deterministic, for tests.
* "folder": your images and masks, `data_dir/images/` + `data_dir/masks/` (PNG
  class indices), or `train/` and `test/` split folders of those (see
  `folder_segmentation`); `num_classes` and `ignore_label` apply to it alone.
* "oxford_iiit_pet": TFDS Oxford-IIIT Pet trimaps (needs internet or a
  prepared TFDS `data_dir`): class 0 background, 1 pet; the trimap's
  "border / not classified" pixels get `IGNORE_LABEL` (255). Images vary in
  size: pass `image_size`.

Joint augmentation (training split only): the same random translation
(pad-and-crop, pad fill = black pixels labelled background, or the ignore label
where the dataset has one) and horizontal flip for an image and its mask.

Example:
>>> from mbakt_tf.data import segmentation
>>> splits = segmentation.load_segmentation(
...     "synthetic", batch_size=8, synthetic_kwargs=dict(num_train=40, num_test=16))
>>> splits.info.num_classes, splits.info.input_shape, splits.info.class_names[0]
(4, (32, 32, 1), 'background')
>>> images, masks = next(iter(splits.train))
>>> tuple(images.shape), tuple(masks.shape), masks.dtype.name
((8, 32, 32, 1), (8, 32, 32), 'int32')
"""

import os
import zlib

import numpy as np
import tensorflow as tf

from mbakt_tf.data import augment, pipeline, split_plan
from mbakt_tf.data.types import DatasetNotFoundError, SegmentationInfo

AUTOTUNE = tf.data.AUTOTUNE
BACKGROUND = 0
IGNORE_LABEL = 255
FASHION_MNIST_THRESHOLD = 10
SHAPES = ("square", "disc", "triangle", "ring", "cross")
PETS_CLASS_NAMES = ["background", "pet"]
SEGMENTATION_DATASETS = ("fashion_mnist", "synthetic", "folder", "oxford_iiit_pet")


def available_segmentation_datasets():
    """Names `load_segmentation` accepts.

    Example:
    >>> available_segmentation_datasets()
    ['fashion_mnist', 'synthetic', 'folder', 'oxford_iiit_pet']
    """
    return list(SEGMENTATION_DATASETS)


# ----------------------------------------------------------------------- masks


def fashion_mnist_masks(images, labels, threshold=FASHION_MNIST_THRESHOLD):
    """Per-pixel masks of Fashion-MNIST: item pixels (value > `threshold`) get label + 1, others 0.

    Example:
    >>> images = np.array([[[0, 11], [10, 255]]], np.uint8)[..., None]
    >>> fashion_mnist_masks(images, np.array([3]))[0].tolist()
    [[0, 4], [0, 4]]
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if not 0 <= threshold < 255:
        raise ValueError(f"threshold must be in [0, 255), got {threshold}.")
    item = images[..., 0] > threshold
    return np.where(item, labels.astype(np.uint8)[:, None, None] + 1, BACKGROUND).astype(np.uint8)


def pets_mask(trimap):
    """Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) -> 1 pet, 0 background, 255 ignore."""
    trimap = tf.cast(trimap, tf.int32)
    return tf.where(trimap == 1, 1, tf.where(trimap == 2, BACKGROUND, IGNORE_LABEL))


def _shape_mask(kind, height, width, cy, cx, size):
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    dy, dx, r = y - cy, x - cx, size / 2
    if kind == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == "disc":
        return dy**2 + dx**2 <= r**2
    if kind == "triangle":  # apex up
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "ring":
        return (dy**2 + dx**2 <= r**2) & (dy**2 + dx**2 >= (0.55 * r) ** 2)
    return ((np.abs(dy) <= r) & (np.abs(dx) <= r / 3)) | ((np.abs(dx) <= r) & (np.abs(dy) <= r / 3))


def _border(mask):
    """Pixels of `mask` (bool H, W) within 1 px of its boundary, inside or out."""
    padded = np.pad(mask, 1, mode="edge")
    shifted = [padded[1 + dy: 1 + dy + mask.shape[0], 1 + dx: 1 + dx + mask.shape[1]]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.any(shifted, axis=0) & ~np.all(shifted, axis=0)


def make_shapes(num_classes=4, image_shape=(32, 32, 1), num_examples=256, seed=0, split="train",
                noise_std=20.0, ignore_border=False):
    """Images of one or two filled shapes on a noisy background, and their masks.

    Class k >= 1 is the shape `SHAPES[k - 1]` (square, disc, triangle, ring,
    cross); 0 is the background. Shapes have a random size (1/4 to 1/2 of the
    image), position and brightness, so only their form tells the class.
    With `ignore_border`, pixels within 1 px of a shape's outline get
    `IGNORE_LABEL` (like a trimap).

    Returns:
        `(images float32 (N, H, W, C) in [0, 255], masks uint8 (N, H, W))`.

    Example:
    >>> images, masks = make_shapes(3, (16, 16, 1), num_examples=2)
    >>> images.shape, masks.shape, sorted(set(np.unique(masks)) - {0}) != []
    ((2, 16, 16, 1), (2, 16, 16), True)
    """
    if not 2 <= num_classes <= len(SHAPES) + 1:
        raise ValueError(f"num_classes must be in [2, {len(SHAPES) + 1}], got {num_classes}.")
    height, width, channels = (int(d) for d in image_shape)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    images = rng.normal(40.0, noise_std, size=(num_examples, height, width, channels))
    masks = np.zeros((num_examples, height, width), np.uint8)
    ignore = np.zeros((num_examples, height, width), bool)
    for n in range(num_examples):
        for _ in range(rng.integers(1, 3)):
            label = int(rng.integers(1, num_classes))
            size = rng.uniform(0.25, 0.5) * min(height, width)
            cy, cx = rng.uniform(size / 2, height - size / 2), rng.uniform(size / 2, width - size / 2)
            shape = _shape_mask(SHAPES[label - 1], height, width, cy, cx, size)
            brightness = rng.uniform(140.0, 230.0, size=channels)
            images[n][shape] = brightness + rng.normal(0.0, noise_std, size=(int(shape.sum()), channels))
            masks[n][shape] = label
            if ignore_border:
                ignore[n] |= _border(shape)
    masks[ignore] = IGNORE_LABEL
    return np.clip(images, 0.0, 255.0).astype(np.float32), masks


def make_shapes_splits(num_classes=4, image_shape=(32, 32, 1), num_train=1024, num_test=256, seed=0,
                       noise_std=20.0, ignore_border=False):
    """Train and test splits of `make_shapes` (same classes, different examples)."""
    common = dict(num_classes=num_classes, image_shape=image_shape, seed=seed, noise_std=noise_std,
                  ignore_border=ignore_border)
    return (make_shapes(num_examples=num_train, split="train", **common),
            make_shapes(num_examples=num_test, split="test", **common))


# ---------------------------------------------------------------- augmentation


def _translate(x, dy, dx, pad, fill):
    """Shifts each map of `x` (B, H, W, C) by (dy[b], dx[b]) pixels, filling with `fill`."""
    height, width = x.shape[1], x.shape[2]
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=fill)
    rows = pad - dy[:, None] + tf.range(height)[None]
    cols = pad - dx[:, None] + tf.range(width)[None]
    x = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


class JointAugmentation:
    """Random translation (pad-and-crop) and horizontal flip, the same for an image and its mask.

    Call on batches: `images, masks = augmentation(images, masks)` with images
    (B, H, W, C) float32 and masks (B, H, W) int32. Shifted-in pixels are 0 in
    the image and `mask_fill` in the mask. Randomness comes from a seeded
    `tf.random.Generator`: use it in a sequential tf.data `map`.

    Example:
    >>> augmentation = JointAugmentation((8, 8, 1), pad=2, flip=True, seed=0)
    >>> images = tf.reshape(tf.range(64, dtype=tf.float32), (1, 8, 8, 1))
    >>> out_images, out_masks = augmentation(images, tf.cast(images[..., 0], tf.int32))
    >>> bool(tf.reduce_all(tf.cast(out_images[..., 0], tf.int32) == out_masks))
    True
    """

    def __init__(self, image_shape, pad=None, flip=True, seed=0, mask_fill=BACKGROUND):
        height, width = int(image_shape[0]), int(image_shape[1])
        self.pad = augment.default_pad(image_shape) if pad is None else int(pad)
        if self.pad < 0 or self.pad >= min(height, width):
            raise ValueError(f"pad must be in [0, {min(height, width)}), got {self.pad}.")
        self.flip = flip
        self.mask_fill = int(mask_fill)
        self.generator = tf.random.Generator.from_seed(seed)

    def __call__(self, images, masks):
        batch = tf.shape(images)[0]
        if self.pad:
            dy = self.generator.uniform([batch], -self.pad, self.pad + 1, dtype=tf.int32)
            dx = self.generator.uniform([batch], -self.pad, self.pad + 1, dtype=tf.int32)
            images = _translate(images, dy, dx, self.pad, 0.0)
            masks = _translate(masks[..., None], dy, dx, self.pad, self.mask_fill)[..., 0]
        if self.flip:
            flip = self.generator.uniform([batch]) < 0.5
            images = tf.where(flip[:, None, None, None], tf.reverse(images, [2]), images)
            masks = tf.where(flip[:, None, None], tf.reverse(masks, [2]), masks)
        return images, masks


# -------------------------------------------------------------------- pipeline


def _resize_pair(images, masks, size):
    """Bilinear (antialiased) for images, nearest for masks; batched or single examples."""
    if size is None or tuple(images.shape[-3:-1]) == size:
        return images, masks
    dtype = images.dtype
    images = tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear", antialias=True)
    images = tf.clip_by_value(images, 0.0, 255.0)
    if dtype.is_integer:
        images = tf.cast(tf.round(images), dtype)
    masks = tf.image.resize(masks[..., None], size, method="nearest")[..., 0]
    return images, masks


def make_segmentation_dataset(source, batch_size, training=False, image_size=None, augmentation=None,
                              seed=0, num_examples=None, cache="auto"):
    """Batches `source` into `(images float32 [0, 255] (B, H, W, C), masks int32 (B, H, W))`.

    Like `pipeline.make_dataset`: `source` is `(images, masks)` numpy arrays or
    a tf.data dataset of unbatched `(image (H, W, C), mask (H, W))` (resized per
    example when sizes vary); training shuffles each epoch from `seed`, drops
    the last partial batch and applies `augmentation(images, masks)` in a
    sequential map.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    size = pipeline.image_size_pair(image_size)
    if isinstance(source, tf.data.Dataset):
        ds = source.map(lambda x, y: _resize_pair(x, tf.cast(y, tf.uint8), size), num_parallel_calls=AUTOTUNE)
        shape = ds.element_spec[0].shape
        if not shape.is_fully_defined():
            raise ValueError(f"Images of varying size {tuple(shape)}: pass image_size to resize them.")
        example_bytes = 2 * int(np.prod(shape.as_list()))  # uint8 image and mask
        ds = pipeline.cache_shuffle_batch(ds, batch_size, training, seed, num_examples, cache, example_bytes)
    else:
        ds, num_examples = pipeline.batched_from_numpy(source, batch_size, training, seed)
    if training:
        pipeline.check_training_size(num_examples, batch_size)

    def prepare(images, masks):
        images, masks = _resize_pair(images, masks, size)
        return tf.cast(images, tf.float32), tf.cast(masks, tf.int32)

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE)
    if training and augmentation is not None:
        ds = ds.map(augmentation)  # sequential: the generator's state must advance in order
    return ds.prefetch(AUTOTUNE)


# ---------------------------------------------------------------------- loading


def load_segmentation(
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
    threshold=FASHION_MNIST_THRESHOLD,
    num_classes=None,
    ignore_label=None,
):
    """Loads a segmentation dataset as batched train/validation/test pipelines.

    Args:
        name: "fashion_mnist", "synthetic", "folder" or "oxford_iiit_pet"
            (see module doc); "folder" reads `data_dir` (see
            `folder_segmentation`).
        data_dir, batch_size, validation_fraction, image_size, seed,
        train_limit, test_limit, download: as for `load_classification`.
        augment: True: joint translation + horizontal flip; False: none; or a
            callable `(images, masks) -> (images, masks)` on batches.
            Training split only.
        synthetic_kwargs: for "synthetic": keyword arguments of
            `make_shapes_splits` (num_classes, image_shape, num_train,
            num_test, noise_std, ignore_border; seed defaults to `seed`).
        threshold: Fashion-MNIST item threshold (pixel value > threshold).
        num_classes: "folder" only: classes per pixel (None: from
            data_dir/labels.txt or the masks).
        ignore_label: "folder" only: the mask value of ignored pixels
            (None: `IGNORE_LABEL`, 255).

    Returns:
        `DatasetSplits` with a `SegmentationInfo`.

    Raises:
        DatasetNotFoundError: the data is not on this machine and cannot be downloaded.
        ValueError: unknown name or bad arguments; for "folder", a
            `DataFolderError` naming the file or folder.
    """
    split_plan.check_arguments(name, train_limit, test_limit, synthetic_kwargs)
    common = dict(batch_size=batch_size, validation_fraction=validation_fraction, image_size=image_size,
                  augment=augment, seed=seed, train_limit=train_limit, test_limit=test_limit)
    if name == "folder":
        from mbakt_tf.data import folder_segmentation

        return folder_segmentation.load_folder_segmentation(
            data_dir, num_classes=num_classes, ignore_label=ignore_label, **common)
    for arg, value in (("num_classes", num_classes), ("ignore_label", ignore_label)):
        if value is not None:
            raise ValueError(f"{arg} is for name='folder' (masks of your own), not {name!r}.")
    if name == "fashion_mnist":
        from mbakt_tf.data import fashion_mnist

        (images, labels), (test_images, test_labels) = fashion_mnist.load_fashion_mnist(data_dir)
        source = ("IDX files in " + os.path.dirname(fashion_mnist.find_files(data_dir)["train_images"])
                  + f"; item pixels: value > {threshold}")
        train = (images, fashion_mnist_masks(images, labels, threshold))
        test = (test_images, fashion_mnist_masks(test_images, test_labels, threshold))
        class_names = ["background"] + list(fashion_mnist.CLASS_NAMES)
        return _from_arrays(name, train, test, class_names, None, source, **common)
    if name == "synthetic":
        kwargs = {"seed": seed, **(synthetic_kwargs or {})}
        try:
            train, test = make_shapes_splits(**kwargs)
        except TypeError as error:
            raise ValueError(f"Bad synthetic_kwargs {sorted(kwargs)}: {error}") from error
        num_classes = kwargs.get("num_classes", 4)
        class_names = ["background"] + list(SHAPES[: num_classes - 1])
        ignore = IGNORE_LABEL if kwargs.get("ignore_border") else None
        return _from_arrays(name, train, test, class_names, ignore, "synthetic shapes", **common)
    if name in ("oxford_iiit_pet", "tfds:oxford_iiit_pet") or name.startswith("oxford_iiit_pet:"):
        return _from_pets(name.replace("tfds:", ""), data_dir, download, **common)
    raise ValueError(
        f"Unknown segmentation dataset {name!r}. Available: {', '.join(SEGMENTATION_DATASETS)}."
    )


def _splits(info, plan, batch_size, image_size, augment, seed):
    fill = BACKGROUND if info.ignore_label is None else info.ignore_label
    augmentation = split_plan.choose_augmentation(
        augment, lambda: JointAugmentation(info.input_shape, flip=True, seed=seed, mask_fill=fill))
    return split_plan.build_splits(info, plan, make_segmentation_dataset, batch_size, image_size,
                                   augmentation, seed)


def _from_arrays(name, train, test, class_names, ignore_label, source, batch_size, validation_fraction,
                 image_size, augment, seed, train_limit, test_limit):
    for split, (x, y) in (("train", train), ("test", test)):
        if x.ndim != 4 or y.shape != x.shape[:3]:
            raise ValueError(f"{name} {split}: images {x.shape} must be (N, H, W, C), masks (N, H, W).")
    plan = split_plan.carve_arrays(train, test, validation_fraction, seed, train_limit, test_limit)
    info = SegmentationInfo(
        name=name, num_classes=len(class_names), class_names=list(class_names),
        input_shape=split_plan.input_shape(train[0].shape[1:], image_size, name), source=source,
        ignore_label=ignore_label, **plan.counts,
    )
    return _splits(info, plan, batch_size, image_size, augment, seed)


def _from_pets(name, data_dir, download, batch_size, validation_fraction, image_size, augment, seed,
               train_limit, test_limit):
    """TFDS oxford_iiit_pet: (image, trimap) -> (image, background/pet/ignore mask)."""
    from mbakt_tf.data import tfds_source

    builder = tfds_source.get_builder(name, data_dir)
    reason = "it is not prepared there and download=False"
    if not builder.is_prepared() and download:
        try:
            builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 - any download failure ends the same way
            reason = f"downloading it failed ({type(error).__name__}: {error})"
    try:
        raw = {split: builder.as_dataset(split=split, shuffle_files=False) for split in ("train", "test")}
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as error:
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r}: no usable data in {builder.data_dir}: {reason}. Run on a machine "
            "with internet access, or pass data_dir=<a TFDS data directory where it was prepared>. "
            "Offline, use name='fashion_mnist' (Fashion-MNIST segmentation from local IDX files)."
        ) from error
    pairs = {split: ds.map(lambda ex: (ex["image"], pets_mask(ex["segmentation_mask"])[..., 0]))
             for split, ds in raw.items()}
    splits_info = builder.info.splits
    num_train = int(splits_info["train"].num_examples) if "train" in splits_info else int(pairs["train"].cardinality())
    num_test = int(splits_info["test"].num_examples) if "test" in splits_info else int(pairs["test"].cardinality())
    plan = split_plan.carve_stream(pairs["train"], pairs["test"], num_train, num_test, validation_fraction,
                                   seed, train_limit, test_limit)
    info = SegmentationInfo(
        name=name, num_classes=len(PETS_CLASS_NAMES), class_names=list(PETS_CLASS_NAMES),
        input_shape=split_plan.input_shape(builder.info.features["image"].shape, image_size, name),
        source=f"TFDS {name} trimaps (splits train, test) in {builder.data_dir}", ignore_label=IGNORE_LABEL,
        **plan.counts,
    )
    return _splits(info, plan, batch_size, image_size, augment, seed)
