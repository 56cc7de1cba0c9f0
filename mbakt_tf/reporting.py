"""Report writers: Markdown and plain-text tables, sizes, and accuracy plots (PNG).

JSON files are written with `mbakt_tf.atomic.write_json`.

Example:
```python
atomic.write_text("out/results.md", markdown_table(summary))
plot_validation_curves(runs, "out/validation_accuracy.png")
print(text_table([("format", "size"), ("int8", format_size(181_248))]))
```
"""


def head_order(heads):
    """`heads` as `main`, `branch_1`, `branch_2`, ... (numerically), `ensemble`.

    Example:
    >>> head_order({"ensemble", "branch_10", "branch_2", "main"})
    ['main', 'branch_2', 'branch_10', 'ensemble']
    """
    branches = sorted((h for h in heads if h.startswith("branch_")), key=lambda h: int(h.split("_")[1]))
    return [h for h in ["main"] if h in heads] + branches + [h for h in ["ensemble"] if h in heads]


def text_table(rows):
    """Rows of strings as aligned columns, a dashed rule under the first (header) row.

    Example:
    >>> print(text_table([("a", "bb"), ("ccc", "d")]))
    a    bb
    ---  --
    ccc  d
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_size(num_bytes):
    """`"177.0 KiB"` / `"1.57 MiB"`; `"-"` for None.

    Example:
    >>> format_size(181248), format_size(1646264), format_size(None)
    ('177.0 KiB', '1.57 MiB', '-')
    """
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 1024:.1f} KiB" if num_bytes < 1024**2 else f"{num_bytes / 1024**2:.2f} MiB"


def _percent(stat):
    if stat["n"] > 1:
        return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"
    return f"{100 * stat['mean']:.2f}"


METRIC_LABELS = {"accuracy": "acc.", "miou": "mIoU"}


def markdown_table(summary, variants=None, metric="accuracy"):
    """One row per variant: main-branch accuracy first, then every branch, ensemble, costs, time.

    Accuracies (or `metric`, e.g. "miou" for segmentation) are test-set
    mean ± sample std over seeds, in percent.
    """
    variants = variants or list(summary)
    heads = head_order({h for v in variants for h in summary[v][metric]})
    header = (
        ["variant", "seeds"] + [f"{h} {METRIC_LABELS.get(metric, metric)} (%)" for h in heads]
        + ["main params", "main MFLOPs", "train time (s)"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        entry = summary[variant]
        accuracy = entry[metric]
        cells = [variant, str(accuracy["main"]["n"])]
        cells += [_percent(accuracy[h]) if h in accuracy else "-" for h in heads]
        cells.append(f"{entry['main_params']:,}")
        cells.append(f"{entry['flops'] / 1e6:.2f}" if "flops" in entry else "-")
        cells.append(f"{entry['train_seconds']['mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_validation_curves(runs, path, variants=None, metric="accuracy"):
    """One panel per variant: validation accuracy (or `metric`) per epoch of every head, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_variant = {}
    for (variant, _), result in runs.items():
        by_variant.setdefault(variant, []).append(result["history"])
    variants = [v for v in (variants or list(by_variant)) if v in by_variant]
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.6), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        histories = by_variant[variant]
        heads = {k[len("val_"): -len(f"_{metric}")] for h in histories for k in h
                 if k.startswith("val_") and k.endswith(f"_{metric}")}
        for head in head_order(heads):
            key = f"val_{head}_{metric}"
            curves = [h[key] for h in histories if key in h]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            mean = np.mean([c[:length] for c in curves], axis=0)
            style = "-" if head in ("main", "ensemble") else "--"
            ax.plot(range(1, length + 1), 100 * mean, style, marker="o", markersize=3, label=head)
        ax.set_title(f"{variant} ({len(histories)} seeds)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"validation {'mIoU' if metric == 'miou' else metric} (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gain_over_plain(results, metric="accuracy"):
    """{variant: {"mean", "std", "n"}} of the main branch's gain over plain, paired by seed.

    `results` is a `compare.py` results.json (dict): for every seed that both
    a variant and plain finished, the difference of their main-branch test
    `metric`; mean and sample std over those seeds, in points (x 100).

    Example:
    >>> runs = {f"{v}_seed{s}": {"test": {"main_accuracy": a}}
    ...         for v, s, a in [("plain", 0, .80), ("plain", 1, .82), ("one", 0, .81), ("one", 1, .84)]}
    >>> gain_over_plain({"runs": runs})["one"]["mean"]  # doctest: +ELLIPSIS
    1.5...
    """
    return paired_gains(results, "plain", metric)


def paired_gains(results, baseline, metric="accuracy"):
    """Like `gain_over_plain`, over any `baseline` variant (e.g. "byot")."""
    import numpy as np

    by_variant = {}
    for name, result in results["runs"].items():
        variant, seed = name.rsplit("_seed", 1)
        by_variant.setdefault(variant, {})[int(seed)] = 100 * result["test"][f"main_{metric}"]
    reference = by_variant.get(baseline, {})
    gains = {}
    for variant, by_seed in by_variant.items():
        diffs = [by_seed[s] - reference[s] for s in sorted(by_seed) if s in reference]
        if variant == baseline or not diffs:
            continue
        gains[variant] = {
            "mean": float(np.mean(diffs)),
            "std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
            "n": len(diffs),
        }
    return gains


def paired_gains_table(results, baselines, metric="accuracy"):
    """Markdown: the main branch's gain of every variant over each of `baselines`, paired by seed.

    A cell reads `+1.36 ± 0.20 (3)`: mean ± sample std of the per-seed
    differences in points, over the 3 seeds both finished (no std for a
    single seed); "-" where none did.
    Baselines without runs are left out.

    Example:
    >>> runs = {f"{v}_seed{s}": {"test": {"main_accuracy": a}}
    ...         for v, s, a in [("plain", 0, .80), ("plain", 1, .82), ("one", 0, .81), ("one", 1, .84)]}
    >>> print(paired_gains_table({"runs": runs}, ["plain", "byot"]), end="")
    | variant | gain over plain (points) |
    |---|---|
    | one | +1.50 ± 0.71 (2) |
    """
    variants = list(dict.fromkeys(name.rsplit("_seed", 1)[0] for name in results["runs"]))
    gains = {b: paired_gains(results, b, metric) for b in baselines if b in variants}
    if not gains:
        return ""
    header = ["variant"] + [f"gain over {b} (points)" for b in gains]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        if all(variant == b for b in gains):
            continue
        cells = [variant]
        for by_variant in gains.values():
            gain = by_variant.get(variant)
            if gain is None:
                cells.append("-")
            else:
                spread = f" ± {gain['std']:.2f}" if gain["n"] > 1 else ""
                cells.append(f"{gain['mean']:+.2f}{spread} ({gain['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_gain_over_plain(points, path, metric="accuracy"):
    """Main-branch gain over plain (points) against training-set size, one line per variant.

    `points` maps a training-set size to that comparison's `gain_over_plain`
    dict; error bars are the std over seeds of the paired differences.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(points)
    variants = sorted({v for gains in points.values() for v in gains})
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for variant in variants:
        xs = [n for n in sizes if variant in points[n]]
        ys = [points[n][variant]["mean"] for n in xs]
        errors = [points[n][variant]["std"] for n in xs]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=variant)
        for x, y, n in zip(xs, ys, [points[n][variant]["n"] for n in xs]):
            ax.annotate(f"{n} seed{'s' if n > 1 else ''}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.0, color="gray", linewidth=1)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{n:,}" for n in sizes])
    ax.set_xlabel("training images")
    ax.set_ylabel(f"main-branch test {metric} - plain (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
