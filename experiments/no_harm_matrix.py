"""No-harm matrix (issue 21): MBAKT's main head against plain, every backbone family x task x design.

Backbone families: the library's `small_resnet8`, keras-cv ResNet, CSPDarkNet and MobileNetV3,
keras-hub ResNet and MobileNet (small configurations, built offline from explicit arguments, 32x32x3
inputs). Tasks: classification (synthetic classes, 2,048 images) and segmentation (synthetic shapes
with ignored outlines, 1,024 images, the issue's case). Variants: `plain`, and `MBAKTConfig()` (the
default, all four losses) with `branch_design` `peer` and `exit` (the default design is `peer` for
both tasks, so the `peer` cells are the default's). Each run: the
model API as a user calls it (`MBAKT.from_backbone`, SGD 0.05 momentum 0.9, `fit` for 8 epochs,
batch 16) with `guards.InferenceModeGapGuard` on a fixed batch of training images; the record holds
the main head's test metric (accuracy, or mIoU), every epoch's inference/training-mode gap and the
guard's warnings; or, for a design the library refuses on that backbone, `refused` and its message
(the table says "refused").

One JSON record per cell and seed under results/no_harm/<scale>/ (written atomically; existing
records are skipped, so an interrupted matrix resumes), and the table `results/no_harm/<scale>.md`
rebuilt from all records after each run: per backbone and task, each variant's mean main-head
metric over the seeds present and its difference to plain's.

    nice -n 19 .venv/bin/python experiments/no_harm_matrix.py --backbones=cspdarknet   # the issue's family
    nice -n 19 .venv/bin/python experiments/no_harm_matrix.py                           # everything (hours)
    nice -n 19 .venv/bin/python experiments/no_harm_matrix.py --table                   # table only
    nice -n 19 .venv/bin/python experiments/no_harm_matrix.py --scale=tiny --out=/tmp/x  # the slow test's

`--scale=tiny` (the slow test) is 128 images, 2 epochs, 16x16 inputs: it checks that every cell
builds, trains and records, not the bar.
"""

import argparse
import json
import os
import subprocess
import time

import keras

from mbakt_tf.no_harm_report import BAR, VARIANTS, load_records, table  # noqa: F401 - the table's home

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "results", "no_harm")
SEEDS = (0, 1)
TASKS = ("classification", "segmentation")

SCALES = {
    # The settings.
    "full": dict(shape=(32, 32, 3), classification_train=2048, segmentation_train=1024, test=256, epochs=8),
    # The slow test's: every cell runs, in minutes.
    "tiny": dict(shape=(32, 32, 3), classification_train=128, segmentation_train=128, test=32, epochs=2),
}


def _keras_cv():
    import keras_cv

    return keras_cv.models


def _keras_hub():
    import keras_hub

    return keras_hub.models


def small_resnet8(shape):
    return "small_resnet8"


def kcv_resnet(shape):
    return _keras_cv().ResNetBackbone(
        stackwise_filters=[8, 16, 32], stackwise_blocks=[1, 1, 1], stackwise_strides=[1, 2, 2],
        block_type="block", include_rescaling=True, input_shape=shape)


def cspdarknet(shape):
    return _keras_cv().CSPDarkNetBackbone(
        stackwise_channels=[16, 32, 64, 128], stackwise_depth=[1, 1, 1, 1], include_rescaling=True,
        input_shape=shape)


def mobilenet_v3(shape):
    return _keras_cv().MobileNetV3Backbone(
        stackwise_expansion=[1, 72.0 / 16, 4], stackwise_filters=[16, 24, 40], stackwise_kernel_size=[3, 3, 5],
        stackwise_stride=[2, 2, 2], stackwise_se_ratio=[0.25, None, 0.25],
        stackwise_activation=["relu", "relu", "hard_swish"], include_rescaling=True, input_shape=shape)


def hub_resnet(shape):
    from mbakt_tf import backbones

    return backbones.with_rescaling(_keras_hub().ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16, 32],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        image_shape=shape))


def hub_mobilenet(shape):
    from mbakt_tf import backbones

    return backbones.with_rescaling(_keras_hub().MobileNetBackbone(
        stackwise_expansion=[[40 / 16], [4]], stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[16], [24]], stackwise_kernel_size=[[3], [5]],
        stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"]], stackwise_padding=[[1], [2]],
        output_num_filters=32, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        last_layer_filter=32, squeeze_and_excite=0.5, image_shape=shape))


BACKBONES = {
    "small_resnet8": small_resnet8, "kcv_resnet": kcv_resnet, "cspdarknet": cspdarknet,
    "mobilenet_v3": mobilenet_v3, "hub_resnet": hub_resnet, "hub_mobilenet": hub_mobilenet,
}


def load(task, scale, seed):
    from mbakt_tf import data

    s = SCALES[scale]
    if task == "segmentation":
        n = s["segmentation_train"]
        return data.load_segmentation(
            "synthetic", batch_size=16, validation_fraction=0.0, seed=seed, train_limit=n,
            test_limit=s["test"], synthetic_kwargs=dict(
                image_shape=s["shape"], num_train=n, num_test=s["test"], ignore_border=True))
    n = s["classification_train"]
    return data.load_classification(
        "synthetic", batch_size=16, validation_fraction=0.0, seed=seed, train_limit=n,
        test_limit=s["test"], synthetic_kwargs=dict(image_shape=s["shape"], num_train=n, num_test=s["test"]))


def config_for(variant):
    import mbakt_tf

    if variant == "plain":
        return mbakt_tf.MBAKTConfig(mode="plain")
    return mbakt_tf.MBAKTConfig(branch_design=variant)


def run_cell(backbone, task, variant, seed, scale):
    """Trains one cell; returns its record (a dict)."""
    import mbakt_tf
    from mbakt_tf import guards, run_timing
    from mbakt_tf.model import DesignRefusedError

    keras.utils.set_random_seed(seed)
    splits = load(task, scale, seed)
    info = splits.info
    shape = SCALES[scale]["shape"]
    task_kwargs = dict(ignore_label=info.ignore_label) if task == "segmentation" else {}
    try:
        model = mbakt_tf.MBAKT.from_backbone(
            BACKBONES[backbone](shape), num_classes=info.num_classes, input_shape=shape, task=task,
            config=config_for(variant), **task_kwargs)
    except DesignRefusedError as error:  # e.g. peers on CSPDarkNet's 1x1 last stage
        return {"backbone": backbone, "task": task, "variant": variant, "seed": seed, "scale": scale,
                "refused": str(error), "code_commit": _commit(), "method_code": run_timing.LOADED_METHOD_CODE}
    model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  d_optimizer=keras.optimizers.Adam(2e-4))
    guard = guards.InferenceModeGapGuard(splits.train)
    start = time.time()
    history = model.fit(splits.train, epochs=SCALES[scale]["epochs"], verbose=0, callbacks=[guard]).history
    seconds = time.time() - start
    test = model.evaluate(splits.test, return_dict=True, verbose=0)
    metric = "main_miou" if task == "segmentation" else "main_accuracy"
    return {
        "backbone": backbone, "task": task, "variant": variant, "seed": seed, "scale": scale,
        "design": None if variant == "plain" else model.config.resolved_branch_design(task),
        "metric": metric, "test": float(test[metric]),
        "test_heads": {k: float(v) for k, v in test.items() if k.endswith(("_miou", "_accuracy"))},
        "train_metric_last_epoch": float(history[metric][-1]),
        "inference_mode_gap": [float(g) for g in history["inference_mode_gap"]],
        "guard_events": guard.events,
        "fit_seconds": round(seconds, 1),
        "code_commit": _commit(),
        "method_code": run_timing.LOADED_METHOD_CODE,
    }


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def record_path(out, scale, backbone, task, variant, seed):
    return os.path.join(out, scale, f"{task}__{backbone}__{variant}__seed{seed}.json")


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, default=float)
    os.replace(tmp, path)


def write_table(out, scale):
    text = (f"Main head's test metric (accuracy; mIoU for segmentation), mean over seeds (count in brackets); "
            f"'worst vs plain': the lowest MBAKT variant minus plain (bar: >= -{BAR}).\n\n"
            + table(load_records(out, scale)) + "\n")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{scale}.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--scale", default="full", choices=sorted(SCALES))
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--table", action="store_true", help="only rebuild the table from the records")
    args = parser.parse_args(argv)
    if not args.table:
        for task in args.tasks.split(","):
            for backbone in args.backbones.split(","):
                for seed in map(int, args.seeds.split(",")):
                    for variant in args.variants.split(","):
                        path = record_path(args.out, args.scale, backbone, task, variant, seed)
                        if os.path.exists(path):
                            continue
                        record = run_cell(backbone, task, variant, seed, args.scale)
                        write_json(path, record)
                        print(json.dumps({k: record[k] for k in ("task", "backbone", "variant", "seed", "test",
                                                                 "fit_seconds", "refused") if k in record}), flush=True)
                        write_table(args.out, args.scale)
    print(write_table(args.out, args.scale))


if __name__ == "__main__":
    main()
