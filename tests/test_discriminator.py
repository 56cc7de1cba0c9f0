import keras
import numpy as np

from mbakt_tf import losses
from mbakt_tf.discriminator import patch_discriminator, vector_discriminator


def test_vector_discriminator_learns_to_separate_sharp_from_soft_probabilities():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    num_classes = 5
    # "real": peaked distributions; "fake": near-uniform ones.
    real = keras.ops.softmax(rng.normal(0, 4.0, (256, num_classes)).astype("float32"))
    fake = keras.ops.softmax(rng.normal(0, 0.3, (256, num_classes)).astype("float32"))
    d = vector_discriminator(num_classes, units=(32, 32))
    optimizer = keras.optimizers.Adam(1e-2)
    import tensorflow as tf

    first = None
    for _ in range(150):
        with tf.GradientTape() as tape:
            loss = losses.discriminator_loss(d(real, training=True), d(fake, training=True))
        first = float(loss) if first is None else first
        grads = tape.gradient(loss, d.trainable_variables)
        optimizer.apply_gradients(zip(grads, d.trainable_variables))
    accuracy = float(losses.discriminator_balanced_accuracy(d(real), d(fake)))
    assert first > 0.6
    assert float(loss) < 0.2
    assert accuracy > 0.95


def test_patch_discriminator_scores_patches_in_float32():
    d = patch_discriminator(num_channels=3, units=(8, 16))
    maps = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    scores = d(maps)
    assert tuple(scores.shape) == (2, 8, 8, 1)
    assert scores.dtype == "float32"
