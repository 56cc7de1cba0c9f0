"""The keras-cv segmenter that the adversary used to erase (issue 12), under five configs.

A keras-cv ResNetBackbone (8/16/32 filters, one block per stage) as the encoder of a segmenter on the
synthetic shapes with ignored outlines (1,024 training images, 32x32x3), SGD 0.05 momentum 0.9,
8 epochs, seed 11. Prints the main branch's test mIoU per config, the epoch-by-epoch training mIoU
and the adversarial gradient ratio, and whether `guards.AdversarialTakeoverGuard` warned.

    .venv/bin/python experiments/keras_cv_segmenter_collapse.py            # all five, ~15 min on 2 cores
    .venv/bin/python experiments/keras_cv_segmenter_collapse.py plain default
"""

import sys

import keras
import keras_cv

import mbakt_tf
from mbakt_tf import data, guards

# The segmenter's design then: exit heads on decoder steps 1 and 2 (the default until the no-harm matrix,
# docs/no_harm.md), the mean ensemble, probabilities to an unconditioned discriminator.
OLD_DESIGN = dict(ensemble="mean", alpha=0.2, adversarial_input="probabilities", discriminator_condition="none",
                  distillation_warmup_steps=0, branch_design="exit", branch_stages=(1, 2))
CONFIGS = {
    "plain": dict(mode="plain"),
    "default": dict(),
    "default_uncapped": dict(max_adversarial_grad_ratio=None),
    "old_design_uncapped": dict(OLD_DESIGN, max_adversarial_grad_ratio=None),
    "old_design_capped": dict(OLD_DESIGN),
}


def run(config):
    keras.utils.set_random_seed(11)
    splits = data.load_segmentation(
        "synthetic", batch_size=16, validation_fraction=0.1, seed=5, train_limit=1024, test_limit=64,
        synthetic_kwargs=dict(image_shape=(32, 32, 3), num_train=1024, num_test=64, ignore_border=True))
    backbone = keras_cv.models.ResNetBackbone(
        stackwise_filters=[8, 16, 32], stackwise_blocks=[1, 1, 1], stackwise_strides=[1, 2, 2],
        block_type="block", include_rescaling=True, input_shape=(32, 32, 3))
    model = mbakt_tf.MBAKT.from_backbone(
        backbone, num_classes=splits.info.num_classes, task="segmentation", config=config,
        ignore_label=splits.info.ignore_label)
    model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    guard = guards.AdversarialTakeoverGuard()
    history = model.fit(splits.train, epochs=8, verbose=0, callbacks=[guard]).history
    test = model.evaluate(splits.test, return_dict=True, verbose=0)
    return test["main_miou"], history, guard.events


def main(names):
    rows = []
    for name in names or list(CONFIGS):
        miou, history, events = run(mbakt_tf.MBAKTConfig(**CONFIGS[name]))
        train = " ".join(f"{v:.2f}" for v in history["main_miou"])
        ratio = " ".join(f"{v:.2f}" for v in history.get("adv_grad_ratio", []))
        rows.append(f"| {name} | {100 * miou:.1f} | {train} | {ratio or '-'} | {'warned' if events else '-'} |")
        print(rows[-1], flush=True)
    print("| config | test main mIoU (%) | training main mIoU per epoch | adv_grad_ratio per epoch | guard |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
