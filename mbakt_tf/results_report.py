"""The README's results tables, generated from the kept run records under `results/`.

Every run a results table rests on keeps a small record (`compare.py` writes
`results/<comparison>/<variant>_seed<k>.json`). A Markdown file marks each
generated table with an opening and a closing comment:

    <!-- results:headline -->            the headline table (rows in results/headline.json)
    <!-- results:table <comparison> --> every variant of a comparison, mean ± std over seeds
    <!-- results:gains <comparison> --> paired-by-seed gains over plain, plain at equal time, BYOT, ONE
    <!-- results:no_harm <scale> -->     the no-harm matrix (results/no_harm/<scale>/, `no_harm_report`)
    <!-- /results -->                    ends any of them

`update_file` rewrites what lies between the markers; `check_file` says which
sections differ from what the records give (`scripts/report.py --check`, and a
test, fail on any).

Example:
```python
from mbakt_tf import results_report
runs = results_report.load_records("results/compare_fashion_mnist_full_20ep")
print(results_report.comparison_table(runs))
results_report.update_file("README.md", results_dir="results")
assert results_report.check_file("README.md", results_dir="results") == []
```
"""

import dataclasses
import glob
import json
import os
import re

import numpy as np

from mbakt_tf import reporting

HEADLINE_FILE = "headline.json"
SECTION = re.compile(
    r"(?P<open><!-- results:(?P<kind>\w+)(?: (?P<arg>[\w.-]+))? -->\n)(?P<body>.*?)(?P<close><!-- /results -->)",
    re.DOTALL,
)
BASELINES = ("plain", "byot", "one")


class RecordsNotFoundError(FileNotFoundError):
    """A section names a comparison with no kept records."""


def load_records(records_dir):
    """{(variant, seed): record} of every kept record in `records_dir`.

    Example:
    >>> import tempfile
    >>> load_records(tempfile.mkdtemp())
    {}
    """
    runs = {}
    for path in sorted(glob.glob(os.path.join(records_dir, "*.json"))):
        with open(path) as f:
            record = json.load(f)
        if "variant" not in record or "seed" not in record:
            continue  # not a run record
        runs[(record["variant"], int(record["seed"]))] = record
    return runs


def _by_name(runs):
    return {"runs": {f"{variant}_seed{seed}": record for (variant, seed), record in runs.items()}}


def _variants(runs):
    """Plain, plain at equal time, BYOT, ONE, then the rest by name."""

    def rank(variant):
        for index, prefix in enumerate(("plain:", "plain@", "byot", "one")):
            if variant == prefix.rstrip(":@") or variant.startswith(prefix):
                return index, variant
        return len(BASELINES) + 1, variant

    return sorted({variant for variant, _ in runs}, key=rank)


def _metric(runs):
    return "miou" if any(k.endswith("_miou") for r in runs.values() for k in r["test"]) else "accuracy"


def _stat(values):
    values = np.asarray(values, dtype="float64")
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std, len(values)


def _cell(values, scale=100.0):
    if not values:
        return "-"
    mean, std, n = _stat([scale * v for v in values])
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def comparison_table(runs, variants=None):
    """Markdown: per variant, test main and ensemble metric, last-epoch validation main, epochs, time.

    Metrics in percent, mean ± sample std over the seeds with a record.
    """
    metric = _metric(runs)
    label = reporting.METRIC_LABELS.get(metric, metric)
    variants = variants or _variants(runs)
    header = ["variant", "seeds", "epochs", f"test main {label} (%)", f"test ensemble {label} (%)",
              f"val main {label} (%), last epoch", "train time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        records = [r for (v, _), r in sorted(runs.items(), key=lambda item: item[0][1]) if v == variant]
        epochs = sorted({int(r["train_config"]["epochs"]) for r in records})
        validation = [r["history"][f"val_main_{metric}"][-1] for r in records if f"val_main_{metric}" in r["history"]]
        cells = [
            variant,
            str(len(records)),
            "/".join(str(e) for e in epochs),
            _cell([r["test"][f"main_{metric}"] for r in records]),
            _cell([r["test"][f"ensemble_{metric}"] for r in records if f"ensemble_{metric}" in r["test"]]),
            _cell(validation),
            f"{np.mean([r['train_seconds'] for r in records]):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    mixed = mixed_code_commits(runs)
    if mixed:
        lines.append("")
        lines.append("Not like for like: these runs ran different code (commit: runs): " + "; ".join(
            f"{commit}: {', '.join(names)}" for commit, names in mixed.items()) + ".")
    return "\n".join(lines) + "\n"


def mixed_code_commits(runs):
    """{code commit: [run names]} when a comparison's runs ran different method code, else {}.

    Runs group by their record's `method_code` (`run_timing.method_code_fingerprint` of the
    method's files, taken when the run's process started); a record without one groups by its
    `code_commit` ("unknown" without either). Each group is named by its first run's commit.

    Example:
    >>> mixed_code_commits({("plain", 0): {"code_commit": "d7b5953aa", "method_code": "a1"},
    ...                     ("one", 0): {"code_commit": "476254fbb", "method_code": "b2"},
    ...                     ("one", 1): {"code_commit": "83d118ccc", "method_code": "a1"}})
    {'476254f': ['one_seed0'], 'd7b5953': ['plain_seed0', 'one_seed1']}
    """
    groups, names = {}, {}
    for (variant, seed), record in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        commit = (record.get("code_commit") or "unknown")[:7]
        key = record.get("method_code") or f"commit {commit}"
        names.setdefault(key, commit)
        groups.setdefault(key, []).append(f"{variant}_seed{seed}")
    return dict(sorted((names[key], runs_of) for key, runs_of in groups.items())) if len(groups) > 1 else {}


def gains_table(runs):
    """Markdown: every variant's main-branch gain over each baseline present, paired by seed, in points."""
    variants = _variants(runs)
    baselines = [v for v in variants if v.split(":")[0] in BASELINES or v.startswith("plain@")]
    return reporting.paired_gains_table(_by_name(runs), baselines, _metric(runs))


@dataclasses.dataclass
class HeadlineRow:
    """One row of the headline table: a comparison and which of its variants play which part."""

    label: str
    comparison: str
    variant: str = "mbakt_no_kd"
    plain: str = "plain"
    plain_same_time: str = "plain@mbakt_no_kd"
    byot: str = "byot"
    one: str = "one"


def _gain_cell(runs, variant, baseline, metric):
    gains = reporting.paired_gains(_by_name(runs), baseline, metric)
    gain = gains.get(variant)
    if gain is None:
        return "not measured"
    spread = f" ± {gain['std']:.2f}" if gain["n"] > 1 else ""
    text = f"{gain['mean']:+.2f}{spread} ({gain['n']})"
    # A difference counts when it exceeds twice its std over at least 3 seeds.
    return f"**{text}**" if gain["n"] >= 3 and gain["mean"] > 2 * gain["std"] else text


def headline_table(rows, results_dir):
    """Markdown: one row per `HeadlineRow`, the default's paired gains over each baseline.

    A cell reads `+0.41 ± 0.12 (3)`: mean ± std of the per-seed differences of
    the main branch's test metric, in points, over the 3 seeds both have; bold
    when more than twice its std over 3 or more seeds. The last cell holds the
    default's and plain's mean over the seeds both have. A row whose comparison
    has no records yet says so.
    """
    header = ["training images", "vs plain", "vs plain, same training time", "vs BYOT", "vs ONE-style",
              "main (%) default / plain"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = load_records(os.path.join(results_dir, row.comparison))
        if not runs:
            lines.append("| " + " | ".join([row.label] + ["not measured yet"] * 4 + ["-"]) + " |")
            continue
        metric = _metric(runs)
        cells = [row.label] + [
            _gain_cell(runs, row.variant, baseline, metric)
            for baseline in (row.plain, row.plain_same_time, row.byot, row.one)
        ]
        cells.append(_means_cell(runs, (row.variant, row.plain), metric))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _means_cell(runs, variants, metric):
    """`83.10 / 80.10 (3)`: each variant's mean test metric over the seeds they all have, so that a
    comparison still running does not set one seed of a variant against three of another. Without a
    common seed (one side not started), each side's own mean, `-` for none."""
    seeds = [{seed for (name, seed) in runs if name == variant} for variant in variants]
    common = set.intersection(*seeds)
    means = []
    for variant, own in zip(variants, seeds):
        values = [runs[variant, seed]["test"][f"main_{metric}"] for seed in sorted(common or own)]
        means.append(f"{100 * np.mean(values):.2f}" if values else "-")
    return " / ".join(means) + (f" ({len(common)})" if common else "")


def load_headline_rows(results_dir):
    """The `HeadlineRow`s listed in `<results_dir>/headline.json`."""
    path = os.path.join(results_dir, HEADLINE_FILE)
    with open(path) as f:
        return [HeadlineRow(**row) for row in json.load(f)["rows"]]


def render_section(kind, arg, results_dir):
    """The Markdown a `<!-- results:kind arg -->` section must hold."""
    if kind == "headline":
        return headline_table(load_headline_rows(results_dir), results_dir)
    if kind == "no_harm":
        from mbakt_tf import no_harm_report

        records = no_harm_report.load_records(os.path.join(results_dir, "no_harm"), arg or "full")
        if not records:
            raise RecordsNotFoundError(f"Section 'results:no_harm {arg}': no no-harm matrix records.")
        return no_harm_report.table(records) + "\n"
    if kind not in ("table", "gains"):
        raise ValueError(f"Unknown results section kind {kind!r}: headline, table, gains or no_harm.")
    records_dir = os.path.join(results_dir, arg or "")
    runs = load_records(records_dir)
    if not arg or not runs:
        raise RecordsNotFoundError(f"Section 'results:{kind} {arg}': no kept records under {records_dir}.")
    return comparison_table(runs) if kind == "table" else gains_table(runs)


def render_file(text, results_dir):
    """(new text, [(kind, arg) of every section whose body changed])."""
    changed = []

    def replace(match):
        body = render_section(match["kind"], match["arg"], results_dir)
        if body != match["body"]:
            changed.append((match["kind"], match["arg"]))
        return match["open"] + body + match["close"]

    return SECTION.sub(replace, text), changed


def update_file(path, results_dir="results"):
    """Rewrites every results section of `path` from the records; returns the sections that changed."""
    with open(path) as f:
        text = f.read()
    new_text, changed = render_file(text, results_dir)
    if changed:
        with open(path, "w") as f:
            f.write(new_text)
    return changed


def check_file(path, results_dir="results"):
    """The sections of `path` that differ from what the records give ([] when all match)."""
    with open(path) as f:
        return render_file(f.read(), results_dir)[1]


def count_sections(path):
    """How many results sections `path` holds."""
    with open(path) as f:
        return len(SECTION.findall(f.read()))


def gain_points(rows, results_dir):
    """{training images: {variant: paired gain over plain}} of the headline comparisons, for the gain plot."""
    points = {}
    for row in rows:
        runs = load_records(os.path.join(results_dir, row.comparison))
        if not runs or _metric(runs) != "accuracy":
            continue
        size = next(iter(runs.values()))["dataset"]["num_train"]
        gains = reporting.paired_gains(_by_name(runs), row.plain, "accuracy")
        points[size] = {
            label: gains[name]
            for label, name in (("default", row.variant), ("BYOT", row.byot), ("ONE-style", row.one))
            if name in gains
        }
        same_time = reporting.paired_gains(_by_name(runs), row.plain_same_time, "accuracy")
        if row.variant in same_time:
            points[size]["default vs plain, same time"] = same_time[row.variant]
    return points
