"""Named backbones, built offline from explicit arguments, and their stage outputs.

keras-cv presets download their configs, so every named backbone here is built
from the arguments those presets hold. Besides keras-cv's ImageNet-style
networks there is a small-image ResNet (3x3 stem, no max-pool) for 28-32 px
inputs, where keras-cv's stride-4 stem would leave 1-2 px at the last stage.

Backbone objects are accepted from keras-cv (`pyramid_level_inputs`), from
keras-hub (`keras_hub.models.Backbone` subclasses: their `pyramid_outputs`, or
for image backbones without them, such as `MobileNetBackbone`, the last layer
at each resolution) and any functional model with `pyramid_level_inputs`.
keras-hub backbones take preprocessed images; `with_rescaling` puts their
image converter's scaling in front so they take raw [0, 255] pixels.

Example:
>>> backbone = build_backbone("small_resnet8", input_shape=(28, 28, 1))
>>> [tuple(t.shape[1:]) for t in stage_outputs(backbone)]
[(28, 28, 16), (14, 14, 32), (7, 7, 64)]
"""

import math

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

MOBILE_BACKBONE_CLASSES = (
    "MobileNetV3Backbone", "EfficientNetLiteBackbone",  # keras-cv
    "MobileNetBackbone", "MobileNetV5Backbone",  # keras-hub
)

ACCEPTED_BACKBONES = (
    "a backbone name (backbones.available_backbones()), a keras-cv backbone, a keras-hub image "
    "Backbone (e.g. keras_hub.models.ResNetBackbone or MobileNetBackbone, built with a static "
    "image_shape), or a functional keras.Model with a `pyramid_level_inputs` dict {level: layer name}"
)


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
        "or pass a keras-cv or keras-hub backbone object."
    )


def is_mobile_backbone(backbone):
    """True for backbones built from depthwise convolutions (MobileNet-style), nested ones included."""
    return type(backbone).__name__ in MOBILE_BACKBONE_CLASSES or any(
        _is_depthwise(layer) for layer in backbone._flatten_layers(include_self=False, recursive=True)
    )


def _is_depthwise(layer):
    """A `DepthwiseConv2D`, or a `Conv2D` with one group per filter (keras-hub's MobileNet)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return True
    groups = getattr(layer, "groups", 1)
    return isinstance(layer, keras.layers.Conv2D) and groups > 1 and groups == layer.filters


def _keras_hub_bases(obj):
    """Names of the keras-hub classes `obj` is an instance of (empty for anything else)."""
    return {cls.__name__ for cls in type(obj).__mro__ if cls.__module__.startswith("keras_hub.")}


def is_keras_hub_backbone(obj):
    """True for a `keras_hub.models.Backbone` (checked without importing keras-hub)."""
    return "Backbone" in _keras_hub_bases(obj)


def check_backbone(backbone):
    """Raises `ValueError` saying what is accepted unless `backbone` is a model with one image input.

    keras-hub tasks (`ImageClassifier` ...) and preprocessors are refused with
    a pointer to the part that is a backbone.

    Example:
    >>> check_backbone(keras.layers.Dense(3))
    Traceback (most recent call last):
    ...
    ValueError: Dense is not a backbone. Pass a backbone name (...
    """
    kind = type(backbone).__name__
    hub = _keras_hub_bases(backbone)
    if "Task" in hub:
        hint = f" keras-hub's {kind} is a task: pass its `.backbone` (and see `with_rescaling`)."
    elif hub & {"Preprocessor", "ImageConverter"} or (hub and not isinstance(backbone, keras.Model)):
        hint = (f" keras-hub's {kind} preprocesses inputs: pass the backbone itself, and its image "
                "converter's `scale`/`offset` to `backbones.with_rescaling`.")
    elif not isinstance(backbone, keras.Model):
        hint = ""
    else:
        try:
            inputs = list(backbone.inputs or [])
        except (AttributeError, ValueError):  # a subclassed model never called on an Input
            inputs = []
        if len(inputs) == 1 and len(inputs[0].shape) == 4:
            return
        hint = f" It has {len(inputs)} input(s) of shapes {[tuple(t.shape) for t in inputs]}, not one image input."
    raise ValueError(f"{kind} is not a backbone. Pass {ACCEPTED_BACKBONES}.{hint}")


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

    Also refuses what is not a backbone at all (see `check_backbone`).

    Example:
    >>> static_input_shape(build_backbone("small_resnet8", input_shape=(28, 28, 1)))
    (28, 28, 1)
    """
    check_backbone(backbone)
    input_shape = tuple(backbone.input.shape[1:])
    if len(input_shape) != 3 or None in input_shape:
        raise ValueError(
            "The backbone needs a static image input shape (height, width, channels), got "
            f"{input_shape}: build it with an explicit input_shape (keras-cv) or image_shape "
            "(keras-hub)."
        )
    return input_shape


def _level(key):
    return int(str(key).lstrip("P"))


def _producer(tensor):
    """The layer that outputs `tensor`, if `backbone.get_layer(name).output` gives it back."""
    layer = tensor._keras_history[0]
    if isinstance(layer, keras.layers.Layer) and layer.output is tensor:
        return layer
    return None


def _reaches_input_only_through(output, stage):
    """True when every path from the model input to `output` passes through `stage`."""
    seen, pending = set(), [output]
    while pending:
        tensor = pending.pop()
        if tensor is stage or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation, node_index, _ = tensor._keras_history
        node = operation._inbound_nodes[node_index]
        if isinstance(operation, keras.layers.InputLayer) or not node.input_tensors:
            return False
        pending.extend(node.input_tensors)
    return True


def _spatial(tensor):
    return tuple(tensor.shape[1:3])


def _inferred_levels(backbone):
    """{"P<log2 stride>": layer name}: the last layer at each resolution, where the graph can be cut.

    For keras-hub image backbones without `pyramid_outputs` (e.g.
    `MobileNetBackbone`): a stage ends at the last top-level layer of its
    resolution (padding layers aside), kept only if the backbone's output
    depends on the input through that layer alone (`branches.copy_of_stages`
    starts its copies there).
    """
    if len(backbone.output.shape) != 4:
        return {}  # e.g. a ViT: tokens, not feature maps
    height = backbone.input.shape[1]
    output_height = _spatial(backbone.output)[0]
    last = {}
    for layer in backbone.layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.ZeroPadding2D)):
            continue
        if hasattr(layer.output, "shape") and len(layer.output.shape) == 4:
            last[_spatial(layer.output)] = layer
    levels = {}
    for (size, _), layer in sorted(last.items(), key=lambda item: -(item[0][0] or 0)):
        if size is None or not output_height <= size < height:
            continue
        if not _reaches_input_only_through(backbone.output, layer.output):
            continue  # a cut through a skip connection
        levels[f"P{int(round(math.log2(height / size)))}"] = layer.name  # a later, smaller one wins
    return levels


def pyramid_levels(backbone):
    """{level: layer name} of the backbone's stages, from whatever the backbone declares.

    keras-cv's `pyramid_level_inputs` as they are; keras-hub's `pyramid_outputs`
    (tensors) by the layers that produce them, less levels at the output's
    resolution (the output is the last stage); for other keras-hub backbones the
    levels `_inferred_levels` finds. Empty when the backbone declares none.
    """
    levels = getattr(backbone, "pyramid_level_inputs", None)
    if levels:
        return dict(levels)
    if not is_keras_hub_backbone(backbone):
        return {}
    outputs = getattr(backbone, "pyramid_outputs", None)
    if not outputs:
        return _inferred_levels(backbone)
    levels = {}
    for key, tensor in outputs.items():
        layer = _producer(tensor)
        if layer is None:
            raise ValueError(
                f"Pyramid level {key} of {backbone.name!r} comes from "
                f"{type(tensor._keras_history[0]).__name__} {tensor._keras_history[0].name!r}, "
                "which is not a layer with that tensor as its output: its stages cannot be cut out."
            )
        if tensor is backbone.output or _spatial(tensor) != _spatial(backbone.output):
            levels[key] = layer.name
    return levels


def stage_layer_names(backbone):
    """Names of the layers that end each stage, shallowest first, last stage included.

    Reads `pyramid_levels` (keras-cv's `pyramid_level_inputs`, keras-hub's
    `pyramid_outputs`); the backbone's own output is always the last stage.
    """
    levels = pyramid_levels(backbone)
    if not levels:
        raise ValueError(
            f"Backbone {backbone.name!r} ({type(backbone).__name__}) has no stages: no "
            "`pyramid_level_inputs`, no keras-hub `pyramid_outputs`, and no image resolution "
            f"steps to cut at. Pass {ACCEPTED_BACKBONES}."
        )
    names = [levels[key] for key in sorted(levels, key=_level)]
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
    cleaned.pyramid_level_inputs = pyramid_levels(backbone)
    return cleaned


def with_rescaling(backbone, scale=1.0 / 255.0, offset=0.0, name=None):
    """`backbone` behind `Rescaling(scale, offset)`, so it takes raw [0, 255] pixels.

    MBAKT feeds backbones raw pixels. keras-cv backbones rescale them
    themselves (`include_rescaling=True`); keras-hub backbones expect what
    their image converter makes, `image * scale + offset`. This returns a
    functional copy of `backbone` (same layer names, a copy of its weights)
    with that scaling as its first layer and `pyramid_level_inputs` naming its
    stages, accepted wherever a backbone is.

    Args:
        backbone: a functional backbone with stages (see `stage_layer_names`).
        scale, offset: floats, or one per channel; for a keras-hub preset pass
            its image converter's, e.g.
            `keras_hub.layers.ResNetImageConverter.from_preset(p).scale`.
        name: of the copy (default: the backbone's).

    Example:
    >>> import keras_hub
    >>> hub = keras_hub.models.ResNetBackbone(
    ...     input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
    ...     stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
    ...     image_shape=(32, 32, 3))
    >>> backbone = with_rescaling(hub)
    >>> [layer.name for layer in backbone.layers[:3]], backbone.count_params() == hub.count_params()
    (['image', 'input_rescaling', 'conv1_pad'], True)
    """
    input_shape = static_input_shape(backbone)
    levels = pyramid_levels(backbone)
    stage_layer_names(backbone)  # raises unless the stages are known
    images = keras.Input(shape=input_shape, name="image")
    rescaled = keras.layers.Rescaling(scale, offset, name="input_rescaling")(images)

    def call_function(layer, *args, **kwargs):
        return layer(*[rescaled if arg is images else arg for arg in args], **kwargs)

    copies = {}  # original layer name -> its copy (keras-hub layers may rename themselves in from_config)

    def clone_function(layer):
        copies[layer.name] = layer.__class__.from_config(layer.get_config())
        return copies[layer.name]

    functional = keras.Model(backbone.input, backbone.output, name=name or backbone.name)
    copy = keras.models.clone_model(
        functional, input_tensors=images, clone_function=clone_function, call_function=call_function
    )
    copy.set_weights(functional.get_weights())
    copy.pyramid_level_inputs = {level: copies[layer].name for level, layer in levels.items()}
    return copy


def resolve_backbone(backbone, input_shape=None):
    """A backbone name built for `input_shape`, or a backbone object checked against it."""
    if isinstance(backbone, str):
        if input_shape is None:
            raise ValueError("input_shape=(height, width, channels) is required with a backbone name.")
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                f"input_shape must be (height, width, channels), got {input_shape} "
                f"(rank {len(input_shape)})."
            )
        return build_backbone(backbone, input_shape)
    check_backbone(backbone)  # keras-hub tasks and preprocessors: says what is accepted
    if input_shape is not None and tuple(input_shape) != tuple(backbone.input.shape[1:]):
        raise ValueError(
            f"input_shape {tuple(input_shape)} differs from the backbone's "
            f"{tuple(backbone.input.shape[1:])}."
        )
    return backbone
