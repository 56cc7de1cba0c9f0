"""Training-time augmentation from Keras layers, applied to batches inside tf.data.

The default is the classic small-image recipe: pad by `pad` pixels of zeros and
take a random crop of the original size (done as a random integer translation
with constant fill, independently per image), plus an optional random
horizontal flip. Images stay float32 in [0, 255] with their shape.

Example:
>>> import numpy as np, tensorflow as tf
>>> augmentation = build_augmentation((28, 28, 1), flip=True, seed=0)
>>> ds = tf.data.Dataset.from_tensor_slices(np.zeros((8, 28, 28, 1), "float32")).batch(4)
>>> ds = ds.map(lambda x: augmentation(x, training=True))
>>> tuple(next(iter(ds)).shape)
(4, 28, 28, 1)
"""

import keras


def default_pad(image_shape):
    """Padding of the pad-and-crop: 1/8 of the smaller side (4 px for 28 and 32 px images)."""
    return max(1, round(min(image_shape[0], image_shape[1]) / 8))


def build_augmentation(image_shape, pad=None, flip=False, seed=None, name="augmentation"):
    """A `keras.Sequential` that augments batches of images (B, H, W, C) when `training=True`.

    Args:
        image_shape: (H, W, C) of the images it will see.
        pad: translation range in pixels (pad-and-crop); `None` uses
            `default_pad(image_shape)`, 0 disables it.
        flip: add a random horizontal flip (right for natural images and
            clothes, wrong for digits or text).
        seed: int seed of the random layers, for reproducible augmentation.

    Call it as `augmentation(images, training=True)`: Keras random layers are
    the identity at `training=False`. It holds random state, so use it in a
    tf.data `map` that is *not* parallel (see `pipeline.make_dataset`).
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    pad = default_pad(image_shape) if pad is None else int(pad)
    if pad < 0 or pad >= min(height, width):
        raise ValueError(f"pad must be in [0, {min(height, width)}) for images {image_shape}, got {pad}.")
    layers = []
    if pad:
        layers.append(
            keras.layers.RandomTranslation(
                height_factor=pad / height, width_factor=pad / width,
                fill_mode="constant", fill_value=0.0, interpolation="nearest",
                seed=seed, name=f"{name}_translate",
            )
        )
    if flip:
        layers.append(
            keras.layers.RandomFlip(
                "horizontal", seed=None if seed is None else seed + 1, name=f"{name}_flip",
            )
        )
    if not layers:
        return keras.layers.Identity(name=name)
    return keras.Sequential(layers, name=name)
