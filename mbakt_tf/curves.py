"""A picture of one run (`curves.png`): every head's accuracy, the loss terms and the discriminator, per epoch.

It answers three questions at a glance: do the branches learn (train and
validation accuracy of every head), does the teacher (`ensemble`) beat the
`main` branch on validation, and is the adversary alive (the discriminator's
balanced accuracy: 0.5 is chance, stuck at 0 or 1 is a collapse).
Segmentation histories (with `<head>_miou`) are drawn in mIoU instead of
(pixel) accuracy.

Example:
```python
history = json.load(open("saved_models/quickstart/results.json"))["history"]
drawn = save_curves(history, "saved_models/quickstart/curves.png", title="quickstart")
drawn["validation accuracy"]  # ['val_main_accuracy', 'val_branch_1_accuracy', ..., 'val_ensemble_accuracy']
```
"""

import logging
import math

from mbakt_tf.reporting import head_order

logger = logging.getLogger("mbakt_tf.curves")

# Training-loss terms in the order drawn (whichever the history has).
LOSS_TERMS = ("loss", "ce", "ensemble_ce", "kd", "hint", "adv")
DISCRIMINATOR = ("d_balanced_accuracy", "d_loss")


def head_metric(history):
    """`"miou"` when the history has `<head>_miou` entries (segmentation), else `"accuracy"`.

    Example:
    >>> head_metric({"main_accuracy": [0.5], "main_miou": [0.3]}), head_metric({"main_accuracy": [0.5]})
    ('miou', 'accuracy')
    """
    return "miou" if any(key.endswith("_miou") for key in history) else "accuracy"


def panels(history):
    """{panel title: [history keys]}: what `save_curves` draws, panel by panel, line by line.

    Heads come in `reporting.head_order` (main, branch_1, ..., ensemble);
    panels without anything to draw are left out (a plain run has no
    discriminator panel).

    Example:
    >>> panels({"loss": [1.0], "ce": [1.0], "main_accuracy": [0.5], "val_main_accuracy": [0.4],
    ...         "d_balanced_accuracy": [0.6]})
    {'train accuracy': ['main_accuracy'], 'validation accuracy': ['val_main_accuracy'], \
'training losses': ['loss', 'ce'], 'discriminator': ['d_balanced_accuracy']}
    """
    metric = head_metric(history)
    label = "mIoU" if metric == "miou" else "accuracy"
    suffix = f"_{metric}"
    # head_order keeps only main / branch_k / ensemble (not e.g. d_balanced_accuracy).
    train_heads = head_order({k[: -len(suffix)] for k in history
                              if k.endswith(suffix) and not k.startswith("val_")})
    val_heads = head_order({k[len("val_"): -len(suffix)] for k in history
                            if k.startswith("val_") and k.endswith(suffix)})
    drawn = {
        f"train {label}": [f"{head}{suffix}" for head in train_heads],
        f"validation {label}": [f"val_{head}{suffix}" for head in val_heads],
        "training losses": [key for key in LOSS_TERMS if key in history],
        "discriminator": [key for key in DISCRIMINATOR if key in history],
    }
    return {title: keys for title, keys in drawn.items() if keys}


def save_curves(history, path, title=None):
    """Draws `history` (`{key: [value per epoch]}`, as in results.json) into a PNG at `path`.

    Returns `panels(history)`, what was drawn; `None`, with a one-line
    warning, when matplotlib is not installed or the history is empty.
    """
    drawn = panels(history)
    if not drawn or not any(len(history[k]) for keys in drawn.values() for k in keys):
        logger.warning("curves: nothing to draw for %s (empty history)", path)
        return None
    try:
        import matplotlib
    except ImportError:
        logger.warning("curves: matplotlib is not installed, %s not written (pip install matplotlib)", path)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # One colour per head, the same in the train and the validation panel.
    heads = head_order({_head(k) for keys in drawn.values() for k in keys} - {None})
    colours = {head: f"C{i % 10}" for i, head in enumerate(heads)}
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.0 * len(drawn), 3.4), squeeze=False)
    for ax, (panel, keys) in zip(axes[0], drawn.items()):
        for key in keys:
            values = history[key]
            head = _head(key)
            style = "-" if head in (None, "main", "ensemble") else "--"
            ax.plot(range(1, len(values) + 1), values, style, marker="o", markersize=3,
                    color=colours.get(head), label=head or key)
        if panel == "training losses" and all(v > 0 for k in keys for v in history[k]):
            ax.set_yscale("log")
        if panel == "discriminator":
            ax.axhline(0.5, color="gray", linewidth=1, linestyle=":", label="balanced acc. at chance")
            if "d_loss" in keys:
                ax.axhline(math.log(2), color="gray", linewidth=1, linestyle="-.", label="d_loss at chance (ln 2)")
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    # Train and validation accuracy on one scale, so the gap between them reads off directly.
    accuracy_axes = [ax for ax, panel in zip(axes[0], drawn) if panel.startswith(("train ", "validation "))]
    if len(accuracy_axes) == 2:
        low = min(ax.get_ylim()[0] for ax in accuracy_axes)
        high = max(ax.get_ylim()[1] for ax in accuracy_axes)
        for ax in accuracy_axes:
            ax.set_ylim(low, high)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def _head(key):
    """`main` for `val_main_accuracy` / `main_miou`; None for a key that is not a head's metric."""
    name = key[len("val_"):] if key.startswith("val_") else key
    for suffix in ("_accuracy", "_miou"):
        if name.endswith(suffix):
            head = name[: -len(suffix)]
            return head if head_order({head}) else None
    return None
