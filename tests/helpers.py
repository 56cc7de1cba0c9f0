"""Tiny models and data for the tests, and the helper every model test calls (train a step, check, round-trip)."""

import logging
import os
import typing

import keras
import numpy as np

import mbakt_tf


def tiny_batch(input_shape=(16, 16, 1), num_classes=4, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(batch,) + tuple(input_shape)).astype("float32")
    labels = rng.integers(0, num_classes, size=(batch,)).astype("int32")
    return images, labels


def tiny_model(backbone="small_resnet8", input_shape=(16, 16, 1), num_classes=4, run_eagerly=False,
               **config_kwargs):
    """`run_eagerly`: the train step runs as Python, untraced; for tests of its arithmetic over a few
    steps (tracing costs seconds, an eager step a fraction of one). `test_train_step_is_the_same_traced_and_eager`
    holds the two equal."""
    config_kwargs.setdefault("adversarial_warmup_steps", 0)
    config_kwargs.setdefault("distillation_warmup_steps", 0)
    model = mbakt_tf.MBAKT.from_backbone(
        backbone, num_classes=num_classes, input_shape=input_shape,
        config=mbakt_tf.MBAKTConfig(**config_kwargs),
    )
    model.compile(
        g_optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        d_optimizer=keras.optimizers.Adam(1e-3), run_eagerly=run_eagerly,
    )
    return model


def tiny_cspdarknet(shape=(32, 32, 3)):
    """A small keras-cv CSPDarkNet (4 stages: a 1x1 last stage at 32x32, 2x2 at 64x64)."""
    import keras_cv

    return keras_cv.models.CSPDarkNetBackbone(
        stackwise_channels=[8, 16, 24, 32], stackwise_depth=[1, 1, 1, 1],
        include_rescaling=True, input_shape=shape,
    )


def tiny_segmenter(backbone="small_resnet8", input_shape=(16, 16, 1), num_classes=4, ignore_label=255,
                   **config_kwargs):
    config_kwargs.setdefault("adversarial_warmup_steps", 0)
    config_kwargs.setdefault("distillation_warmup_steps", 0)
    config_kwargs.setdefault("discriminator_units", (8, 8))
    model = mbakt_tf.MBAKT.from_backbone(
        backbone, num_classes=num_classes, input_shape=input_shape, task="segmentation",
        ignore_label=ignore_label, config=mbakt_tf.MBAKTConfig(**config_kwargs),
    )
    model.compile(g_optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  d_optimizer=keras.optimizers.Adam(1e-3))
    return model


def run_mbakt_model_test(model, images, labels, tmp_dir, expected_branches, round_trip=True):
    """Checks heads, shapes, one fit step, evaluate keys, main cut, config and (`round_trip`) save/load.

    Returns the model loaded from its .keras file, or the model itself without `round_trip`.
    """
    num_classes = model.num_classes
    assert model.branch_names == ["main"] + [f"branch_{k}" for k in range(1, expected_branches + 1)]

    outputs = model.network(images[:2], training=False)
    main_features = outputs["main_features"]
    for branch in model.branch_names:
        assert tuple(outputs[f"{branch}_logits"].shape) == (2, num_classes)
        assert tuple(outputs[f"{branch}_features"].shape) == tuple(main_features.shape)

    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    results = model.evaluate(images, labels, batch_size=4, return_dict=True, verbose=0)
    heads = model.branch_names + (["ensemble"] if expected_branches else [])
    for head in heads:
        assert 0.0 <= results[f"{head}_accuracy"] <= 1.0
        assert np.isfinite(results[f"{head}_loss"])

    main = model.main_model()  # called eagerly: tracing its predict would test Keras, not the cut
    np.testing.assert_allclose(main(images, training=False), model.predict(images, verbose=0), atol=1e-6)

    restored = mbakt_tf.MBAKT.from_config(model.get_config())
    assert restored.config == model.config
    assert restored.branch_names == model.branch_names
    assert restored.count_params() == model.count_params()
    if not round_trip:
        return model

    path = os.path.join(tmp_dir, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, mbakt_tf.MBAKT)
    assert loaded.config == model.config
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    loaded_results = loaded.evaluate(images, labels, batch_size=4, return_dict=True, verbose=0)
    for key, value in results.items():
        np.testing.assert_allclose(loaded_results[key], value, rtol=1e-4, atol=1e-5)
    return loaded


# The one trained run that the export, TensorBoard, curves and guard tests read (`trained_run` in
# conftest.py): the default design (peers, gated teacher), every loss on from step 1, validation, and
# TensorBoard logs per epoch and every 2 steps.
TINY_RUN_DATA = dict(num_classes=4, image_shape=(16, 16, 1), num_train=512, num_test=128)


class TinyRun(typing.NamedTuple):
    config: object  # training.TrainConfig
    result: object  # training.TrainResult
    warnings: list  # what mbakt_tf's loggers warned during the run


def train_tiny_run(root, run_name="tiny", **config_kwargs):
    """Trains the tiny run of TINY_RUN_DATA (3 epochs; a quarter held out) and returns its TinyRun."""
    from mbakt_tf import training

    config = training.TrainConfig(
        dataset="synthetic", synthetic_kwargs=TINY_RUN_DATA, epochs=3, batch_size=32,
        validation_fraction=0.25, learning_rate=0.05, output_dir=str(root), run_name=run_name, verbose=0,
        tensorboard_steps=2,
    )
    mbakt_config = mbakt_tf.MBAKTConfig(
        mode="mbakt", adversarial_warmup_steps=0, distillation_warmup_steps=0, **config_kwargs)
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(f"{record.name}: {record.getMessage()}")
    logger = logging.getLogger("mbakt_tf")
    logger.addHandler(handler)
    try:
        result = training.train(config, mbakt_config)
    finally:
        logger.removeHandler(handler)
    assert result.test_results["main_accuracy"] > 0.5, result.test_results  # learnt something
    return TinyRun(config, result, warnings)
