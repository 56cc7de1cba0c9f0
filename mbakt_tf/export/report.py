"""`format_report`: the plain-text summary `scripts/export.py` prints of an export's manifest.

Example:
```python
result = mbakt_tf.export.export_from_file("saved_models/quickstart")
print(format_report(result.manifest))   # sizes, parity, accuracy, latency, MediaPipe, checks
```
"""

from mbakt_tf.checks import Checks
from mbakt_tf.export.mediapipe_steps import mediapipe_lines
from mbakt_tf.reporting import format_size, text_table


def format_report(manifest):
    """A plain-text summary of a manifest: sizes, parity, accuracy, latency, checks."""
    evaluation = manifest["evaluation"]
    model = manifest["model"]
    lines = [
        f"Exported {model['branch']}: {model['parameters']:,} parameters, "
        f"{_count(model['flops_per_image'])} FLOPs/image (main branch: {model['main_branch_parameters']:,}, "
        f"{_count(model['main_branch_flops_per_image'])}; training network "
        f"{model['training_network_parameters']:,} + discriminator {model['discriminator_parameters']:,})",
        f"Parity and accuracy on {evaluation['images']} held-out test images "
        f"(Keras accuracy {100 * evaluation['keras']['accuracy']:.2f}%"
        + (f", mIoU {100 * evaluation['keras']['miou']:.2f}%" if "miou" in evaluation["keras"] else "")
        + "):",
    ]
    segmentation = "miou" in evaluation["keras"]  # accuracy and agreement are per pixel
    rows = [("format", "file", "size", "accuracy / mIoU" if segmentation else "accuracy", "max|dlogit|",
             "top-1 agree", "latency")]
    latency = manifest.get("latency") or {}
    for fmt, doc in manifest["files"].items():
        figures = evaluation[fmt]
        lat = latency.get(fmt)
        rows.append((
            fmt,
            doc["path"] + ("/" if fmt == "saved_model" else ""),
            format_size(doc["bytes"]),
            f"{100 * figures['accuracy']:.2f}%"
            + (f" / {100 * figures['miou']:.2f}%" if segmentation else ""),
            f"{figures['max_abs_logit_diff']:.2g}",
            f"{100 * figures['top1_agreement']:.2f}%",
            "-" if lat is None else f"{lat['median_ms']:.3f} ms",
        ))
    lines.append(text_table(rows))
    if manifest.get("int8_accuracy_drop") is not None:
        lines.append(f"int8 accuracy drop vs Keras float: {100 * manifest['int8_accuracy_drop']:.2f} points")
    if latency.get("int8_over_float32") is not None:
        lines.append(
            f"LiteRT latency int8 / float32 (median of {latency['int8']['runs']} runs, batch 1, "
            f"{latency['num_threads']} thread): {latency['int8_over_float32']:.2f}"
        )
    lines.extend(mediapipe_lines(manifest.get("mediapipe")))
    lines.append(Checks(manifest["checks"]).summary())
    return "\n".join(lines)


def _count(value):
    return "n/a" if value is None else f"{value:,}"
