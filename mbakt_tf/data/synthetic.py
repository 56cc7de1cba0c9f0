"""Deterministic synthetic image classification data that a model can learn.

Each class has a fixed prototype: a sinusoidal grating with its own
orientation and period (classes are spread over a grid of angles and two
periods) and its own phase and per-channel tint. Orientation and period are
local features, so convolutional networks with global pooling learn them, and
a few pixels of translation keep the class; horizontal flips do not (they
mirror the angle). An example is its class's prototype at a random contrast
and brightness plus pixel noise, clipped to [0, 255]. Prototypes depend only
on `seed`; examples and labels also depend on `split`, so train and test share
classes but not examples. Classes are balanced.

Example:
>>> images, labels = make_synthetic(num_classes=4, image_shape=(8, 8, 1), num_examples=6)
>>> images.shape, images.dtype.name, labels.tolist()
((6, 8, 8, 1), 'float32', [0, 0, 2, 3, 1, 1])
"""

import zlib

import numpy as np

DEFAULTS = dict(num_classes=10, image_shape=(28, 28, 1), num_train=2048, num_test=512)


def class_prototypes(num_classes, image_shape, seed=0, periods=(4.0, 7.0)):
    """One grating per class, float32 in [0, 1], shape (num_classes, H, W, C).

    Class k has period `periods[k % len(periods)]` pixels and one of
    `ceil(num_classes / len(periods))` evenly spaced angles in [0, pi).

    Example:
    >>> class_prototypes(3, (8, 8, 3)).shape
    (3, 8, 8, 3)
    """
    height, width, channels = _check_shape(image_shape)
    rng = np.random.default_rng([seed, 0])
    num_angles = -(-num_classes // len(periods))
    k = np.arange(num_classes)
    angle = np.pi * (k // len(periods) + rng.uniform()) / num_angles
    period = np.asarray(periods, dtype=np.float64)[k % len(periods)]
    phase = rng.uniform(0, 2 * np.pi, size=num_classes)
    tint = rng.uniform(0.5, 1.0, size=(num_classes, 1, 1, channels))
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    along = x[None] * np.cos(angle)[:, None, None] + y[None] * np.sin(angle)[:, None, None]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * along / period[:, None, None] + phase[:, None, None])
    return (wave[..., None] * tint).astype(np.float32)


def make_synthetic(
    num_classes=10, image_shape=(28, 28, 1), num_examples=1024, seed=0, split="train",
    noise_std=40.0,
):
    """Generates `num_examples` labelled images.

    Args:
        num_classes: number of classes (>= 2).
        image_shape: (H, W, C) of each image.
        num_examples: how many examples.
        seed: fixes the class prototypes and, with `split`, the examples.
        split: any string; different splits get different examples of the
            same classes.
        noise_std: standard deviation of the pixel noise, in [0, 255] units.

    Returns:
        `(images, labels)`: images float32 (N, H, W, C) holding values in
        [0, 255], labels int32 (N,) in [0, num_classes).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
    prototypes = class_prototypes(num_classes, image_shape, seed)
    rng = np.random.default_rng([seed, 1, zlib.crc32(split.encode())])
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
    contrast = rng.uniform(0.6, 1.0, size=(num_examples, 1, 1, 1))
    offset = rng.uniform(0.0, 0.2, size=(num_examples, 1, 1, 1))
    clean = 255.0 * (offset + 0.8 * contrast * prototypes[labels])
    noisy = clean + rng.normal(scale=noise_std, size=clean.shape)
    return np.clip(noisy, 0.0, 255.0).astype(np.float32), labels


def make_synthetic_splits(
    num_classes=DEFAULTS["num_classes"], image_shape=DEFAULTS["image_shape"],
    num_train=DEFAULTS["num_train"], num_test=DEFAULTS["num_test"], seed=0, noise_std=40.0,
):
    """Train and test splits of the same synthetic classes.

    Returns:
        `((train_images, train_labels), (test_images, test_labels))`.

    Example:
    >>> (x, y), (xt, yt) = make_synthetic_splits(3, (8, 8, 1), num_train=30, num_test=9)
    >>> x.shape, xt.shape
    ((30, 8, 8, 1), (9, 8, 8, 1))
    """
    common = dict(num_classes=num_classes, image_shape=image_shape, seed=seed, noise_std=noise_std)
    return (
        make_synthetic(num_examples=num_train, split="train", **common),
        make_synthetic(num_examples=num_test, split="test", **common),
    )


def _check_shape(image_shape):
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) of positive ints, got {image_shape}.")
    return shape
