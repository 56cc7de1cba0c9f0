import keras
import numpy as np
import pytest
import tensorflow as tf

from mbakt_tf import optimizers

SHAPES = [(3, 4), (4,), (2, 2, 3)]


def _train(optimizer, steps=5):
    """The variables after `steps` updates by `optimizer` on a fixed random quadratic."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    targets = [rng.normal(size=shape).astype("float32") for shape in SHAPES]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.square(v - t) * (i + 1)) for i, (v, t) in
                             enumerate(zip(variables, targets))])
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for _ in range(steps):
        step()
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("kwargs", [
    dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(momentum=0.9, nesterov=False),
    dict(momentum=0.0),
])
def test_fused_sgd_updates_like_keras(kwargs):
    schedule = lambda: keras.optimizers.schedules.CosineDecay(0.05, decay_steps=10)  # noqa: E731
    ours = _train(optimizers.SGD(schedule(), **kwargs))
    theirs = _train(keras.optimizers.SGD(schedule(), **kwargs))
    moved = _train(keras.optimizers.SGD(0.0))
    for a, b, still in zip(ours, theirs, moved):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not np.allclose(a, still)


@pytest.mark.parametrize("kwargs", [dict(beta_1=0.5), dict(amsgrad=True)])
def test_fused_adam_updates_like_keras(kwargs):
    for a, b in zip(_train(optimizers.Adam(1e-2, **kwargs)), _train(keras.optimizers.Adam(1e-2, **kwargs))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_step_has_fewer_ops_and_optimizers_round_trip():
    def update_ops(optimizer):
        variables = [keras.Variable(np.ones(shape, "float32")) for shape in SHAPES]
        optimizer.build(variables)
        graph = tf.function(lambda: optimizer.apply_gradients(
            [(tf.ones_like(v), v) for v in variables])).get_concrete_function().graph
        return len(graph.get_operations())

    assert update_ops(optimizers.SGD(0.1, momentum=0.9)) < update_ops(keras.optimizers.SGD(0.1, momentum=0.9))
    assert update_ops(optimizers.Adam(0.1)) < update_ops(keras.optimizers.Adam(0.1))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizers.SGD(0.1, momentum=0.8)))
    assert isinstance(restored, optimizers.SGD) and restored.momentum == 0.8
