"""Named backbones, built offline from explicit arguments, and their stage outputs.

keras-cv presets download their configs, so every named backbone here is built
from the arguments those presets hold. Besides keras-cv's ImageNet-style
networks there is a small-image ResNet (3x3 stem, no max-pool) for 28-32 px
inputs, where keras-cv's stride-4 stem would leave 1-2 px at the last stage.

Example:
>>> backbone = build_backbone("small_resnet8", input_shape=(28, 28, 1))
>>> [tuple(t.shape[1:]) for t in stage_outputs(backbone)]
[(28, 28, 16), (14, 14, 32), (7, 7, 64)]
"""

import keras
import numpy as np

# Batch-norm statistics that settle within a few hundred steps (Keras defaults to 0.99).
BN_MOMENTUM = 0.9

SMALL_RESNETS = {
    "small_resnet8": dict(filters=(16, 32, 64), blocks=(1, 1, 1)),
    "small_resnet14": dict(filters=(32, 64, 128), blocks=(2, 2, 2)),
    "small_resnet20": dict(filters=(16, 32, 64), blocks=(3, 3, 3)),
    "small_resnet18": dict(filters=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),
}

_MOBILENET_V3_SMALL = dict(
    stackwise_expansion=[1, 72.0 / 16, 88.0 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
    stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
    stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
    stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
    stackwise_se_ratio=[0.25, None, None, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25],
    stackwise_activation=["relu", "relu", "relu"] + ["hard_swish"] * 8,
)

KERAS_CV_BACKBONES = {
    "resnet18": (
        "ResNetBackbone",
        dict(
            stackwise_filters=[64, 128, 256, 512],
            stackwise_blocks=[2, 2, 2, 2],
            stackwise_strides=[1, 2, 2, 2],
            block_type="basic_block",
        ),
    ),
    "resnet50": (
        "ResNetBackbone",
        dict(
            stackwise_filters=[64, 128, 256, 512],
            stackwise_blocks=[3, 4, 6, 3],
            stackwise_strides=[1, 2, 2, 2],
            block_type="block",
        ),
    ),
    "mobilenet_v3_small": ("MobileNetV3Backbone", _MOBILENET_V3_SMALL),
    "cspdarknet_tiny": (
        "CSPDarkNetBackbone",
        dict(stackwise_channels=[48, 96, 192, 384], stackwise_depth=[1, 3, 3, 1]),
    ),
}

MOBILE_BACKBONE_CLASSES = ("MobileNetV3Backbone", "EfficientNetLiteBackbone")


def available_backbones():
    """Names accepted by `build_backbone`, sorted."""
    return sorted(list(SMALL_RESNETS) + list(KERAS_CV_BACKBONES))


def build_backbone(name, input_shape):
    """Builds the backbone called `name` for images of `input_shape` (H, W, C).

    Every named backbone takes raw pixels in [0, 255] and rescales them itself.
    """
    if name in SMALL_RESNETS:
        return small_image_resnet(input_shape=input_shape, name=name, **SMALL_RESNETS[name])
    if name in KERAS_CV_BACKBONES:
        import keras_cv

        class_name, kwargs = KERAS_CV_BACKBONES[name]
        backbone_class = getattr(keras_cv.models, class_name)
        return backbone_class(include_rescaling=True, input_shape=tuple(input_shape), **kwargs)
    raise ValueError(
        f"Unknown backbone {name!r}. Available: {', '.join(available_backbones())}, "
        "or pass a keras-cv backbone object."
    )


def is_mobile_backbone(backbone):
    """True for backbones built from depthwise convolutions (MobileNet-style)."""
    return type(backbone).__name__ in MOBILE_BACKBONE_CLASSES or any(
        isinstance(layer, keras.layers.DepthwiseConv2D) for layer in backbone.layers
    )


def _conv_bn_relu(x, filters, strides, name):
    x = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, filters, strides, name):
    shortcut = x
    y = _conv_bn_relu(x, filters, strides, name=f"{name}_1")
    y = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
        name=f"{name}_2_conv",
    )(y)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_2_bn")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, kernel_initializer="he_normal",
            name=f"{name}_shortcut_conv",
        )(x)
        shortcut = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_shortcut_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def small_image_resnet(filters, blocks, input_shape, include_rescaling=True, name="small_resnet"):
    """A CIFAR-style ResNet of basic blocks: 3x3 stem, no max-pool, stride 2 per stage.

    Stage `i` ends in the layer `stage{i}_out`; the model lists those names in
    `pyramid_level_inputs` like keras-cv backbones do. With `include_rescaling`
    it takes raw pixels in [0, 255].

    Example:
    >>> model = small_image_resnet((16, 32), (1, 1), input_shape=(32, 32, 3))
    >>> tuple(model.output.shape)
    (None, 16, 16, 32)
    """
    if len(filters) != len(blocks):
        raise ValueError(f"filters {filters} and blocks {blocks} must have the same length.")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if include_rescaling:
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
    x = _conv_bn_relu(x, filters[0], 1, name="stem")
    levels = {}
    for stage, (stage_filters, stage_blocks) in enumerate(zip(filters, blocks), start=1):
        for block in range(stage_blocks):
            strides = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, stage_filters, strides, name=f"stage{stage}_block{block + 1}")
        x = keras.layers.Identity(name=f"stage{stage}_out")(x)
        levels[f"P{stage}"] = f"stage{stage}_out"
    model = keras.Model(inputs, x, name=name)
    model.pyramid_level_inputs = levels
    return model


def static_input_shape(backbone):
    """The backbone's `(height, width, channels)`; `ValueError` unless all three are known.

    Example:
    >>> static_input_shape(build_backbone("small_resnet8", input_shape=(28, 28, 1)))
    (28, 28, 1)
    """
    input_shape = tuple(backbone.input.shape[1:])
    if len(input_shape) != 3 or None in input_shape:
        raise ValueError(
            "The backbone needs a static image input shape (height, width, channels), got "
            f"{input_shape}: build it with an explicit input_shape."
        )
    return input_shape


def stage_layer_names(backbone):
    """Names of the layers that end each stage, shallowest first, last stage included.

    Reads keras-cv's `pyramid_level_inputs`; the backbone's own output is
    always the last stage.
    """
    levels = getattr(backbone, "pyramid_level_inputs", None)
    if not levels:
        raise ValueError(
            f"Backbone {backbone.name!r} has no `pyramid_level_inputs`: pass a keras-cv "
            "backbone or a model with a `pyramid_level_inputs` dict {level: layer name}."
        )
    names = [levels[key] for key in sorted(levels, key=lambda k: int(k.lstrip("P")))]
    output_layer = backbone.output._keras_history[0].name
    names = [n for n in names if n != output_layer]
    return names + [output_layer]


def stage_outputs(backbone):
    """Feature maps at the end of each stage, shallowest first; the last is the output."""
    return [backbone.get_layer(name).output for name in stage_layer_names(backbone)]


_PROBE = np.linspace(-6.0, 6.0, 49).astype("float32")
_KNOWN_ACTIVATIONS = ("silu", "relu", "gelu", "hard_silu", "sigmoid", "tanh")


def _activation_for_lambda(layer):
    """An `Activation` layer equal to a `Lambda` that only applies a known activation."""
    if not isinstance(layer, keras.layers.Lambda):
        return None
    try:
        values = np.asarray(layer.function(keras.ops.convert_to_tensor(_PROBE)))
    except Exception:  # any function we cannot probe is left alone
        return None
    for name in _KNOWN_ACTIVATIONS:
        expected = np.asarray(keras.activations.get(name)(_PROBE))
        if values.shape == expected.shape and np.allclose(values, expected, atol=1e-6):
            return keras.layers.Activation(name, name=layer.name)
    return None


def _has_lambda(layer):
    return any(isinstance(sub, keras.layers.Lambda) for sub in [layer] + list(layer._flatten_layers()))


def _replace_lambdas(layer):
    replacement = _activation_for_lambda(layer)
    if replacement is not None:
        return replacement
    if isinstance(layer, keras.Sequential) and _has_lambda(layer):
        return keras.models.clone_model(layer, clone_function=_replace_lambdas)
    return layer.__class__.from_config(layer.get_config())


def without_lambda_activations(backbone):
    """The backbone with `Lambda` activation layers turned into `Activation` layers.

    keras-cv's CSPDarkNet wraps SiLU in `Lambda` layers, which `load_model`
    refuses in safe mode. The copy gets the backbone's weights; a backbone
    without such layers is returned as it is.
    """
    top_level = [layer for layer in backbone.layers if isinstance(layer, keras.Sequential)]
    if not any(_has_lambda(layer) for layer in top_level) and not any(
        isinstance(layer, keras.layers.Lambda) for layer in backbone.layers
    ):
        return backbone
    functional = keras.Model(backbone.input, backbone.output, name=backbone.name)
    cleaned = keras.models.clone_model(functional, clone_function=_replace_lambdas)
    cleaned.set_weights(functional.get_weights())
    cleaned.pyramid_level_inputs = dict(getattr(backbone, "pyramid_level_inputs", {}))
    return cleaned
