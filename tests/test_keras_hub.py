"""keras-hub backbone objects: stages, raw-pixel input, classification, segmentation, export, tf_keras bridge.

keras-hub (keras-cv's successor) is a dev dependency. Every backbone is built
small from explicit arguments (no preset download): a ResNet (its
`pyramid_outputs` give the stages) and a MobileNet (no `pyramid_outputs`: the
stages are cut where the resolution steps down), 32x32 RGB.
"""

import keras
import keras_hub
import numpy as np
import pytest

import mbakt_tf
from mbakt_tf import backbones, export, optimize, tf_keras_bridge
from tests.helpers import tiny_batch
from tests.test_optimize import _randomize, _tfmot_python

SHAPE = (32, 32, 3)
NUM_CLASSES = 3
# keras-hub's ResNet image converter for ImageNet presets: (pixel / 255 - mean) / std per channel.
IMAGENET_SCALE = [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)]
IMAGENET_OFFSET = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]


def hub_resnet(image_shape=SHAPE):
    """Basic blocks, one per stage; keras-hub requires 64 filters in the stem's stage."""
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16, 16],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        image_shape=image_shape,
    )


def hub_mobilenet():
    """MobileNetV3-style: a depthwise block, two inverted residual blocks (one with squeeze-and-excite)."""
    return keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[40 / 16], [4]], stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[16], [24]], stackwise_kernel_size=[[3], [5]],
        stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"]], stackwise_padding=[[1], [2]],
        output_num_filters=32, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        last_layer_filter=32, squeeze_and_excite=0.5, image_shape=SHAPE,
    )


HUB_BACKBONES = {"resnet": hub_resnet, "mobilenet": hub_mobilenet}


def _config(**kwargs):
    return mbakt_tf.MBAKTConfig(
        adversarial_warmup_steps=0, distillation_warmup_steps=0, **{"mode": "mbakt", **kwargs})


def _images(n=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n,) + SHAPE).astype("float32")


# ------------------------------------------------------------------ stages


def test_resnet_stages_are_its_pyramid_outputs():
    backbone = hub_resnet()
    names = backbones.stage_layer_names(backbone)
    assert names == [backbone.pyramid_outputs[k]._keras_history[0].name for k in ("P2", "P3", "P4")]
    assert backbones.stage_outputs(backbone)[-1] is backbone.output
    assert not backbones.is_mobile_backbone(backbone)


def test_mobilenet_stages_are_cut_where_the_resolution_steps_down():
    backbone = hub_mobilenet()
    assert not getattr(backbone, "pyramid_outputs", None)  # what makes this path necessary
    stages = backbones.stage_outputs(backbone)
    assert [s.shape[1] for s in stages] == [16, 8, 4, 2]
    assert backbones.stage_layer_names(backbone) == ["activation", "block_0_0", "block_1_0", "block_3_0"]
    assert stages[-1] is backbone.output
    assert backbones.is_mobile_backbone(backbone)  # its depthwise convolutions are grouped Conv2D


def test_a_cut_through_a_skip_connection_is_not_a_stage():
    image = keras.Input(SHAPE)
    stem = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(image)
    inner = keras.layers.Conv2D(4, 3, padding="same", name="inner")(stem)  # last layer at 16x16
    down = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="down")(inner)
    shortcut = keras.layers.Conv2D(8, 1, strides=2, name="shortcut")(stem)  # bypasses "inner"
    out = keras.layers.Add(name="out")([down, shortcut])
    levels = backbones._inferred_levels(keras.Model(image, out))
    assert levels == {"P2": "out"}  # no 16x16 stage: copies from "inner" on would miss the shortcut


def test_with_rescaling_takes_raw_pixels_and_keeps_weights_and_stages():
    for build in HUB_BACKBONES.values():
        hub = build()
        backbone = backbones.with_rescaling(hub, IMAGENET_SCALE, IMAGENET_OFFSET)
        images = _images(2)
        expected = hub(images * np.float32(IMAGENET_SCALE) + np.float32(IMAGENET_OFFSET))
        np.testing.assert_allclose(backbone(images), expected, atol=1e-4)
        assert backbone.count_params() == hub.count_params()
        assert [s.shape for s in backbones.stage_outputs(backbone)] == [
            s.shape for s in backbones.stage_outputs(hub)]
        assert backbones.is_mobile_backbone(backbone) == backbones.is_mobile_backbone(hub)


# ----------------------------------------------------------- classification


@pytest.mark.parametrize("family, design, expected_branches", [
    ("resnet", "peer", 2), ("mobilenet", "exit", 3)])
def test_classification_trains_saves_and_main_branch_is_the_plain_network(
        family, design, expected_branches, tmp_path):
    build = HUB_BACKBONES[family]
    model = mbakt_tf.MBAKT.from_backbone(build(), NUM_CLASSES, config=_config(branch_design=design))
    assert model.branch_names == ["main"] + [f"branch_{k}" for k in range(1, expected_branches + 1)]
    model.compile(g_optimizer=keras.optimizers.SGD(0.01), d_optimizer=keras.optimizers.Adam(1e-3))
    images, labels = tiny_batch(SHAPE, NUM_CLASSES)
    before = [w.numpy().copy() for w in model.main_model().trainable_weights]
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.main_model().trainable_weights
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after))  # the step trained it
    model.save(tmp_path / "model.keras")  # keras-hub layers (MobileNet's blocks) reload by themselves
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)

    backbone = build()
    plain = mbakt_tf.MBAKT.from_backbone(backbone, NUM_CLASSES, config=_config(mode="plain"))
    head = (int(backbone.output.shape[-1]) + 1) * NUM_CLASSES
    assert model.main_model().count_params() == plain.main_model().count_params()
    assert plain.main_model().count_params() == backbone.count_params() + head
    assert model.network.count_params() > plain.network.count_params()


# ------------------------------------------------------------- segmentation


def test_segmentation_on_a_hub_resnet_predicts_full_resolution_maps():
    model = mbakt_tf.MBAKT.from_backbone(
        backbones.with_rescaling(hub_resnet()), NUM_CLASSES, task="segmentation", ignore_label=255,
        config=_config(discriminator_units=(8, 8)),
    )
    assert isinstance(model, mbakt_tf.MBAKTSegmenter) and len(model.branch_names) == 3
    model.compile(g_optimizer=keras.optimizers.SGD(0.01), d_optimizer=keras.optimizers.Adam(1e-3))
    images = _images(4)
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, (4,) + SHAPE[:2]).astype("int32")
    outputs = model.network(images[:1], training=False)
    for branch in model.branch_names:
        assert tuple(outputs[f"{branch}_logits"].shape) == (1, 32, 32, NUM_CLASSES)
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "main_miou" in history.history
    plain = mbakt_tf.MBAKT.from_backbone(
        backbones.with_rescaling(hub_resnet()), NUM_CLASSES, task="segmentation",
        config=_config(mode="plain"))
    assert model.main_model().count_params() == plain.main_model().count_params()


# ------------------------------------------------------------------- export


@pytest.mark.parametrize("family, formats", [
    ("mobilenet", ()),  # the SavedModel alone (TFLite files come from it)
    pytest.param("resnet", ("float32",), marks=pytest.mark.slow),
    pytest.param("mobilenet", ("float32",), marks=pytest.mark.slow),
])
def test_main_branch_exports(family, formats, tmp_path):
    backbone = backbones.with_rescaling(HUB_BACKBONES[family](), IMAGENET_SCALE, IMAGENET_OFFSET)
    model = mbakt_tf.MBAKT.from_backbone(backbone, NUM_CLASSES, config=_config())
    model.compile()
    images, labels = tiny_batch(SHAPE, NUM_CLASSES, batch=16)  # untrained: test_classification_... trains one
    result = export.export_model(
        model, str(tmp_path), images, images, labels,
        config=export.ExportConfig(formats=formats, representative_samples=8, benchmark_runs=0,
                                   fresh_process_check=False),
    )  # strict: raises if any check (parity, no branch variables, parameter counts) fails
    assert result.ok and {"saved_model", *formats} <= set(result.files)
    assert result.manifest["model"]["parameters"] == model.main_model().count_params()


# --------------------------------------------------------- tf_keras bridge


@pytest.fixture(scope="module")
def hub_bridges(tmp_path_factory):
    """Main branches (peers trained beside them) on both families, written for the tfmot process."""
    root = tmp_path_factory.mktemp("hub_bridges")
    described = {}
    for family, build in HUB_BACKBONES.items():
        backbone = backbones.with_rescaling(build(), IMAGENET_SCALE, IMAGENET_OFFSET)
        main = mbakt_tf.MBAKT.from_backbone(backbone, NUM_CLASSES, config=_config()).main_model()
        _randomize(main)
        directory = str(root / family)
        tf_keras_bridge.write_bridge(main, directory, num_probe=4)
        described[family] = (directory, tf_keras_bridge.read_bridge(directory)[0])
    return described


def test_tf_keras_bridge_rebuilds_hub_main_branches(hub_bridges, tmp_path):
    python = _tfmot_python()
    families = list(hub_bridges)
    results = optimize.check_bridges([hub_bridges[f][0] for f in families], str(tmp_path), python=python)
    for family, parity in zip(families, results):
        assert parity["max_abs_reference"] > 0.1, (family, parity)  # not trivially small outputs
        assert parity["max_abs_diff"] <= tf_keras_bridge.PARITY_ATOL and parity["passed"], (family, parity)
    mobilenet_classes = {node["class"] for node in hub_bridges["mobilenet"][1]["nodes"]}
    # squeeze-and-excite's spatial mean, hard_swish spelled out
    assert {"GlobalAveragePooling2D", "Multiply", "ReLU"} <= mobilenet_classes


class _ChannelMax(keras.layers.Layer):
    """A custom block (as keras-hub's are) whose call holds an op the bridge has no layer for."""

    def call(self, x):
        return keras.ops.max(x, axis=-1, keepdims=True)


def test_bridge_error_names_the_op_and_the_layer_it_sits_in():
    image = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, name="conv")(image)
    x = _ChannelMax(name="channel_max_block")(x)
    with pytest.raises(tf_keras_bridge.UnsupportedLayerError,
                       match="Cannot convert layer 'max' \\(in 'channel_max_block'\\)"):
        tf_keras_bridge.describe(keras.Model(image, x))


# --------------------------------------------------------------- bad input


def _not_backbones():
    converter = keras_hub.layers.ResNetImageConverter(scale=1 / 255.0)
    return {
        "task": (keras_hub.models.ResNetImageClassifier(backbone=hub_resnet(), num_classes=3),
                 "is a task: pass its `.backbone`"),
        "preprocessor": (keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter),
                         "preprocesses inputs"),
        "converter": (converter, "preprocesses inputs"),
        "text backbone": (keras_hub.models.BertBackbone(
            vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=4,
            max_sequence_length=8), "not one image input"),
    }


def test_hub_objects_that_are_not_image_backbones_are_refused():
    for what, (obj, hint) in _not_backbones().items():
        for task, input_shape in (("classification", None), ("segmentation", None), ("classification", SHAPE)):
            with pytest.raises(ValueError, match="is not a backbone") as error:
                mbakt_tf.MBAKT.from_backbone(obj, NUM_CLASSES, input_shape=input_shape, task=task)
            message = str(error.value)
            assert "keras-hub image Backbone" in message and hint in message, (what, message)


def test_hub_backbones_without_stages_or_static_shape_are_refused():
    vit = keras_hub.models.ViTBackbone(
        image_shape=SHAPE, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8)
    with pytest.raises(ValueError, match="has no stages.*keras-hub image Backbone"):
        mbakt_tf.MBAKT.from_backbone(vit, NUM_CLASSES)
    with pytest.raises(ValueError, match="static image input shape.*image_shape .keras-hub."):
        mbakt_tf.MBAKT.from_backbone(hub_resnet(image_shape=(None, None, 3)), NUM_CLASSES)
