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

`plain@<variant>` is plain trained for the wall-clock of `<variant>` (e.g.
`plain@mbakt_no_kd`): for each seed its epochs are the comparison's epochs
times the ratio of the two runs' fastest epochs (`<variant>` and `plain`
of that seed, which train first), recorded under `equal_time` in its record.

Records: with `records_dir` (e.g. `results/<comparison>`), every finished run's
small record (`<variant>_seed<k>.json`: configs, history, test metrics, timing,
code commit; no weights) is written there too, and a run with a record there is
never retrained, so a comparison can be spread over days and machines by
committing that folder.
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
    # through kd (the alpha every BYOT figure in docs/results.md ran with; MBAKT's default is 0).
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


EQUAL_TIME = "plain@"


def equal_time_reference(variant):
    """The variant whose training time `variant` matches (`plain@mbakt` -> "mbakt"), or None.

    Example:
    >>> equal_time_reference("plain@byot:alpha=0.2"), equal_time_reference("plain")
    ('byot:alpha=0.2', None)
    """
    return variant[len(EQUAL_TIME):] if variant.startswith(EQUAL_TIME) else None


def variant_config(base, variant):
    """The `MBAKTConfig` of `variant`: a mode, a published method, an ablation or a design of mbakt.

    `variant` may end in `:field=value` overrides, applied last (see the module docstring);
    `plain@<variant>` is plain (its epochs are set by `equal_time_epochs`).

    Example:
    >>> variant_config(MBAKTConfig(), "byot:alpha=0.2").alpha
    0.2
    >>> variant_config(MBAKTConfig(), "plain@mbakt").mode
    'plain'
    """
    reference = equal_time_reference(variant)
    if reference is not None:
        variant_config(base, reference)  # an unknown reference fails here
        return dataclasses.replace(base, mode="plain")
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
    """`byot:alpha=0.2` -> `byot-alpha0.2_seed0`; `plain@mbakt` -> `plain-at-mbakt_seed0`."""
    variant = variant.replace("@", "-at-")
    name, *assignments = variant.split(":")
    suffix = "".join(f"-{a.replace('=', '')}" for a in assignments)
    return f"{name}{suffix}_seed{seed}"


def record_path(records_dir, variant, seed):
    """Where the kept record of (variant, seed) lives: `<records_dir>/<run dir name>.json`."""
    return os.path.join(records_dir, run_dir_name(variant, seed) + ".json")


def load_finished_run(out_dir, variant, seed, records_dir=None):
    """The record of a finished (variant, seed), or None: the kept record first, then the run's results.json."""
    paths = [record_path(records_dir, variant, seed)] if records_dir else []
    paths.append(os.path.join(out_dir, "runs", run_dir_name(variant, seed), "results.json"))
    for path in paths:
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return None


def equal_time_epochs(epochs, reference_record, plain_record):
    """Epochs of plain that take as long as `reference_record`'s run: {"epochs", "ratio", ...}.

    The ratio is of the same seed's fastest epochs (training plus validation,
    the first epoch excluded): a load on a shared machine during part of
    either run does not move it, but a load throughout does (on 2 cores shared
    with three other jobs, seeds of one comparison gave 1.46 to 2.04).
    Measure on an idle machine; every record keeps its per-epoch times.

    Example:
    >>> record = lambda seconds: {"timing": {"epoch_seconds": seconds}}
    >>> equal_time_epochs(20, record([40.0, 30.1, 30.3, 29.9]), record([25.0, 20.0, 20.2, 19.8]))["epochs"]
    30
    """
    from mbakt_tf import run_timing

    reference = run_timing.fastest_epoch_seconds(reference_record)
    plain = run_timing.fastest_epoch_seconds(plain_record)
    ratio = reference / plain
    return {
        "epochs": max(1, int(round(epochs * ratio))),
        "ratio": round(ratio, 4),
        "reference_epoch_seconds": round(reference, 3),
        "plain_epoch_seconds": round(plain, 3),
        "reference_train_seconds": reference_record.get("train_seconds"),
    }


def _write_record(records_dir, variant, seed, record):
    from mbakt_tf import atomic

    os.makedirs(records_dir, exist_ok=True)
    record = dict(record, variant=variant, seed=seed)
    atomic.write_json(record_path(records_dir, variant, seed), record, sort_keys=True)


def check_variants(base_config, variants):
    """Raises ValueError for an unknown variant, or a `plain@<variant>` without plain and its reference before it."""
    for variant in variants:
        variant_config(base_config, variant)  # unknown names fail before any training
        reference = equal_time_reference(variant)
        if reference is not None and (reference not in variants or "plain" not in variants
                                      or variants.index(reference) > variants.index(variant)
                                      or variants.index("plain") > variants.index(variant)):
            raise ValueError(
                f"Variant {variant!r} needs 'plain' and {reference!r} in the same comparison, "
                "listed before it (its epochs come from their epoch times)."
            )


def run_comparison(train_config, base_config, variants, seeds, out_dir, train_fn=None, log=print,
                   train=True, records_dir=None):
    """Trains every (variant, seed) not finished yet; returns {(variant, seed): results dict}.

    `train_fn(train_config, mbakt_config)` defaults to `training.train`; it must
    write `results.json` into `train_config.output_dir/train_config.run_name`.
    With `train=False` nothing trains: unfinished runs are left out of the
    result (to report on a comparison that is still running). With
    `records_dir`, finished runs are read from and written to it (module docstring).
    """
    if train_fn is None:
        from mbakt_tf import training

        train_fn = training.train
    check_variants(base_config, variants)
    runs = {}
    total = len(variants) * len(seeds)
    for index, (seed, variant) in enumerate(((s, v) for s in seeds for v in variants), start=1):
        finished = load_finished_run(out_dir, variant, seed, records_dir)
        if finished is not None:
            log(f"[{index}/{total}] {variant} seed {seed}: finished before, read from disk")
            if records_dir and not os.path.isfile(record_path(records_dir, variant, seed)):
                _write_record(records_dir, variant, seed, finished)
            runs[(variant, seed)] = finished
            continue
        if not train:
            log(f"[{index}/{total}] {variant} seed {seed}: not finished, left out")
            continue
        config = dataclasses.replace(
            train_config, seed=seed, output_dir=os.path.join(out_dir, "runs"),
            run_name=run_dir_name(variant, seed),
        )
        equal_time = None
        reference = equal_time_reference(variant)
        if reference is not None:
            equal_time = equal_time_epochs(
                train_config.epochs, runs[(reference, seed)], runs[("plain", seed)]
            )
            config = dataclasses.replace(config, epochs=equal_time["epochs"])
            log(f"[{index}/{total}] {variant} seed {seed}: {equal_time['epochs']} epochs, the time of "
                f"{reference}'s {train_config.epochs} (epoch-time ratio {equal_time['ratio']:.2f})")
        log(f"[{index}/{total}] {variant} seed {seed}: training")
        train_fn(config, variant_config(base_config, variant))
        finished = load_finished_run(out_dir, variant, seed)
        if finished is None:
            raise RuntimeError(f"Training {variant} seed {seed} wrote no results.json.")
        if equal_time is not None:
            finished["equal_time"] = dict(equal_time, reference=reference)
        if records_dir:
            _write_record(records_dir, variant, seed, finished)
        runs[(variant, seed)] = finished
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
