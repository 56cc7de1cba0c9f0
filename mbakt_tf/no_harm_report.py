"""The no-harm matrix's table (issue 21, docs/no_harm.md), from its kept records.

`experiments/no_harm_matrix.py` trains each cell (backbone family x task x variant x seed) and
keeps one JSON record per run under `results/no_harm/<scale>/`; this module reads them back and
tabulates, per backbone and task, each variant's mean main-head test metric and the worst MBAKT
variant's difference to plain. The README's `<!-- results:no_harm full -->` section is this table
(`scripts/report.py` rebuilds it, a test checks it).

Example:
```python
from mbakt_tf import no_harm_report
print(no_harm_report.table(no_harm_report.load_records("results/no_harm", "full")))
```
"""

import glob
import json
import os

import numpy as np

BAR = 0.02  # MBAKT's main head >= plain - BAR (mean of the seeds), issue 21
VARIANTS = ("plain", "peer", "exit")
# Row order: the library's own backbone, then keras-cv's, then keras-hub's.
BACKBONE_ORDER = ("small_resnet8", "kcv_resnet", "cspdarknet", "mobilenet_v3", "hub_resnet", "hub_mobilenet")


def load_records(out, scale):
    """Every run record of the matrix at `scale` under `out` (a list of dicts, by file name).

    Example:
    >>> import tempfile
    >>> load_records(tempfile.mkdtemp(), "full")
    []
    """
    records = []
    for path in sorted(glob.glob(os.path.join(out, scale, "*.json"))):
        with open(path) as f:
            records.append(json.load(f))
    return records


def table(records, bar=BAR):
    """The Markdown table: per backbone and task, each variant's mean main-head metric and its gap to plain.

    Example:
    >>> rows = [dict(backbone="b", task="segmentation", variant=v, seed=s, test=t, inference_mode_gap=[0.0])
    ...         for v, s, t in [("plain", 0, 0.8), ("plain", 1, 0.9), ("peer", 0, 0.86)]]
    >>> print(table(rows))  # doctest: +NORMALIZE_WHITESPACE
    | task | backbone | plain | peer | exit | worst vs plain | max end-of-run mode gap |
    |---|---|---|---|---|---|---|
    | segmentation | b | 0.850 (2) | 0.860 (1) | - | +0.010 | 0.000 |
    >>> print(table(rows + [dict(backbone="b", task="segmentation", variant="exit", seed=0, refused="...")]).splitlines()[-1])
    | segmentation | b | 0.850 (2) | 0.860 (1) | refused | +0.010 | 0.000 |
    """
    cells = {}
    for r in records:
        cells.setdefault((r["task"], r["backbone"]), {}).setdefault(r["variant"], []).append(r)
    lines = [
        "| task | backbone | " + " | ".join(VARIANTS) + " | worst vs plain | max end-of-run mode gap |",
        "|---|---|" + "---|" * len(VARIANTS) + "---|---|",
    ]
    order = {name: i for i, name in enumerate(BACKBONE_ORDER)}
    for (task, backbone), by_variant in sorted(cells.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        refused = {v for v, rs in by_variant.items() if all("refused" in r for r in rs)}
        by_variant = {v: [r for r in rs if "refused" not in r] for v, rs in by_variant.items() if v not in refused}
        means = {v: float(np.mean([r["test"] for r in rs])) for v, rs in by_variant.items()}
        shown = [f"{means[v]:.3f} ({len(by_variant[v])})" if v in means else "refused" if v in refused else "-"
                 for v in VARIANTS]
        deltas = [means[v] - means["plain"] for v in VARIANTS[1:] if v in means and "plain" in means]
        worst = min(deltas) if deltas else None
        worst_text = "-" if worst is None else f"{worst:+.3f}" + (" **below bar**" if worst < -bar else "")
        gap = max(abs(r["inference_mode_gap"][-1]) for rs in by_variant.values() for r in rs)
        lines.append(f"| {task} | {backbone} | " + " | ".join(shown) + f" | {worst_text} | {gap:.3f} |")
    return "\n".join(lines)
