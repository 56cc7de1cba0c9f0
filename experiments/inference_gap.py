"""Issue 21: a keras-cv CSPDarkNet segmenter whose main head differs between inference and training mode.

The issue's case: a keras-cv `CSPDarkNetBackbone` (16/32/64/128 channels, depth 1) segmenter on the
synthetic shapes (1,024 images, 32x32x3, ignored outlines), SGD 0.05 momentum 0.9, 8 epochs,
seed 0, `MBAKTConfig(mode="mbakt")` against `mode="plain"`. For each run it prints one JSON line:

* `train_mode_last_epoch`: the last epoch's running training mIoU of the main head (what `fit` logs);
* `inference_train` / `batch_stats_train`: the main head's mIoU on the (unaugmented) training images
  in inference mode, and in training mode (batch statistics, run through `stateless_call`, so the
  moving statistics are not touched);
* `recalibrated_train`: inference mode after replacing every batch norm's moving statistics by the
  mean of its batch statistics over the training images ("precise BN"): when this closes the gap,
  the moving statistics are the cause, not the weights;
* `test`: the main head's test mIoU (inference mode);
* `trunk_grad_ratio`: at initialisation, the norm of the generator loss's gradient on the backbone's
  variables over that of the main head's cross-entropy alone (how much faster the shared trunk moves
  than plain's under the same optimizer).

`--no_precise_bn` is the library before the fix: the moving statistics as Keras's exponential
averages leave them (no `branches.recalibrate_batch_norms` at epoch ends). `--bn_momentum=0.9` sets
the backbone's batch norms to that momentum (keras-cv builds them at 0.99): the fix that was tried
first, which trades the lag for noise.

    nice -n 19 .venv/bin/python experiments/inference_gap.py --no_precise_bn plain mbakt   # before
    nice -n 19 .venv/bin/python experiments/inference_gap.py plain mbakt                   # after
    nice -n 19 .venv/bin/python experiments/inference_gap.py --no_precise_bn --bn_momentum=0.9 plain mbakt
"""

import argparse
import json
import time

import keras
import keras_cv
import numpy as np
import tensorflow as tf
from keras import ops

import mbakt_tf
from mbakt_tf import branches, data, losses, segmentation

SHAPE = (32, 32, 3)
OURS = ("decoder_", "branch_", "main_", "gate")  # layers the library builds; the rest is the backbone


def load(augment=True):
    return data.load_segmentation(
        "synthetic", batch_size=16, validation_fraction=0.1, seed=5, train_limit=1024, test_limit=64,
        augment=augment,
        synthetic_kwargs=dict(image_shape=SHAPE, num_train=1024, num_test=64, ignore_border=True))


def build(mode, num_classes, ignore_label, bn_momentum=None):
    backbone = keras_cv.models.CSPDarkNetBackbone(
        stackwise_channels=[16, 32, 64, 128], stackwise_depth=[1, 1, 1, 1], include_rescaling=True,
        input_shape=SHAPE)
    model = mbakt_tf.MBAKT.from_backbone(
        backbone, num_classes=num_classes, input_shape=SHAPE, task="segmentation",
        ignore_label=ignore_label, config=mbakt_tf.MBAKTConfig(mode=mode))
    if bn_momentum is not None:
        for layer in branches.batch_norms(model.network):
            if not layer.name.startswith(OURS):
                layer.momentum = bn_momentum
    return model, backbone


def trunk_gradient_ratio(model, backbone, images, labels):
    """||d generator loss / d trunk|| over ||d main cross-entropy / d trunk||, one batch, no state change."""
    net = model.network
    trunk_names = {layer.name for layer in backbone.layers}
    in_trunk = [any(v.path.startswith(n + "/") for n in trunk_names) for v in net.trainable_variables]
    trainable = [v.value for v in net.trainable_variables]
    non_trainable = [v.value for v in net.non_trainable_variables]
    labels = ops.cast(labels, "int32")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(trainable)
        outputs, _ = net.stateless_call(trainable, non_trainable, images, training=True)
        logits = [ops.cast(outputs[f"{b}_logits"], "float32") for b in model.branch_names]
        main_ce = losses.cross_entropy(labels, logits[0], model.ignore_label)
        if model.config.uses_branches:
            ensemble = model._ensemble(logits, outputs)
            _, total = model._generator_terms(labels, outputs, logits, model._teacher(logits, ensemble), ensemble)
        else:
            total = main_ce

    def trunk_norm(loss):
        grads = tape.gradient(loss, trainable)
        return float(tf.linalg.global_norm([g for g, t in zip(grads, in_trunk) if t and g is not None]))

    return trunk_norm(total) / trunk_norm(main_ce)


def main_miou(model, batches, num_classes, training=False, non_trainable=None):
    """The main head's mIoU over `batches`; training mode through `stateless_call` (no state change)."""
    net = model.network
    trainable = [v.value for v in net.trainable_variables]
    if non_trainable is None:
        non_trainable = [v.value for v in net.non_trainable_variables]
    predictions, labels = [], []
    for images, masks in batches:
        outputs, _ = net.stateless_call(trainable, non_trainable, images, training=training)
        predictions.append(np.argmax(outputs["main_logits"], -1))
        labels.append(masks)
    return segmentation.mean_iou(np.concatenate(labels), np.concatenate(predictions), num_classes)


def precise_statistics(model, batches):
    """Non-trainable variables with every batch norm's moving statistics set to the mean of its batch
    statistics over `batches` (training mode, momentum 0 for the measurement only)."""
    net = model.network
    norms = branches.batch_norms(net)
    saved = [layer.momentum for layer in norms]
    trainable = [v.value for v in net.trainable_variables]
    non_trainable = [v.value for v in net.non_trainable_variables]
    total = None
    try:
        for layer in norms:
            layer.momentum = 0.0
        for images, _ in batches:
            _, updated = net.stateless_call(trainable, non_trainable, images, training=True)
            updated = [np.asarray(v) for v in updated]
            total = updated if total is None else [a + b for a, b in zip(total, updated)]
    finally:
        for layer, momentum in zip(norms, saved):
            layer.momentum = momentum
    # Only the moving statistics are averaged; any other state keeps its value.
    stats = {id(v) for layer in norms for v in (layer.moving_mean, layer.moving_variance)}
    return [t / len(batches) if id(v) in stats else v.value
            for t, v in zip(total, net.non_trainable_variables)]


def run(mode, bn_momentum=None, epochs=8, seed=0, precise=True):
    keras.utils.set_random_seed(seed)
    splits = load()
    info = splits.info
    model, backbone = build(mode, info.num_classes, info.ignore_label, bn_momentum)
    model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  d_optimizer=keras.optimizers.Adam(2e-4))
    if not precise:
        model.precise_batch_norm_examples = 0  # the library before the fix
    first_images, first_masks = next(iter(load(augment=False).train))
    ratio = trunk_gradient_ratio(model, backbone, first_images, first_masks)
    start = time.time()
    history = model.fit(splits.train, epochs=epochs, verbose=0).history
    seconds = time.time() - start
    fixed = [(x.numpy(), y.numpy()) for x, y in load(augment=False).train]  # the same images, unaugmented
    result = {
        "mode": mode, "precise_bn": precise, "bn_momentum": bn_momentum or "backbone's", "seed": seed, "epochs": epochs,
        "train_mode_last_epoch": history["main_miou"][-1],
        "inference_train": main_miou(model, fixed, info.num_classes),
        "batch_stats_train": main_miou(model, fixed, info.num_classes, training=True),
        "recalibrated_train": main_miou(model, fixed, info.num_classes,
                                        non_trainable=precise_statistics(model, fixed)),
        "test": model.evaluate(splits.test, return_dict=True, verbose=0)["main_miou"],
        "trunk_grad_ratio": ratio,
        "fit_seconds": round(seconds),
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modes", nargs="+", choices=mbakt_tf.config.MODES)
    parser.add_argument("--bn_momentum", type=float, default=None)
    parser.add_argument("--no_precise_bn", action="store_true",
                        help="the library before the fix: moving statistics as Keras leaves them")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for mode in args.modes:
        print(json.dumps(run(mode, args.bn_momentum, args.epochs, args.seed, not args.no_precise_bn)), flush=True)


if __name__ == "__main__":
    main()
