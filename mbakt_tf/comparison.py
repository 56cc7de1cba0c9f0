"""Like-for-like comparison of modes and ablations over seeds, resumable.

Every variant trains on the same data, backbone, schedule and seeds; only the
`MBAKTConfig` differs. A (variant, seed) whose `results.json` exists is read
back instead of retrained, so an interrupted comparison continues where it
stopped.

Example:
```python
runs = run_comparison(TrainConfig(epochs=10), MBAKTConfig(), ["plain", "byot", "mbakt"],
                      seeds=[0, 1, 2], out_dir="saved_models/compare")
summary = summarize(runs)
```

A variant may override fields of its config after a colon, to tune a method on
the validation split without a new table entry: `"byot:alpha=0.2"`,
`"mbakt:gamma=0:beta=0.1"` (runs go to `byot-alpha0.2_seed0/` and so on).
"""

import ast
import dataclasses
import json
import os

import numpy as np

from mbakt_tf.config import MBAKTConfig

VARIANTS = ("plain", "byot", "one", "mbakt")
# Published methods, pinned to their own design whatever the base config says.
METHODS = {
    # BYOT (Zhang et al. 2019): exits on earlier stages, the deepest classifier teaches them
    # through kd (the alpha every BYOT figure in the README ran with; MBAKT's default is 0).
    "byot": dict(mode="byot", branch_design="exit", ensemble="mean", teacher="main", alpha=0.5),
    # ONE (Lan et al. 2018): peers on a shared trunk, gated ensemble teacher (uniform start), ce + kd only.
    "one": dict(
        mode="mbakt", branch_design="peer", ensemble="gated", gate_main_weight=None, teacher="ensemble",
        alpha=0.5, beta=0.0, gamma=0.0,
    ),
}
ABLATIONS = {
    "mbakt_no_kd": dict(alpha=0.0),
    "mbakt_no_hint": dict(beta=0.0),
    "mbakt_no_adv": dict(gamma=0.0),
    "mbakt_no_ensemble": dict(teacher="main"),
    "mbakt_mean_teacher": dict(ensemble="mean"),
    "mbakt_detached_gate": dict(ensemble="gated_detached"),
    "mbakt_uniform_gate": dict(gate_main_weight=None),
    "mbakt_unconditioned_adv": dict(discriminator_condition="none"),
}
# Other designs of the same method, for choosing defaults (not in --ablations).
DESIGNS = {
    "mbakt_exit": dict(branch_design="exit"),
    "mbakt_peer": dict(branch_design="peer"),
    "mbakt_deep": dict(branch_design="deep"),
}


def variant_config(base, variant):
    """The `MBAKTConfig` of `variant`: a mode, a published method, an ablation or a design of mbakt.

    `variant` may end in `:field=value` overrides, applied last (see the module docstring).

    Example:
    >>> variant_config(MBAKTConfig(), "byot:alpha=0.2").alpha
    0.2
    """
    name, overrides = _split_overrides(variant)
    if name in METHODS:
        config = dataclasses.replace(base, **METHODS[name])
    elif name in VARIANTS:
        config = dataclasses.replace(base, mode=name)
    else:
        for table in (ABLATIONS, DESIGNS):
            if name in table:
                config = dataclasses.replace(base, mode="mbakt", **table[name])
                break
        else:
            known = list(VARIANTS) + list(ABLATIONS) + list(DESIGNS)
            raise ValueError(f"Unknown variant {name!r}; known: {known}.")
    return dataclasses.replace(config, **overrides) if overrides else config


def _split_overrides(variant):
    name, *assignments = variant.split(":")
    fields = {field.name for field in dataclasses.fields(MBAKTConfig)}
    overrides = {}
    for assignment in assignments:
        field, equals, text = assignment.partition("=")
        if not equals or field not in fields:
            raise ValueError(
                f"Variant {variant!r}: {assignment!r} is not field=value with a field of MBAKTConfig "
                f"({sorted(fields)})."
            )
        overrides[field] = _parse_value(text)
    return name, overrides


def _parse_value(text):
    if text.lower() == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_dir_name(variant, seed):
    name, *assignments = variant.split(":")
    suffix = "".join(f"-{a.replace('=', '')}" for a in assignments)
    return f"{name}{suffix}_seed{seed}"


def load_finished_run(out_dir, variant, seed):
    """The results.json of a finished (variant, seed), or None."""
    path = os.path.join(out_dir, "runs", run_dir_name(variant, seed), "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_comparison(train_config, base_config, variants, seeds, out_dir, train_fn=None, log=print,
                   train=True):
    """Trains every (variant, seed) not finished yet; returns {(variant, seed): results dict}.

    `train_fn(train_config, mbakt_config)` defaults to `training.train`; it must
    write `results.json` into `train_config.output_dir/train_config.run_name`.
    With `train=False` nothing trains: unfinished runs are left out of the
    result (to report on a comparison that is still running).
    """
    if train_fn is None:
        from mbakt_tf import training

        train_fn = training.train
    for variant in variants:
        variant_config(base_config, variant)  # unknown names fail before any training
    runs = {}
    total = len(variants) * len(seeds)
    for index, (seed, variant) in enumerate(((s, v) for s in seeds for v in variants), start=1):
        finished = load_finished_run(out_dir, variant, seed)
        if finished is not None:
            log(f"[{index}/{total}] {variant} seed {seed}: finished before, read from disk")
            runs[(variant, seed)] = finished
            continue
        if not train:
            log(f"[{index}/{total}] {variant} seed {seed}: not finished, left out")
            continue
        log(f"[{index}/{total}] {variant} seed {seed}: training")
        config = dataclasses.replace(
            train_config, seed=seed, output_dir=os.path.join(out_dir, "runs"),
            run_name=run_dir_name(variant, seed),
        )
        train_fn(config, variant_config(base_config, variant))
        runs[(variant, seed)] = load_finished_run(out_dir, variant, seed)
        if runs[(variant, seed)] is None:
            raise RuntimeError(f"Training {variant} seed {seed} wrote no results.json.")
    return runs


def _mean_std(values):
    values = np.asarray(values, dtype="float64")
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "n": int(len(values)), "values": values.tolist()}


def summarize(runs, costs=None):
    """Per variant: mean/std of every head's test accuracy, training time, and costs.

    `costs` maps variant -> {"params": ..., "flops": ...} of its exported main branch.
    Segmentation runs (with `<head>_miou` results) also get `"miou"` beside
    `"accuracy"` (pixel accuracy there).
    """
    by_variant = {}
    for (variant, _), result in runs.items():
        by_variant.setdefault(variant, []).append(result)
    summary = {}
    for variant, results in by_variant.items():
        heads = sorted({k[: -len("_accuracy")] for r in results for k in r["test"] if k.endswith("_accuracy")})
        entry = {
            "accuracy": {
                head: _mean_std([r["test"][f"{head}_accuracy"] for r in results if f"{head}_accuracy" in r["test"]])
                for head in heads
            },
            "train_seconds": _mean_std([r["train_seconds"] for r in results]),
            "main_params": results[0]["parameters"]["main"],
        }
        miou_heads = sorted({k[: -len("_miou")] for r in results for k in r["test"] if k.endswith("_miou")})
        if miou_heads:
            entry["miou"] = {
                head: _mean_std([r["test"][f"{head}_miou"] for r in results if f"{head}_miou" in r["test"]])
                for head in miou_heads
            }
        if costs and variant in costs:
            entry.update(costs[variant])
        summary[variant] = entry
    return summary


def main_branch_costs(backbone, info, base_config, variants, task="classification"):
    """{variant: {"params", "flops"}} of the exported main branch, from freshly built models."""
    from mbakt_tf import flops, tasks

    costs = {}
    for variant in variants:
        model = tasks.get_task(task).build_model(backbone, info, variant_config(base_config, variant))
        main = model.main_model()
        costs[variant] = {"params": main.count_params(), "flops": flops.count_flops(main)}
    return costs
