"""Training-step cost of MBAKT against the plain network, measured in one process.

Every variant runs its compiled `train_step` on the same batch: warm-up calls
(tracing, XLA compilation) are excluded, then `repeats` timed rounds of
`steps` calls each, the variants taking turns round by round; a round ends
when its last loss reaches the host. The median round is reported, with the
ratio to plain of the step time and of the training network's forward FLOPs
(`flops.count_flops`; backward passes scale with them), so a design whose
step costs more than its FLOPs say shows up. The step/FLOPs ratio is also given
from each variant's fastest round: other processes only ever add time, so on a
shared machine, where rounds of one variant can differ by a fifth, the fastest
round is the steadier measure of what the code costs. The report also counts
each variant's step ops (`graph_ops`), a measure of fixed per-step cost that
no machine's noise moves.

The first variants split the extra time of the `exit` design into its parts:

- `plain`: main branch only, cross-entropy;
- `branches`: the exit branches trained with cross-entropy only
  (byot with alpha = beta = 0): the cost of the auxiliary branches;
- `byot`: plus distillation and hint losses: the cost of the losses;
- `mbakt_exit`: plus the discriminator update and adversarial term.

The others are the heavier designs: `one` (peers, gated teacher, ce + kd),
`mbakt` (the defaults: peers, gated teacher, all four losses),
`mbakt_one_peer` (the defaults with one peer instead of two) and `mbakt_deep`.

Example:
```python
report = benchmark_train_step("small_resnet8", (28, 28, 1), num_classes=10, batch_size=128)
print(format_report(report))
```
"""

import dataclasses
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from mbakt_tf import comparison, flops
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.model import MBAKT

_EXIT = dict(branch_design="exit", ensemble="mean")
VARIANTS = {
    "plain": dict(mode="plain"),
    "branches": dict(mode="byot", alpha=0.0, beta=0.0, **_EXIT),
    "byot": dict(mode="byot", **_EXIT),
    "mbakt_exit": dict(mode="mbakt", **_EXIT),
    "one": comparison.METHODS["one"],
    "mbakt": dict(mode="mbakt"),
    "mbakt_one_peer": dict(mode="mbakt", num_peers=1),
    "mbakt_deep": dict(mode="mbakt", branch_design="deep"),
}
_BREAKDOWN = ("plain", "branches", "byot", "mbakt_exit")


@dataclasses.dataclass
class StepTiming:
    variant: str
    median_seconds: float
    all_seconds: list
    images_per_second: float


def _compiled_step(model, jit_compile):
    step = tf.function(model.train_step, jit_compile=jit_compile, reduce_retracing=True)
    return step


def benchmark_train_step(
    backbone,
    input_shape,
    num_classes=10,
    batch_size=128,
    variants=tuple(VARIANTS),
    base_config=None,
    steps=10,
    repeats=5,
    warmup=3,
    jit_compile=False,
    mixed_precision=False,
    seed=0,
    log=print,
):
    """Times each variant's train step on one random batch; returns a report dict."""
    base_config = base_config or MBAKTConfig()
    previous_policy = keras.config.dtype_policy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        rng = np.random.default_rng(seed)
        images = tf.constant(rng.uniform(0, 255, (batch_size,) + tuple(input_shape)).astype("float32"))
        labels = tf.constant(rng.integers(0, num_classes, batch_size).astype("int32"))
        batch = (images, labels)
        steps_by_variant, forward_flops, step_ops = {}, {}, {}
        for variant in variants:
            keras.utils.set_random_seed(seed)
            config = dataclasses.replace(base_config, **VARIANTS[variant])
            model = MBAKT.from_backbone(backbone, num_classes, input_shape, config=config)
            model.compile()
            forward_flops[variant] = flops.count_flops(model.network)
            step = _compiled_step(model, jit_compile)
            for _ in range(warmup):
                float(step(batch)["loss"])
            steps_by_variant[variant] = step
            step_ops[variant] = graph_ops(step, batch)
        # Rounds interleave the variants, so load from other processes hits all alike.
        rounds = {variant: [] for variant in variants}
        for _ in range(repeats):
            for variant, step in steps_by_variant.items():
                start = time.perf_counter()
                for _ in range(steps):
                    logs = step(batch)
                float(logs["loss"])
                rounds[variant].append((time.perf_counter() - start) / steps)
        timings = {}
        for variant in variants:
            median = statistics.median(rounds[variant])
            timings[variant] = StepTiming(variant, median, rounds[variant], batch_size / median)
            log(f"{variant:>9}: {1000 * median:8.2f} ms/step  {batch_size / median:9.1f} images/s")
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    report = {
        "backbone": backbone if isinstance(backbone, str) else backbone.name,
        "input_shape": list(input_shape),
        "batch_size": batch_size,
        "jit_compile": jit_compile,
        "mixed_precision": mixed_precision,
        "steps": steps,
        "repeats": repeats,
        "timings": {k: dataclasses.asdict(v) for k, v in timings.items()},
        "forward_flops": forward_flops,
        "step_ops": step_ops,
    }
    if "plain" in timings:
        plain = timings["plain"].median_seconds
        report["ratio_to_plain"] = {k: v.median_seconds / plain for k, v in timings.items()}
        report["flops_ratio_to_plain"] = {k: f / forward_flops["plain"] for k, f in forward_flops.items()}
        fastest_plain = min(timings["plain"].all_seconds)
        report["fastest_ratio_to_plain"] = {k: min(v.all_seconds) / fastest_plain for k, v in timings.items()}
    order = [v for v in _BREAKDOWN if v in timings]
    report["extra_seconds"] = {
        f"{later} - {earlier}": timings[later].median_seconds - timings[earlier].median_seconds
        for earlier, later in zip(order, order[1:])
    }
    return report


def graph_ops(step, batch):
    """Non-constant ops in the graph of the compiled `step` on `batch`, the same on every machine: on
    a GPU each is a kernel launch, a cost that does not shrink with the arithmetic."""
    graph = step.get_concrete_function(batch).graph
    return sum(1 for op in graph.get_operations() if op.type != "Const")


_PARTS = {
    "branches": "exit branches (forward + backward)",
    "byot": "distillation + hint losses",
    "mbakt_exit": "discriminator update + adversarial term",
}


def format_report(report):
    """A plain-text summary: time per variant, ratio to plain, where the extra time goes."""
    lines = [
        f"backbone {report['backbone']}, input {tuple(report['input_shape'])}, batch "
        f"{report['batch_size']}, jit_compile={report['jit_compile']}, "
        f"mixed_precision={report['mixed_precision']}; median of {report['repeats']} rounds "
        f"x {report['steps']} steps",
        f"{'variant':>10}  {'ms/step':>8}  {'images/s':>9}  {'x plain':>7}  {'FLOPs x plain':>13}  "
        f"{'step / FLOPs ratio':>18}  {'fastest round: step / FLOPs':>27}  {'step ops':>8}",
    ]
    for variant, timing in report["timings"].items():
        ratio = report.get("ratio_to_plain", {}).get(variant)
        flops_ratio = report.get("flops_ratio_to_plain", {}).get(variant)
        fastest = report.get("fastest_ratio_to_plain", {}).get(variant)
        lines.append(
            f"{variant:>10}  {1000 * timing['median_seconds']:8.2f}  "
            f"{timing['images_per_second']:9.1f}  {'-' if ratio is None else f'{ratio:7.3f}'}  "
            f"{'-' if flops_ratio is None else f'{flops_ratio:13.3f}'}  "
            f"{'-' if ratio is None else f'{ratio / flops_ratio:18.3f}'}  "
            f"{'-' if fastest is None else f'{fastest / flops_ratio:27.3f}'}  "
            f"{report.get('step_ops', {}).get(variant, '-'):>8}"
        )
    if report["extra_seconds"]:
        lines.append("where the extra time goes (difference to the variant above):")
        names = list(_BREAKDOWN)
        for step, seconds in report["extra_seconds"].items():
            later, earlier = step.split(" - ")
            adjacent = names.index(later) == names.index(earlier) + 1
            part = _PARTS[later] if adjacent else "everything in between"
            lines.append(f"  {step:<18} {part:<42} {1000 * seconds:+8.2f} ms/step")
    return "\n".join(lines)
