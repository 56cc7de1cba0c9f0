"""Issue 20: what a training epoch costs against plain's, part by part, as `training.train` runs it.

`scripts/benchmark.py` times the train step alone on one batch. The equal-time control of
`scripts/compare.py` (`plain@<variant>`) compares whole epochs, which also hold the input pipeline,
the precise batch-norm pass (`MBAKT.fit`, before validation) and validation of every head. Here the
models are built as `training.train` builds them (`training.build_model`, the run's data and
training stream), and one-epoch `fit`s take turns in one process, so a slow phase of a shared
machine falls on every variant alike. Each round runs every variant twice:

* `steps`: the epoch's training steps and input pipeline only (precise batch norm off, no validation);
* `epoch`: as `training.train` runs it, precise batch norm on, `guards.InferenceModeGapGuard`,
  validation every epoch. Its training part (up to validation) holds the precise batch-norm pass.

It prints, per variant, the median seconds of each part and the median over rounds of the ratio to
plain's in the same round, then one JSON line. The first round traces and is left out.

    .venv/bin/python experiments/epoch_cost.py --rounds=6
    .venv/bin/python experiments/epoch_cost.py --rounds=6 --variants=plain,two_peers --train_limit=54000
"""

import argparse
import dataclasses
import json

import keras
import numpy as np

from mbakt_tf import guards, resume, run_timing, training
from mbakt_tf.config import MBAKTConfig

# The default design as `flags/compare_fashion_mnist_5k.cfg` runs it (the mbakt_no_kd variant).
DEFAULT = MBAKTConfig(branch_design="peer", ensemble="gated", gate_main_weight=0.8, alpha=0.0, beta=0.05,
                      gamma=0.1, adversarial_input="logits", discriminator_condition="label",
                      distillation_warmup_steps=300)
VARIANTS = {"plain": dict(mode="plain"), "one_peer": dict(num_peers=1), "two_peers": {}}


def one_epoch(model, stream, steps_per_epoch, splits, whole):
    timer = run_timing.EpochTimer(steps_per_epoch)
    precise = model.precise_batch_norm_examples
    if whole:
        callbacks, validation = [guards.InferenceModeGapGuard(splits.train), timer], splits.validation
    else:
        model.precise_batch_norm_examples, callbacks, validation = 0, [timer], None
    try:
        model.fit(stream, steps_per_epoch=steps_per_epoch, epochs=1, verbose=0, shuffle=False,
                  callbacks=callbacks, validation_data=validation)
    finally:
        model.precise_batch_norm_examples = precise
    return timer.train_epoch_seconds[0], timer.epoch_seconds[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--variants", default="plain,one_peer,two_peers")
    parser.add_argument("--train_limit", type=int, default=5400)
    args = parser.parse_args()
    names = args.variants.split(",")
    if names[0] != "plain":
        parser.error("--variants must start with plain (the ratios' denominator)")
    config = training.TrainConfig(dataset="fashion_mnist", backbone="small_resnet8", batch_size=128,
                                  learning_rate=0.05, train_limit=args.train_limit, validation_fraction=0.05)
    splits = training.load_data(config)
    steps_per_epoch = max(1, splits.info.num_train // config.batch_size)
    models, streams = {}, {}
    for name in names:
        keras.utils.set_random_seed(0)
        models[name] = training.build_model(
            config, dataclasses.replace(DEFAULT, **VARIANTS[name]), splits.info, steps_per_epoch)
        streams[name] = resume.training_stream(splits.train)
    seconds = {name: {"steps": [], "epoch_training": [], "epoch": []} for name in names}
    for round_index in range(args.rounds + 1):
        for name in names:
            steps, _ = one_epoch(models[name], streams[name], steps_per_epoch, splits, whole=False)
            training_part, whole = one_epoch(models[name], streams[name], steps_per_epoch, splits, whole=True)
            if round_index:
                for part, value in zip(("steps", "epoch_training", "epoch"), (steps, training_part, whole)):
                    seconds[name][part].append(value)
        print(f"round {round_index}/{args.rounds} done", flush=True)
    print(f"{steps_per_epoch} steps per epoch, {splits.info.num_validation} validation images; "
          f"median of {args.rounds} rounds, seconds and ratio to plain in the same round")
    summary = {}
    for name in names:
        row = {}
        for part, values in seconds[name].items():
            ratios = np.array(values) / np.array(seconds["plain"][part])
            row[part] = {"seconds": round(float(np.median(values)), 2), "x_plain": round(float(np.median(ratios)), 3)}
        summary[name] = row
        print(f"{name:>10}: " + "  ".join(
            f"{part} {v['seconds']:6.2f} s ({v['x_plain']:.3f}x)" for part, v in row.items()))
    print(json.dumps({"train_limit": args.train_limit, "rounds": args.rounds, "parts": summary}))


if __name__ == "__main__":
    main()
