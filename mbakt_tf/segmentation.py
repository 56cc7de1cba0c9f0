"""The encoder-decoder multi-branch network for semantic segmentation.

A light U-Net-style decoder runs over the backbone's stages, coarsest first:
decoder step 1 is a 3x3 conv-BN-ReLU on the backbone's last stage; every
later step upsamples (bilinear) to the next finer stage, concatenates that
stage's features (the skip connection) and applies a 3x3 conv-BN-ReLU. The
last step is at the finest stage's resolution; the *main head* (a 1x1 conv)
sits there and its logits are upsampled to the input resolution, so the main
branch predicts every pixel. With the small-image backbones (stage 1 at full
resolution) no upsampling is needed; keras-cv backbones start at stride 2-4.

*Auxiliary branches* come in the three designs of `branches`, per pixel. Every
branch ends in a 1x1 conv head whose logits are upsampled to the input
resolution, so every branch predicts the same full-resolution map and
per-pixel ce / kd apply unchanged.

* `"exit"`: the head sits on an earlier (coarser) decoder step. For the hint
  loss each branch also has an adaptation block (3x3 conv-BN-ReLU, or
  depthwise-separable for mobile backbones, then bilinear upsampling) that
  brings its decoder features to the shape of the main branch's final decoder
  features. The adaptation blocks feed only the hint: an early-exit model (the
  backbone, the decoder up to the branch's step and its head) does not hold
  them.
* `"peer"`: fresh copies of the last decoder step(s), with the same skip
  connections, on the shared encoder and earlier steps.
* `"deep"`: the branch on step s runs its own copies of the steps after s.

Decoder steps are numbered like backbone stages in `branches`: 1 is the
shallowest (coarsest, fewest layers), the last one carries the main head, and
`branch_stages` picks the steps that get a branch (default: the three before
the last; for `"exit"`, those of them no coarser than 1/8 of the input, see
`default_exit_steps`). The network is one functional `keras.Model` with the same dict
contract as `branches.build_multi_branch_network`, so `MBAKT`'s machinery,
`branches.main_branch_model` and `branches.branch_model` work on it:
`main_logits` (B, H, W, K), `main_features`, `branch_k_logits` (B, H, W, K),
`branch_k_features` (shaped like `main_features`).

Example:
>>> from mbakt_tf import backbones
>>> backbone = backbones.build_backbone("small_resnet8", (28, 28, 1))
>>> network = build_segmentation_network(backbone, num_classes=11)
>>> {k: tuple(v.shape[1:]) for k, v in sorted(network.output.items())}  # doctest: +NORMALIZE_WHITESPACE
{'branch_1_features': (28, 28, 32), 'branch_1_logits': (28, 28, 11),
 'branch_2_features': (28, 28, 32), 'branch_2_logits': (28, 28, 11),
 'main_features': (28, 28, 32), 'main_logits': (28, 28, 11)}
"""

import logging

import keras
import numpy as np

from mbakt_tf import backbones as backbones_lib
from mbakt_tf import branches as branches_lib

MAIN = branches_lib.MAIN
BN_MOMENTUM = branches_lib.BN_MOMENTUM
# Default decoder width at a stage: the stage's own width, clipped to this range. The floor
# matters: on Fashion-MNIST (small_resnet8) a 16-channel last step gave the main head 37% mIoU
# after 2 short epochs, 32 channels 46%.
MIN_DECODER_CHANNELS, MAX_DECODER_CHANNELS = 32, 128
# An "exit" head on a decoder step coarser than this fraction of the input side predicts a whole map
# from a few pixels: on a keras-cv CSPDarkNet (32x32 inputs) heads at 1x1 and 2x2 reached 0.22 and 0.28
# test mIoU and the main head lost 0.045 mIoU to plain over 2 seeds (peer decoders: +0.005; docs/no_harm.md).
MIN_EXIT_RESOLUTION = 1 / 8

logger = logging.getLogger("mbakt_tf.segmentation")


def resize_to(x, height, width, name):
    """Bilinear resize of a feature map to (height, width): `UpSampling2D` for integer factors."""
    source_height, source_width = x.shape[1], x.shape[2]
    if (source_height, source_width) == (height, width):
        return x
    if height % source_height == 0 and width % source_width == 0:
        factor = (height // source_height, width // source_width)
        layer = keras.layers.UpSampling2D(factor, interpolation="bilinear", dtype=x.dtype, name=name)
    else:
        layer = keras.layers.Resizing(height, width, interpolation="bilinear", dtype=x.dtype, name=name)
    return layer(x)


def _conv_bn_relu(x, filters, kernel_size, name, separable=False):
    if separable and kernel_size > 1:
        conv = keras.layers.SeparableConv2D(
            filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")
    else:
        conv = keras.layers.Conv2D(
            filters, kernel_size, padding="same", use_bias=False, kernel_initializer="he_normal",
            name=f"{name}_conv")
    x = conv(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def resolve_decoder_channels(stage_channels, decoder_channels=None):
    """Width of every decoder step, coarsest first.

    Args:
        stage_channels: channels of the backbone's stages, shallowest first.
        decoder_channels: `None` mirrors the backbone (a step has its stage's
            width, clipped to [`MIN_DECODER_CHANNELS`, `MAX_DECODER_CHANNELS`]),
            an int gives every step
            that width (FPN-like), a sequence gives one width per step
            (coarsest first).

    Example:
    >>> resolve_decoder_channels([16, 32, 64])
    (64, 32, 32)
    >>> resolve_decoder_channels([64, 128, 256, 512], 32)
    (32, 32, 32, 32)
    """
    num_steps = len(stage_channels)
    if decoder_channels is None:
        widths = [min(max(int(c), MIN_DECODER_CHANNELS), MAX_DECODER_CHANNELS) for c in reversed(stage_channels)]
    elif isinstance(decoder_channels, int):
        widths = [decoder_channels] * num_steps
    else:
        widths = [int(c) for c in decoder_channels]
        if len(widths) != num_steps:
            raise ValueError(
                f"decoder_channels {list(decoder_channels)} must give one width per decoder step: "
                f"this backbone has {num_steps} stages."
            )
    if min(widths) < 1:
        raise ValueError(f"decoder_channels must be positive, got {widths}.")
    return tuple(widths)


def segmentation_head(features, num_classes, height, width, name):
    """1x1 conv to float32 logits, bilinearly upsampled to (height, width)."""
    logits = keras.layers.Conv2D(num_classes, 1, dtype="float32", name=f"{name}_logits")(features)
    return resize_to(logits, height, width, name=f"{name}_upsample")


def hint_adaptation_block(features, target_shape, separable, name):
    """Brings decoder features to `target_shape` (H, W, C) of the main branch's decoder features.

    A 3x3 conv-BN-ReLU (depthwise-separable when `separable`) at the source
    resolution, then bilinear upsampling.
    """
    height, width, channels = target_shape
    x = _conv_bn_relu(features, channels, 3, name, separable=separable)
    return resize_to(x, height, width, name=f"{name}_upsample")


def _coarse_steps(chosen, sizes, input_size):
    """The steps of `chosen` whose (height, width) in `sizes` is under `MIN_EXIT_RESOLUTION` of the input's."""
    return [step for step, (h, w) in zip(chosen, sizes)
            if h < input_size[0] * MIN_EXIT_RESOLUTION or w < input_size[1] * MIN_EXIT_RESOLUTION]


def warn_coarse_exits(chosen, sizes, input_size):
    """Warns (naming them and the alternative) about exit heads on decoder steps coarser than
    `MIN_EXIT_RESOLUTION` of the input; returns their step indices.

    Example:
    >>> warn_coarse_exits([1, 2, 3], [(1, 1), (2, 2), (4, 4)], (32, 32))  # logs a warning
    [1, 2]
    """
    coarse = _coarse_steps(chosen, sizes, input_size)
    if coarse:
        shown = ", ".join(f"step {s} at {h}x{w}" for s, (h, w) in zip(chosen, sizes) if s in coarse)
        logger.warning(
            "branch_design='exit': exit heads on decoder %s predict a %dx%d map from a few pixels and "
            "can cost the main head (a keras-cv CSPDarkNet segmenter: -0.045 mIoU against plain over 2 "
            "seeds, docs/no_harm.md). Use branch_design='peer' (+0.005 there) or branch_stages without "
            "steps %s.", shown, input_size[0], input_size[1], coarse)
    return coarse


def default_exit_steps(chosen, sizes, input_size):
    """The default exit steps: `chosen` without the steps coarser than `MIN_EXIT_RESOLUTION` of the
    input (logged at INFO level), or the finest one when all are.

    On the keras-cv CSPDarkNet segmenter of docs/no_harm.md, exits on steps 1-3 (1x1, 2x2, 4x4 on
    32x32 images) scored 0.880 test mIoU against plain's 0.925; the 4x4 step's exit alone, 0.948
    (2 seeds each).

    Example:
    >>> default_exit_steps([1, 2, 3], [(1, 1), (2, 2), (4, 4)], (32, 32))
    [3]
    >>> default_exit_steps([1, 2], [(7, 7), (14, 14)], (28, 28))
    [1, 2]
    """
    coarse = _coarse_steps(chosen, sizes, input_size)
    kept = [step for step in chosen if step not in coarse] or [chosen[-1]]
    if coarse:
        logger.info("branch_design='exit': no default exit head on decoder steps %s (coarser than 1/%d of "
                    "the %dx%d input, docs/no_harm.md); exits on steps %s.", [s for s in coarse if s not in kept],
                    round(1 / MIN_EXIT_RESOLUTION), input_size[0], input_size[1], kept)
    return kept


def build_segmentation_network(
    backbone,
    num_classes,
    branch_stages=None,
    with_branches=True,
    adaptation="auto",
    decoder_channels=None,
    gated=False,
    gate_main_weight=None,
    branch_design="exit",
    peer_stages=1,
    num_peers=2,
    name="mbakt_segmentation_network",
):
    """Builds the multi-branch encoder-decoder on `backbone` (a functional keras model).

    Args:
        backbone: a keras-cv or keras-hub backbone, or any functional model
            with `pyramid_level_inputs` and a static input shape; it receives raw
            pixels (see `branches.build_multi_branch_network`).
        num_classes: classes per pixel (background included).
        branch_stages: decoder steps (1 = coarsest) with an auxiliary branch,
            see `branches.resolve_branch_stages`; the last step is the main
            branch's (`"exit"` and `"deep"`).
        with_branches: False builds the plain encoder-decoder (main head only).
        adaptation: `"conv"`, `"separable"` or `"auto"` (separable for mobile
            backbones): the kind of the hint adaptation blocks.
        decoder_channels: see `resolve_decoder_channels`.
        gated: adds the ensemble gate output `gate` (one softmax weight per
            head and image, from the backbone's pooled last stage).
        gate_main_weight: the main head's initial gate weight.
        branch_design: `"exit"` (a head and a hint adaptation block on an
            earlier decoder step), `"peer"` (`num_peers` fresh copies of the
            last `peer_stages` decoder steps, each with its own head, on the
            shared encoder and earlier steps: ONE's peers, per pixel) or
            `"deep"` (the branch on step s continues with its own copies of
            the steps after s). Copies take the same skip connections.
        peer_stages, num_peers: see `branch_design`.

    Returns:
        A functional `keras.Model(image -> dict)`, see the module doc.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}.")
    input_shape = backbones_lib.static_input_shape(backbone)
    height, width = input_shape[:2]
    backbone = backbones_lib.without_lambda_activations(backbone)
    images = backbone.input
    stages = backbones_lib.stage_outputs(backbone)
    widths = resolve_decoder_channels([s.shape[-1] for s in stages], decoder_channels)

    skips = list(reversed(stages[:-1]))  # the skip connection of step j is skips[j - 2]

    def decoder_steps(x, first, prefix):
        """Decoder steps `first`..last on `x` (the output of step `first - 1`, or the last stage)."""
        built = []
        for j in range(first, len(stages) + 1):
            if j > 1:
                skip = skips[j - 2]
                x = resize_to(x, skip.shape[1], skip.shape[2], name=f"{prefix}step{j}_upsample")
                x = keras.layers.Concatenate(name=f"{prefix}step{j}_concat")([x, skip])
            x = _conv_bn_relu(x, widths[j - 1], 3, name=f"{prefix}step{j}")
            built.append(x)
        return built

    # Decoder, coarsest step first: step j sits at the resolution of stage N - j + 1.
    steps = decoder_steps(stages[-1], 1, "decoder_")
    main_features = steps[-1]
    outputs = {
        f"{MAIN}_features": main_features,
        f"{MAIN}_logits": segmentation_head(main_features, num_classes, height, width, MAIN),
    }
    if not with_branches:
        return keras.Model(images, outputs, name=name)
    if branch_design == "exit":
        separable = branches_lib.separable_adaptation(backbone, adaptation)
        chosen = branches_lib.resolve_branch_stages(len(steps), branch_stages)
        sizes = [tuple(steps[s - 1].shape[1:3]) for s in chosen]
        if branch_stages is None:
            chosen = default_exit_steps(chosen, sizes, (height, width))
        else:
            warn_coarse_exits(chosen, sizes, (height, width))
        for k, step in enumerate(chosen, start=1):
            branch = f"branch_{k}"
            features = steps[step - 1]
            outputs[f"{branch}_features"] = hint_adaptation_block(
                features, tuple(main_features.shape[1:]), separable, f"{branch}_adapt")
            outputs[f"{branch}_logits"] = segmentation_head(features, num_classes, height, width, branch)
    elif branch_design in ("peer", "deep"):
        if branch_design == "peer":
            first = len(steps) - branches_lib.resolve_peer_stages(len(steps), peer_stages) + 1
            if num_peers < 1:
                raise ValueError(f"num_peers must be >= 1, got {num_peers}.")
            starts = [first] * num_peers
        else:
            starts = [s + 1 for s in branches_lib.resolve_branch_stages(len(steps), branch_stages)]
        for k, start in enumerate(starts, start=1):
            branch = f"branch_{k}"
            features = decoder_steps(steps[start - 2], start, f"{branch}_decoder_")[-1]
            outputs[f"{branch}_features"] = features  # shaped like main_features: no adaptation
            outputs[f"{branch}_logits"] = segmentation_head(features, num_classes, height, width, branch)
    else:
        raise ValueError(f"Unknown branch_design {branch_design!r}; known: 'exit', 'peer', 'deep'.")
    if gated:
        outputs["gate"] = branches_lib.ensemble_gate(
            stages[-1], len(branches_lib.branch_names_of(outputs)), gate_main_weight)
    return keras.Model(images, outputs, name=name)


def confusion_matrix(labels, predictions, num_classes):
    """`(num_classes, num_classes)` counts, row = label, column = prediction (numpy).

    Pixels whose label is outside [0, num_classes) (an ignore label) are left out.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    valid = (labels >= 0) & (labels < num_classes)
    counts = np.bincount(num_classes * labels[valid] + predictions[valid], minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def mean_iou(labels, predictions, num_classes):
    """Mean over classes of TP / (TP + FP + FN), over classes in the labels or the predictions.

    The numpy twin of `keras.metrics.MeanIoU` (what `MBAKTSegmenter` reports),
    used where outputs are numpy arrays (export parity).

    Example:
    >>> mean_iou(np.array([0, 0, 1, 255]), np.array([0, 1, 1, 0]), num_classes=2)
    0.5
    """
    matrix = confusion_matrix(labels, predictions, num_classes)
    intersection = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present])) if present.any() else 0.0
