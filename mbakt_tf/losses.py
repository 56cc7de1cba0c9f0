"""The four MBAKT loss terms as pure functions of tensors.

Every function takes logits of shape `(..., num_classes)` (any leading batch
and spatial dimensions), works in float32, and returns the mean over all
non-ignored positions as a scalar. Teacher inputs are wrapped in
`stop_gradient`, so no gradient flows into the teacher side.

Example:
>>> import numpy as np
>>> logits = np.array([[2.0, 0.0], [0.0, 2.0]], "float32")
>>> float(cross_entropy(np.array([0, 1]), logits))  # doctest: +ELLIPSIS
0.1269...
"""

from keras import ops


def _valid_mask(labels, ignore_label):
    if ignore_label is None:
        return ops.ones_like(labels, dtype="float32")
    return ops.cast(ops.not_equal(labels, ignore_label), "float32")


def _masked_mean(values, mask):
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def cross_entropy(labels, logits, ignore_label=None):
    """Mean softmax cross-entropy of integer `labels` (shape `logits.shape[:-1]`).

    Positions whose label equals `ignore_label` count neither in the sum nor
    in the mean.
    """
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "int32")
    mask = _valid_mask(labels, ignore_label)
    safe_labels = ops.where(mask > 0, labels, ops.zeros_like(labels))
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(safe_labels, -1), axis=-1)
    return _masked_mean(-ops.squeeze(picked, -1), mask)


def cross_entropy_per_branch(labels, stacked_logits, ignore_label=None):
    """`cross_entropy` of each of several heads at once: `stacked_logits` is `(branches, ...,
    num_classes)`, the heads' logits stacked on a new first axis; returns the `(branches,)` losses.

    One set of ops for every head instead of one per head (a step's fixed costs grow with its ops).

    Example:
    >>> import numpy as np
    >>> logits = np.array([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [0.0, 2.0]]], "float32")
    >>> [round(float(v), 4) for v in cross_entropy_per_branch(np.array([0, 1]), logits)]
    [0.1269, 1.1269]
    """
    stacked_logits = ops.cast(stacked_logits, "float32")
    labels = ops.cast(labels, "int32")
    mask = _valid_mask(labels, ignore_label)
    # An ignored label one-hots to zeros (it is outside [0, num_classes)) and is masked out anyway.
    one_hot = ops.one_hot(labels, stacked_logits.shape[-1], dtype="float32")
    picked = -ops.sum(one_hot * ops.log_softmax(stacked_logits, axis=-1), axis=-1)
    return _masked_mean_per_branch(picked, mask)


def _masked_mean_per_branch(values, mask):
    """Mean of `values` (shape `(branches,) + mask.shape`) over the positions `mask` keeps, per branch."""
    axes = tuple(range(1, len(values.shape)))
    return ops.sum(values * mask, axis=axes) / ops.maximum(ops.sum(mask), 1.0)


def distillation(teacher_logits, student_logits, temperature, labels=None, ignore_label=None):
    """`T^2 * KL(softmax(teacher / T) || softmax(student / T))`, mean over positions."""
    stacked = ops.expand_dims(student_logits, 0)  # one student
    return distillation_per_branch(teacher_logits, stacked, temperature, labels, ignore_label)[0]


def distillation_per_branch(teacher_logits, stacked_student_logits, temperature, labels=None,
                            ignore_label=None):
    """`distillation` from one teacher to several students at once: `stacked_student_logits` is
    `(branches, ..., num_classes)`; returns the `(branches,)` losses."""
    teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
    student_logits = ops.cast(stacked_student_logits, "float32")
    teacher_log_probs = ops.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probs = ops.log_softmax(student_logits / temperature, axis=-1)
    kl = ops.sum(ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    if labels is None:
        mask = ops.ones_like(kl[0])
    else:
        mask = _valid_mask(ops.cast(labels, "int32"), ignore_label)
    return temperature**2 * _masked_mean_per_branch(kl, mask)


def hint(student_features, teacher_features):
    """Mean squared distance between two feature maps of the same shape."""
    teacher_features = ops.stop_gradient(ops.cast(teacher_features, "float32"))
    student_features = ops.cast(student_features, "float32")
    return ops.mean(ops.square(student_features - teacher_features))


def discriminator_loss(real_logits, fake_logits, label_smoothing=0.0):
    """Binary cross-entropy of the discriminator: real -> `1 - smoothing`, fake -> 0.

    Returns the mean of the real-side and the fake-side losses.
    """
    real_logits = ops.cast(real_logits, "float32")
    fake_logits = ops.cast(fake_logits, "float32")
    real_target = 1.0 - label_smoothing
    # BCE with logits: softplus(x) - target * x.
    real = ops.mean(ops.softplus(real_logits) - real_target * real_logits)
    fake = ops.mean(ops.softplus(fake_logits))
    return 0.5 * (real + fake)


def adversarial(fake_logits):
    """Non-saturating generator loss `-log D(fake)`, mean over positions."""
    return ops.mean(ops.softplus(-ops.cast(fake_logits, "float32")))


def adversarial_per_branch(fake_logits, branches):
    """`adversarial` of each branch's fakes: `fake_logits` holds the branches' discriminator logits
    one after another on the first axis (equal counts); returns the `(branches,)` losses."""
    per_branch = ops.reshape(ops.cast(fake_logits, "float32"), (branches, -1))
    return ops.mean(ops.softplus(-per_branch), axis=1)


def discriminator_balanced_accuracy(real_logits, fake_logits):
    """Mean of the real-side accuracy (score > 0) and the fake-side accuracy (score < 0).

    A constant discriminator scores 0.5 however many fakes there are per real.

    Example:
    >>> import numpy as np
    >>> float(discriminator_balanced_accuracy(np.array([1.0, -1.0]), np.array([-1.0] * 6)))
    0.75
    """
    real_right = ops.mean(ops.cast(ops.greater(real_logits, 0.0), "float32"))
    fake_right = ops.mean(ops.cast(ops.less(fake_logits, 0.0), "float32"))
    return 0.5 * (real_right + fake_right)


def squared_gradient_norm(tape, target, sources):
    """`||d target / d sources||^2` from a persistent tape (0 when nothing depends on `sources`)."""
    grads = [g for g in tape.gradient(target, sources) if g is not None]
    if not grads:
        return ops.convert_to_tensor(0.0, "float32")
    return ops.sum(ops.stack([ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads]))


def norm_ratio(numerator_squared, denominator_squared):
    """`sqrt(numerator_squared / denominator_squared)`, 0 when the denominator vanishes."""
    return ops.where(
        denominator_squared > 0,
        ops.sqrt(numerator_squared / ops.maximum(denominator_squared, 1e-24)),
        0.0,
    )


def gradient_norm_ratio(tape, numerator, denominator, sources):
    """`||d numerator / d sources|| / ||d denominator / d sources||` from a persistent tape.

    How large one loss term's gradient is next to another's on the same
    tensors (e.g. the adversarial term next to cross-entropy on the network's
    outputs); 0 when the denominator's gradient vanishes.
    """
    return norm_ratio(
        squared_gradient_norm(tape, numerator, sources), squared_gradient_norm(tape, denominator, sources)
    )
