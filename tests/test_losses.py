import math

import numpy as np
import pytest
import tensorflow as tf

from mbakt_tf import losses


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


LOGITS = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], "float32")
LABELS = np.array([0, 1])


def test_cross_entropy_by_hand():
    # Row 0: -log(e^2 / (e^2 + 1 + e^-1)); row 1: -log(e^.5 / (2 e^.5 + e^3)).
    row0 = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
    row1 = -(0.5 - math.log(2 * math.exp(0.5) + math.exp(3)))
    assert float(losses.cross_entropy(LABELS, LOGITS)) == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_cross_entropy_ignore_label_and_spatial_dims():
    logits = np.stack([LOGITS, LOGITS])[None]  # (1, 2, 2, 3): a 2x2 "image"
    labels = np.array([[[0, 255], [255, 1]]])
    row0 = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
    row1 = -(0.5 - math.log(2 * math.exp(0.5) + math.exp(3)))
    value = losses.cross_entropy(labels, logits, ignore_label=255)
    assert float(value) == pytest.approx((row0 + row1) / 2, rel=1e-5)
    all_ignored = losses.cross_entropy(np.full((1, 2, 2), 255), logits, ignore_label=255)
    assert float(all_ignored) == 0.0


def test_distillation_by_hand():
    teacher = np.array([[1.0, 2.0, 0.0]], "float32")
    student = np.array([[0.0, 1.0, 1.0]], "float32")
    t = 2.0
    p, q = softmax(teacher / t), softmax(student / t)
    expected = t**2 * np.sum(p * np.log(p / q))
    assert float(losses.distillation(teacher, student, t)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.distillation(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_ignore_label_on_maps():
    teacher = np.array([[[1.0, 2.0], [0.0, 3.0]]], "float32")  # (1, 2, 2): 2 positions
    student = np.zeros_like(teacher)
    labels = np.array([[0, 9]])
    p = softmax(teacher[0, 0])
    expected = np.sum(p * np.log(p / 0.5))
    value = losses.distillation(teacher, student, 1.0, labels=labels, ignore_label=9)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_distillation_and_hint_stop_teacher_gradient():
    teacher = tf.Variable([[1.0, 2.0, 0.0]])
    student = tf.Variable([[0.0, 1.0, 1.0]])
    with tf.GradientTape(persistent=True) as tape:
        kd = losses.distillation(teacher, student, 3.0)
        hint = losses.hint(student, teacher)
    assert tape.gradient(kd, teacher) is None and tape.gradient(hint, teacher) is None
    assert tape.gradient(kd, student) is not None and tape.gradient(hint, student) is not None


def test_hint_by_hand():
    a = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
    b = np.zeros_like(a)
    assert float(losses.hint(a, b)) == pytest.approx(np.mean(a**2))


def test_discriminator_and_adversarial_losses_by_hand():
    real = np.array([[2.0], [-1.0]], "float32")
    fake = np.array([[0.5], [-3.0], [1.0]], "float32")

    def bce(x, target):
        sig = 1 / (1 + np.exp(-x))
        return -(target * np.log(sig) + (1 - target) * np.log(1 - sig))

    expected = 0.5 * (bce(real, 0.9).mean() + bce(fake, 0.0).mean())
    assert float(losses.discriminator_loss(real, fake, 0.1)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.adversarial(fake)) == pytest.approx(-np.log(1 / (1 + np.exp(-fake))).mean(), rel=1e-5)
    # real: 2 right, -1 wrong (1/2); fake: .5 wrong, -3 right, 1 wrong (1/3).
    assert float(losses.discriminator_balanced_accuracy(real, fake)) == pytest.approx((1 / 2 + 1 / 3) / 2)
    # A constant "fake" scores 0.5 however many fakes there are per real.
    assert float(losses.discriminator_balanced_accuracy(-np.ones(4), -np.ones(12))) == 0.5


def test_gradient_norm_ratio_by_hand():
    x = tf.constant([3.0, 4.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        small = 0.5 * tf.reduce_sum(x)  # gradient (0.5, 0.5): norm sqrt(0.5)
        large = tf.reduce_sum(x**2)  # gradient (6, 8): norm 10
    ratio = float(losses.gradient_norm_ratio(tape, small, large, [x]))
    assert ratio == pytest.approx(np.sqrt(0.5) / 10, rel=1e-6)


def test_per_branch_losses_equal_each_heads_loss():
    # Segmentation-shaped: 3 heads' logits over a (2, 2, 2) label map with ignored pixels.
    rng = np.random.default_rng(0)
    stacked = rng.normal(size=(3, 2, 2, 2, 4)).astype("float32")
    labels = np.array([[[0, 255], [3, 1]], [[2, 2], [255, 0]]])
    teacher = rng.normal(size=(2, 2, 2, 4)).astype("float32")
    ce = losses.cross_entropy_per_branch(labels, stacked, ignore_label=255)
    kd = losses.distillation_per_branch(teacher, stacked, 2.0, labels=labels, ignore_label=255)
    np.testing.assert_allclose(
        ce, [losses.cross_entropy(labels, z, ignore_label=255) for z in stacked], rtol=1e-6)
    np.testing.assert_allclose(
        kd, [losses.distillation(teacher, z, 2.0, labels=labels, ignore_label=255) for z in stacked], rtol=1e-5)
    fake_logits = rng.normal(size=(3 * 5, 1)).astype("float32")  # 3 branches' 5 fakes, branch after branch
    np.testing.assert_allclose(
        losses.adversarial_per_branch(fake_logits, 3),
        [losses.adversarial(part) for part in np.split(fake_logits, 3)], rtol=1e-6)
