"""tf.data input pipelines for image classification, from numpy arrays or a tf.data source.

Every pipeline yields `(images, labels)` batches: images float32 (B, H, W, C)
with values in [0, 255] (models rescale themselves), labels int32 (B,).
Training pipelines reshuffle every epoch from a seed, drop the last partial
batch and augment; evaluation pipelines keep order and every example.

The work is done per batch, not per example: numpy sources are shuffled as
indices and gathered a batch at a time; tf.data sources are cached (in memory
when they fit) before shuffling. Casting and resizing run in a parallel map
(AUTOTUNE). Augmentation runs in a sequential map of its own: Keras random
layers keep their random state in a variable, and parallel calls may read the
same state, which repeats augmentations and makes runs unreproducible.

Example:
>>> import numpy as np
>>> images = np.zeros((10, 28, 28, 1), np.uint8)
>>> labels = np.arange(10) % 3
>>> ds = make_dataset((images, labels), batch_size=4, training=True, image_size=32)
>>> [(tuple(x.shape), tuple(y.shape), x.dtype.name, y.dtype.name) for x, y in ds]
[((4, 32, 32, 1), (4,), 'float32', 'int32'), ((4, 32, 32, 1), (4,), 'float32', 'int32')]
"""

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
CACHE_LIMIT_BYTES = 2 * 1024**3  # cache="auto" caches sources up to this size in memory
SHUFFLE_BUFFER_BYTES = 512 * 1024**2  # upper bound of the shuffle buffer of tf.data sources


def validate_arrays(images, labels, num_classes, name="data"):
    """Checks that numpy images and labels make a classification dataset.

    Args:
        images: array (N, H, W, C), values in [0, 255].
        labels: integer array (N,), values in [0, num_classes).
        num_classes: number of classes.
        name: used in error messages.

    Returns:
        `(images, labels)`, labels as int32.

    Raises:
        ValueError: naming the problem: images not of rank 4, labels not of
            rank 1 or not integers, counts that differ, no examples, labels
            out of range, or pixel values outside [0, 255].

    Example:
    >>> x, y = validate_arrays(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), num_classes=2)
    >>> y.dtype.name
    'int32'
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4:
        hint = " (grayscale? add a channel axis: images[..., None])" if images.ndim == 3 else ""
        raise ValueError(
            f"{name}: images must have rank 4 (N, H, W, C), got shape {images.shape}{hint}."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"{name}: labels must have rank 1 (N,) of class indices, got shape {labels.shape}."
        )
    if len(images) != len(labels):
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels.")
    if len(labels) == 0:
        raise ValueError(f"{name}: no examples.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = int(np.sum((labels < 0) | (labels >= num_classes)))
        raise ValueError(
            f"{name}: labels out of range: {bad} labels outside [0, {num_classes}) "
            f"(min {low}, max {high})."
        )
    if images.dtype != np.uint8:
        vmin, vmax = float(images.min()), float(images.max())
        if vmin < 0 or vmax > 255:
            raise ValueError(
                f"{name}: image values must be in [0, 255], got [{vmin:g}, {vmax:g}]."
            )
    return images, labels.astype(np.int32)


def carve_validation(num_examples, fraction, seed=0):
    """Splits `range(num_examples)` into train and validation indices, seeded.

    The validation set is `round(fraction * num_examples)` examples (at
    least 1 if `fraction > 0`) picked at random with `seed`; both index arrays
    are sorted, so each keeps the source order.

    Example:
    >>> train, val = carve_validation(10, 0.2, seed=0)
    >>> len(train), len(val)
    (8, 2)
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}.")
    num_val = 0 if fraction == 0 else max(1, int(round(fraction * num_examples)))
    if num_val >= num_examples:
        raise ValueError(
            f"validation_fraction={fraction} of {num_examples} examples leaves none for training."
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def select(source, indices, num_examples):
    """The examples of a tf.data `source` (of `num_examples`) at `indices`, in source order.

    Used to carve a validation set out of a streamed split: one pass with a
    boolean mask, exact size.
    """
    mask = np.zeros(num_examples, dtype=bool)
    mask[indices] = True
    mask = tf.constant(mask)
    ds = source.enumerate().filter(lambda i, example: tf.gather(mask, i))
    ds = ds.map(lambda i, example: example)
    return ds.apply(tf.data.experimental.assert_cardinality(len(indices)))


def image_size_pair(image_size):
    """`None`, an int or (h, w) -> `None` or an (h, w) tuple of ints."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be None, an int or (height, width), got {image_size}.")
    return size


def make_dataset(
    source, batch_size, training=False, image_size=None, augmentation=None, seed=0,
    num_examples=None, cache="auto",
):
    """Batches `source` into `(images float32 [0, 255], labels int32 (B,))`.

    Args:
        source: `(images, labels)` numpy arrays (validated with
            `validate_arrays` by the caller), or a tf.data dataset of
            unbatched `(image (H, W, C), label)`.
        batch_size: global batch size.
        training: shuffle (reshuffled each epoch from `seed`), drop the last
            partial batch, apply `augmentation`.
        image_size: `None` keeps the size, an int or (h, w) resizes
            (bilinear, antialiased).
        augmentation: a callable on float32 image batches, e.g.
            `augment.build_augmentation(...)`; Keras layers/models are called
            with `training=True`. Used only if `training`.
        seed: shuffle seed.
        num_examples: size of a tf.data `source`, if known: sizes the cache
            and shuffle buffer and fixes the cardinality.
        cache: for tf.data sources: "auto" caches in memory if it fits in
            `CACHE_LIMIT_BYTES`, True always, False never, a string caches to
            that file. Numpy sources are in memory already.

    Raises:
        ValueError: a training source smaller than one batch, or images of
            varying size without `image_size`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    size = image_size_pair(image_size)
    if isinstance(source, tf.data.Dataset):
        ds, num_examples = _batched_from_tf_data(source, batch_size, training, size, seed,
                                                 num_examples, cache)
    else:
        ds, num_examples = batched_from_numpy(source, batch_size, training, seed)
    if training:
        check_training_size(num_examples, batch_size)

    def prepare(images, labels):
        images = tf.cast(images, tf.float32)
        if size is not None and tuple(images.shape[1:3]) != size:
            images = tf.image.resize(images, size, method="bilinear", antialias=True)
            images = tf.clip_by_value(images, 0.0, 255.0)
        return images, tf.reshape(tf.cast(labels, tf.int32), [-1])

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE)
    if training and augmentation is not None:
        ds = ds.map(lambda x, y: (_call_augmentation(augmentation, x), y))  # sequential: see top
    return ds.prefetch(AUTOTUNE)


def _call_augmentation(augmentation, images):
    import keras

    if isinstance(augmentation, keras.layers.Layer):
        return augmentation(images, training=True)
    return augmentation(images)


def batched_from_numpy(source, batch_size, training, seed):
    """`(dataset of (images, labels) batches, num_examples)` from in-memory arrays, gathered per batch.

    Training shuffles every epoch from `seed` and drops the last partial batch.
    The arrays may be labels or label maps; nothing is cast or resized here.
    """
    images, labels = source
    num_examples = len(images)
    with tf.device("/cpu:0"):  # tf.data runs on the host, even inside a strategy scope
        images, labels = tf.constant(images), tf.constant(labels)
    ds = tf.data.Dataset.range(num_examples)
    if training:
        ds = ds.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
                num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options), num_examples


def cache_shuffle_batch(ds, batch_size, training, seed, num_examples, cache, example_bytes):
    """Caches (see `make_dataset`'s `cache`), shuffles for training, batches an unbatched tf.data source.

    `example_bytes` (None if unknown) sizes the "auto" cache decision and the
    shuffle buffer (`SHUFFLE_BUFFER_BYTES` of examples, at most all of them).
    """
    if num_examples is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_examples))
    if cache == "auto":
        cache = (
            num_examples is not None
            and example_bytes is not None
            and num_examples * example_bytes <= CACHE_LIMIT_BYTES
        )
    if isinstance(cache, str):
        ds = ds.cache(cache)
    elif cache:
        ds = ds.cache()
    if training:
        buffer = SHUFFLE_BUFFER_BYTES // example_bytes if example_bytes else 10_000
        buffer = max(1, min(buffer, num_examples or buffer))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=training)


def check_training_size(num_examples, batch_size):
    """`ValueError` when a training split (dropping its last partial batch) would yield no batch."""
    if num_examples is not None and num_examples < batch_size:
        raise ValueError(
            f"The training split has {num_examples} examples, fewer than batch_size={batch_size}: "
            "with drop_remainder=True it would yield no batches. Lower batch_size or use more data."
        )


def _batched_from_tf_data(source, batch_size, training, size, seed, num_examples, cache):
    ds = source
    image_spec = ds.element_spec[0]
    shape = image_spec.shape
    if not shape[:2].is_fully_defined():
        if size is None:
            raise ValueError(
                f"Images of varying size {tuple(shape)}: pass image_size to resize them."
            )
        # Resize before batching; cast back so the cache stays in the source dtype.
        def resize(image, label):
            image = tf.image.resize(image, size, method="bilinear", antialias=True)
            image = tf.clip_by_value(image, 0.0, 255.0)
            if image_spec.dtype.is_integer:
                image = tf.cast(tf.round(image), image_spec.dtype)
            return image, label

        ds = ds.map(resize, num_parallel_calls=AUTOTUNE)
        shape = tf.TensorShape(size + (shape[-1],))
    example_bytes = (
        int(np.prod(shape.as_list())) * image_spec.dtype.size if shape.is_fully_defined() else None
    )
    return cache_shuffle_batch(ds, batch_size, training, seed, num_examples, cache, example_bytes), num_examples
