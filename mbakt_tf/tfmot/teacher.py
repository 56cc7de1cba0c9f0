"""The fine-tuning epochs and the teacher's logits on them (Keras 3 side).

The MBAKT model keeps teaching during the tfmot fine-tune, but it cannot be
loaded in the tfmot process. So here the training pipeline runs once per
fine-tuning epoch (reshuffled, re-augmented) and each pass is stored with the
**teacher's logits on exactly those images** (`handoff.write_epoch_file`):
the ensemble of all branches, or the float main branch.

Example:
```python
from mbakt_tf.tfmot import teacher
name = teacher.resolve_teacher(model, "auto")                # "ensemble" with auxiliary branches
files = teacher.write_training_epochs(splits.train, 2, "/tmp/work", teacher.teacher_function(model, name))
```
"""

import os

import numpy as np

from mbakt_tf.tfmot import handoff

def teacher_function(model, teacher):
    """A `tf.function(images) -> teacher logits` of an MBAKT model, or None for `"none"`."""
    import tensorflow as tf

    if teacher == "none":
        return None
    head = "ensemble" if teacher == "ensemble" else "main"

    @tf.function
    def logits(images):
        return model.branch_logits(images, training=False)[head]

    return logits


def resolve_teacher(model, teacher):
    """`"ensemble"`, `"main"` or `"none"` for `model` and a requested `teacher`."""
    has_ensemble = len(model.branch_names) > 1
    if teacher == "auto":
        return "ensemble" if has_ensemble else "main"
    if teacher == "ensemble" and not has_ensemble:
        raise ValueError("teacher='ensemble' needs auxiliary branches; this model has only the main branch "
                         "(trained in mode 'plain'): use teacher='main' or 'auto'.")
    return teacher


def write_training_epochs(dataset, epochs, work_dir, teacher_fn=None, limit=None, progress=None):
    """Runs the training pipeline `epochs` times; writes each pass with its teacher logits.

    The pipeline reshuffles and re-augments every pass; the teacher sees exactly
    the images the student will see. Returns the file paths.
    """
    paths = []
    for epoch in range(epochs):
        if progress:
            progress(f"Epoch {epoch + 1}/{epochs} of training images"
                     + (" with the teacher's logits" if teacher_fn is not None else ""))
        images, labels, logits, count = [], [], [], 0
        for x, y in dataset:
            images.append(x.numpy())
            labels.append(y.numpy())
            if teacher_fn is not None:
                logits.append(np.asarray(teacher_fn(x)))
            count += len(x)
            if limit is not None and count >= limit:
                break
        path = os.path.join(work_dir, f"train_epoch{epoch}.npz")
        handoff.write_epoch_file(path, np.concatenate(images)[:limit], np.concatenate(labels)[:limit],
                                 np.concatenate(logits)[:limit] if logits else None)
        paths.append(path)
    return paths
