"""The multi-branch network: backbone, main head, auxiliary branches, main-branch cut.

The network is one functional `keras.Model` from raw images to a dict:
`main_logits`, `main_features` (the backbone's final feature map) and, for
each auxiliary branch `branch_k`, `branch_k_logits` and `branch_k_features`
(shaped like `main_features`). With a gated ensemble it also holds `gate`,
the softmax weights of the branches (main first), shape `(batch, branches)`.

Three branch designs (`branch_design`):

* `"exit"`: an adaptation block and a head on an earlier stage (k = 1 is the
  shallowest). Cheap, and each branch is an early-exit model, but shallower
  than the main branch.
* `"peer"` (ONE / OKDDip): `num_peers` fresh copies of the last `peer_stages`
  stages on the shared trunk, each with its own head. Peers have the main
  branch's depth.
* `"deep"` (DKS / BYOT bottleneck branches): the branch on stage s continues
  with its own copies of the stages after s, then a head.

Example:
>>> from mbakt_tf import backbones
>>> backbone = backbones.build_backbone("small_resnet8", (28, 28, 1))
>>> network = build_multi_branch_network(backbone, num_classes=10)
>>> sorted(network.output)[:3]
['branch_1_features', 'branch_1_logits', 'branch_2_features']
>>> main = main_branch_model(network)
>>> tuple(main.output.shape)
(None, 10)
"""

import math

import keras
import numpy as np
import tensorflow as tf

from mbakt_tf import backbones as backbones_lib
from mbakt_tf.branch_names import MAIN, branch_names_of

ENSEMBLE = "ensemble"  # the teacher head of the metrics (the gated or mean logits)
BN_MOMENTUM = backbones_lib.BN_MOMENTUM  # one momentum for every batch norm we build


def batch_norms(model):
    """Every `BatchNormalization` layer of `model`, nested ones (keras-cv blocks) included, once each."""
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.setdefault(id(layer), layer)
    return list(found.values())


def recalibrate_batch_norms(network, batches):
    """Sets every batch norm's moving statistics to their value for the current weights ("precise BN").

    A batch norm's moving statistics are an exponential average of the batch
    statistics of past steps, so in inference mode a network runs on what its
    trunk computed over the last ~1 / (1 - momentum) steps. When the trunk
    moves fast, that is a network that no longer exists: MBAKT's generator
    loss sums every head's cross-entropy, so the shared trunk gets ~6x plain's
    gradient (a keras-cv CSPDarkNet segmenter: 5.9x at initialisation), and at
    Keras's momentum 0.99 its main head scored 0.52 mIoU in inference mode
    against 0.88 in training mode on the same training images (issue 21). A
    lower momentum trades that lag for noise (plain, same backbone, at 0.9:
    0.76 against 0.91). Averaging the batch statistics of `batches` at the
    current weights removes both (0.90 and 0.92 there; `experiments/inference_gap.py`).

    Only moving statistics change: weights, optimizer and random state do not
    (the forward passes run through `stateless_call`, in training mode, each
    batch on its own statistics as in training). The mean of the batches'
    variances is stored, as training-mode batch norm normalises by those.

    Args:
        network: a functional model (any `keras.Model` whose calls take images).
        batches: an iterable of image batches, or of `(images, labels, ...)`
            tuples (their first element is used).

    Returns:
        The number of batches averaged (0: nothing changed).

    Example:
    >>> images = np.random.default_rng(0).normal(3.0, 2.0, (64, 4, 4, 1)).astype("float32")
    >>> inputs = keras.Input((4, 4, 1))
    >>> norm = keras.layers.BatchNormalization()
    >>> network = keras.Model(inputs, norm(inputs))
    >>> recalibrate_batch_norms(network, [images[:32], images[32:]])
    2
    >>> bool(abs(float(norm.moving_mean[0]) - images.mean()) < 1e-4)
    True
    """
    norms = batch_norms(network)
    if not norms:
        return 0
    statistics = [v for layer in norms for v in (layer.moving_mean, layer.moving_variance)]
    position = {id(v): i for i, v in enumerate(network.non_trainable_variables)}
    wanted = [position[id(v)] for v in statistics]
    saved = [layer.momentum for layer in norms]
    totals, count = None, 0
    try:
        for layer in norms:  # momentum 0: the "moving" statistics a call returns are its batch's
            layer.momentum = 0.0
        step = _batch_statistics_function(network, wanted)
        trainable = [v.value for v in network.trainable_variables]
        non_trainable = [v.value for v in network.non_trainable_variables]
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            values = step(trainable, non_trainable, images)
            totals = values if totals is None else [t + v for t, v in zip(totals, values)]
            count += 1
    finally:
        for layer, momentum in zip(norms, saved):
            layer.momentum = momentum
    if count:
        for variable, total in zip(statistics, totals):
            variable.assign(total / count)
    return count


def _batch_statistics_function(network, wanted):
    """A compiled `(trainable, non_trainable, images) -> [batch statistics]`, cached on the network.

    Traced (on first use and for each new image shape) while every batch
    norm's momentum is 0, so the graph returns batch statistics whatever the
    layers' momentum is later.
    """
    cache = network.__dict__.setdefault("_mbakt_batch_statistics", {})
    key = tuple(wanted)
    if key not in cache:

        @tf.function(reduce_retracing=True)
        def step(trainable, non_trainable, images):
            _, updated = network.stateless_call(trainable, non_trainable, images, training=True)
            return [updated[i] for i in wanted]

        cache[key] = step
    return cache[key]


def branch_names(network):
    """`["main", "branch_1", ...]` for a network built here, main first."""
    return branch_names_of(network.output)


def classification_head(features, num_classes, name):
    """Global average pooling and a float32 dense layer giving logits."""
    pooled = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(features)
    return keras.layers.Dense(num_classes, dtype="float32", name=f"{name}_logits")(pooled)


def ensemble_gate(trunk_features, num_branches, main_weight=None, name="gate"):
    """ONE's gate: softmax weights over the branches from the shared trunk's pooled features.

    `main_weight` (in (0, 1)): the gate starts (zero kernel, bias) at this
    weight for the main branch (index 0) for every image, the others sharing
    the rest; `None` keeps Keras's initialisation (about uniform).
    """
    pooled = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(trunk_features)
    layer = keras.layers.Dense(num_branches, activation="softmax", dtype="float32", name=name)
    weights = layer(pooled)
    if main_weight is not None:
        bias = np.zeros(num_branches, "float32")
        bias[0] = math.log(main_weight * (num_branches - 1) / (1.0 - main_weight))
        layer.bias.assign(bias)
        layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))  # the prior holds for every image
    return weights


def copy_of_stages(backbone, stages, first_stage, name):
    """A fresh copy (new weights) of `backbone` from the end of stage `first_stage` to its output.

    `stages` are the backbone's stage outputs; the copy is a functional model
    taking stage `first_stage`'s feature map (1 = shallowest) and returning a
    map shaped like the backbone's output. It is rebuilt from the layers'
    configs, so keras-cv backbones (nested blocks included) copy the same way.

    Example:
    >>> from mbakt_tf import backbones
    >>> backbone = backbones.build_backbone("small_resnet8", (28, 28, 1))
    >>> stages = backbones.stage_outputs(backbone)
    >>> copy = copy_of_stages(backbone, stages, 2, "peer")
    >>> tuple(copy.input.shape[1:]), tuple(copy.output.shape[1:])
    ((14, 14, 32), (7, 7, 64))
    """
    original = keras.Model(stages[first_stage - 1], stages[-1], name=f"{name}_original")
    copy = keras.models.clone_model(original)
    copy.name = name
    return copy


def separable_adaptation(backbone, adaptation):
    """Whether `adaptation` ("conv", "separable", "auto") means depthwise-separable convolutions here."""
    if adaptation == "auto":
        return backbones_lib.is_mobile_backbone(backbone)
    return adaptation == "separable"


def adaptation_block(features, target_shape, separable, name):
    """Brings a stage's feature map to `target_shape` (H, W, C) of the final features.

    One stride-2 conv-BN-ReLU per halving of resolution (depthwise-separable
    when `separable`), widening channels towards the target; a 1x1 conv-BN-ReLU
    when the resolution already matches.
    """
    height, width, channels = target_shape
    source_height, source_channels = features.shape[1], features.shape[-1]
    steps = max(0, int(round(math.log2(source_height / height))))
    x = features
    if steps == 0:
        x = keras.layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_conv0")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn0")(x)
        x = keras.layers.ReLU(name=f"{name}_relu0")(x)
    for step in range(steps):
        step_channels = (
            channels if step == steps - 1 else min(channels, source_channels * 2 ** (step + 1))
        )
        if separable:
            conv = keras.layers.SeparableConv2D(
                step_channels, 3, strides=2, padding="same", use_bias=False,
                name=f"{name}_conv{step}",
            )
        else:
            conv = keras.layers.Conv2D(
                step_channels, 3, strides=2, padding="same", use_bias=False,
                kernel_initializer="he_normal", name=f"{name}_conv{step}",
            )
        x = conv(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{step}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{step}")(x)
    if tuple(x.shape[1:3]) != (height, width):
        x = keras.layers.Resizing(height, width, name=f"{name}_resize")(x)
    return x


def resolve_peer_stages(num_stages, peer_stages):
    """Checks that the last `peer_stages` stages can be copied (the trunk keeps >= 1 stage)."""
    if not 1 <= peer_stages < num_stages:
        raise ValueError(
            f"peer_stages={peer_stages}: this backbone has {num_stages} stages, so peers can "
            f"copy the last 1 to {num_stages - 1} of them (the trunk keeps at least one)."
        )
    return peer_stages


def resolve_branch_stages(num_stages, branch_stages=None):
    """Stage indices (1 = shallowest) that get a branch; the last stage never does."""
    candidates = list(range(1, num_stages))
    if branch_stages is None:
        return candidates[-3:]
    bad = [s for s in branch_stages if s not in candidates]
    if bad:
        raise ValueError(
            f"branch_stages {list(branch_stages)} includes {bad}: this backbone has "
            f"{num_stages} stages, so branches can attach to stages {candidates} "
            "(1 = shallowest; the last stage is the main branch)."
        )
    return sorted(set(branch_stages))


def build_multi_branch_network(
    backbone,
    num_classes,
    branch_stages=None,
    with_branches=True,
    adaptation="auto",
    branch_design="exit",
    peer_stages=1,
    num_peers=2,
    gated=False,
    gate_main_weight=None,
    name="mbakt_network",
):
    """Builds the multi-branch network on `backbone` (a functional keras model).

    Args:
        backbone: a keras-cv or keras-hub backbone, or any functional model
            with `pyramid_level_inputs` and a static input shape (see
            `backbones.stage_layer_names`). The network feeds it raw pixels: a
            backbone for [0, 255] images rescales them itself (keras-cv's
            `include_rescaling=True`, as `build_backbone` does; a keras-hub
            backbone through `backbones.with_rescaling`).
        num_classes: number of classes of every head.
        branch_stages: stage indices for auxiliary branches, see
            `resolve_branch_stages`.
        with_branches: False builds the plain network (main branch only).
        adaptation: `"conv"`, `"separable"` or `"auto"` (separable for mobile
            backbones); the adaptation blocks of `"exit"` branches.
        branch_design: `"exit"`, `"peer"` or `"deep"` (see the module doc).
        peer_stages: how many of the last stages each peer copies.
        num_peers: number of peers (`"peer"` only).
        gated: adds the ensemble gate output `gate` (ONE), computed from the
            pooled features where the branches split from the main branch.
        gate_main_weight: the main branch's initial gate weight (see
            `ensemble_gate`).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    backbones_lib.static_input_shape(backbone)  # raises unless the image size is known
    backbone = backbones_lib.without_lambda_activations(backbone)
    images = backbone.input
    stages = backbones_lib.stage_outputs(backbone)
    main_features = stages[-1]
    outputs = {
        f"{MAIN}_features": main_features,
        f"{MAIN}_logits": classification_head(main_features, num_classes, MAIN),
    }
    if not with_branches:
        return keras.Model(images, outputs, name=name)
    if branch_design == "exit":
        split = _exit_branches(outputs, backbone, stages, num_classes, branch_stages, adaptation)
    elif branch_design == "peer":
        first = len(stages) - resolve_peer_stages(len(stages), peer_stages)
        if num_peers < 1:
            raise ValueError(f"num_peers must be >= 1, got {num_peers}.")
        for k in range(1, num_peers + 1):
            copy = copy_of_stages(backbone, stages, first, f"branch_{k}_stages")
            _add_head(outputs, f"branch_{k}", copy(stages[first - 1]), num_classes)
        split = stages[first - 1]
    elif branch_design == "deep":
        chosen = resolve_branch_stages(len(stages), branch_stages)
        for k, stage in enumerate(chosen, start=1):
            copy = copy_of_stages(backbone, stages, stage, f"branch_{k}_stages")
            _add_head(outputs, f"branch_{k}", copy(stages[stage - 1]), num_classes)
        split = stages[chosen[0] - 1]
    else:
        raise ValueError(f"Unknown branch_design {branch_design!r}; known: 'exit', 'peer', 'deep'.")
    if gated:
        outputs["gate"] = ensemble_gate(split, len(branch_names_of(outputs)), gate_main_weight)
    return keras.Model(images, outputs, name=name)


def _add_head(outputs, branch, features, num_classes):
    outputs[f"{branch}_features"] = features
    outputs[f"{branch}_logits"] = classification_head(features, num_classes, branch)


def _exit_branches(outputs, backbone, stages, num_classes, branch_stages, adaptation):
    """Adds the `"exit"` branches; returns the shallowest stage they share with the main branch."""
    separable = separable_adaptation(backbone, adaptation)
    main_shape = tuple(outputs[f"{MAIN}_features"].shape[1:])
    chosen = resolve_branch_stages(len(stages), branch_stages)
    for k, stage in enumerate(chosen, start=1):
        branch = f"branch_{k}"
        adapted = adaptation_block(stages[stage - 1], main_shape, separable, f"{branch}_adapt")
        _add_head(outputs, branch, adapted, num_classes)
    return stages[chosen[0] - 1]


def main_branch_model(network, name="main_branch"):
    """The main branch alone: `keras.Model(image -> logits)` sharing the network's layers."""
    return keras.Model(network.input, network.output[f"{MAIN}_logits"], name=name)


def branch_model(network, branch, name=None):
    """Auxiliary branch `branch` (e.g. `"branch_1"`) with the backbone up to its stage."""
    if f"{branch}_logits" not in network.output:
        raise ValueError(f"Unknown branch {branch!r}. This network has {branch_names(network)}.")
    return keras.Model(network.input, network.output[f"{branch}_logits"], name=name or branch)
