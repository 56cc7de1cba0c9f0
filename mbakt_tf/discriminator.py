"""Discriminators of the adversarial term: they tell the ensemble's outputs from a branch's.

Both return one float32 logit per input ("real" = the ensemble teacher's).

Example:
>>> d = vector_discriminator(input_dim=10, units=(32,))
>>> tuple(d.output.shape)
(None, 1)
"""

import keras


def vector_discriminator(input_dim, units=(64, 64), name="discriminator"):
    """An MLP over vectors (class probabilities or pooled features) -> one logit."""
    inputs = keras.Input(shape=(input_dim,), name=f"{name}_input")
    x = inputs
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, name=f"{name}_dense{i}")(x)
        x = keras.layers.LeakyReLU(negative_slope=0.2, name=f"{name}_lrelu{i}")(x)
    logits = keras.layers.Dense(1, dtype="float32", name=f"{name}_logit")(x)
    return keras.Model(inputs, logits, name=name)


def patch_discriminator(num_channels, units=(64, 128), name="patch_discriminator"):
    """A fully convolutional PatchGAN over probability maps -> one logit per patch."""
    inputs = keras.Input(shape=(None, None, num_channels), name=f"{name}_input")
    x = inputs
    for i, width in enumerate(units):
        x = keras.layers.Conv2D(width, 4, strides=2, padding="same", name=f"{name}_conv{i}")(x)
        x = keras.layers.LeakyReLU(negative_slope=0.2, name=f"{name}_lrelu{i}")(x)
    logits = keras.layers.Conv2D(1, 3, padding="same", dtype="float32", name=f"{name}_logit")(x)
    return keras.Model(inputs, logits, name=name)


def discriminator_input_channels(config, network, num_classes):
    """Width of what the discriminator sees per example (or pixel): outputs, plus the label."""
    if config.adversarial_input == "features":
        channels = int(network.output["main_features"].shape[-1])
    else:
        channels = num_classes
    return channels + (num_classes if config.discriminator_condition == "label" else 0)
