"""The hand-off files between the Keras 3 process and the tfmot process.

tensorflow-model-optimization (tfmot) quantizes and prunes only tf_keras
models, and importing it sets `TF_USE_LEGACY_KERAS=1`, after which keras-cv no
longer imports in that process. So the two sides never share a process: one
writes these files, the other reads them. This module is the format, and
imports only numpy and the standard library, so both sides use it.

In `<output_dir>/work/`:
```
bridge/graph.json       the main branch as tf_keras layers (describe.py writes it, rebuild.py reads it)
bridge/weights.npz      its weights, keyed "<layer>:<i>"
bridge/probe.npz        random images in [0, 255] and the Keras 3 outputs on them (the parity check)
train_epoch<k>.npz      one fine-tuning epoch: images (uint8 when they are pixels), labels, teacher logits
representative.npz      training images that calibrate post-training int8
job.json                what the worker does (make_job)
worker_result.json      what it did: parity, per method files, history, sparsity, versions
```

Example:
```python
from mbakt_tf.tfmot import handoff
handoff.write_epoch_file("/tmp/e0.npz", images, labels, teacher_logits)
images, target = handoff.read_epoch_file("/tmp/e0.npz", with_teacher=True)
target.shape          # (N, 1 + classes): the label in column 0, then the teacher's logits
```
"""

import json
import os

import numpy as np

from mbakt_tf import atomic

FORMAT = "mbakt_tf.tf_keras_bridge"
FORMAT_VERSION = 1
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.npz"
PROBE_FILE = "probe.npz"
JOB_FILE = "job.json"
REPRESENTATIVE_FILE = "representative.npz"
WORKER_RESULT = "worker_result.json"
# Outputs of the rebuilt model on the probe images must match the Keras 3 ones this closely.
PARITY_ATOL = 1e-5


class UnsupportedLayerError(ValueError):
    """The Keras 3 model holds a layer or op the bridge cannot express in tf_keras."""


class BridgeParityError(AssertionError):
    """The rebuilt tf_keras model's outputs differ from the Keras 3 model's."""


# ------------------------------------------------------------ the bridge folder


def write_bridge_files(directory, graph, weights, probe_images, reference):
    """Writes `graph.json`, `weights.npz` and `probe.npz` into `directory` (created)."""
    os.makedirs(directory, exist_ok=True)
    atomic.write_json(os.path.join(directory, GRAPH_FILE), graph, indent=1)
    np.savez(os.path.join(directory, WEIGHTS_FILE), **weights)
    np.savez(os.path.join(directory, PROBE_FILE), images=probe_images, reference=reference)
    return directory


def read_bridge(directory):
    """`(graph, weights, probe)` from a folder written by `write_bridge_files`."""
    with open(os.path.join(directory, GRAPH_FILE)) as f:
        graph = json.load(f)
    if graph.get("format") != FORMAT or graph.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory}/{GRAPH_FILE} is not a {FORMAT} v{FORMAT_VERSION} description "
            f"(format {graph.get('format')!r} v{graph.get('format_version')!r})."
        )
    with np.load(os.path.join(directory, WEIGHTS_FILE)) as saved:
        weights = {k: saved[k] for k in saved.files}
    probe = None
    probe_path = os.path.join(directory, PROBE_FILE)
    if os.path.exists(probe_path):
        with np.load(probe_path) as saved:
            probe = {k: saved[k] for k in saved.files}
    return graph, weights, probe




def count_layers(directory):
    """How many tf_keras layers the bridge folder describes."""
    with open(os.path.join(directory, GRAPH_FILE)) as f:
        return len(json.load(f)["nodes"])


# ------------------------------------------------------------ fine-tuning epochs


def write_epoch_file(path, images, labels, teacher_logits=None):
    """One fine-tuning epoch for the tfmot process: images (in order), labels, teacher logits."""
    images = np.asarray(images)
    if images.dtype != np.uint8 and np.all(images == np.round(images)) and images.min() >= 0 \
            and images.max() <= 255:
        images = images.astype(np.uint8)  # pixel values: 4x smaller, exact
    arrays = {"images": images, "labels": np.asarray(labels, np.int32)}
    if teacher_logits is not None:
        arrays["teacher"] = np.asarray(teacher_logits, np.float32)
    np.savez(path, **arrays)
    return path


def read_epoch_file(path, with_teacher):
    """`(images float32, target)` of an epoch file; target is the label column, then the teacher's logits."""
    with np.load(path) as saved:
        images = saved["images"].astype(np.float32)
        target = saved["labels"].astype(np.float32)[:, None]
        if with_teacher:
            if "teacher" not in saved.files:
                raise ValueError(f"{path} has no teacher logits, but the run asks for distillation.")
            target = np.concatenate([target, saved["teacher"]], axis=1)
    return images, target


def count_images(path):
    """How many images an epoch file holds."""
    with np.load(path) as saved:
        return int(len(saved["labels"]))


# ------------------------------------------------------------ the job and its result


def make_job(bridge_dir, train_files, representative_images, output_dir, work_dir, config, temperature):
    """The job description the worker reads (`config`: an `optimize.OptimizeConfig`)."""
    representative_path = os.path.join(work_dir, REPRESENTATIVE_FILE)
    np.savez(representative_path, images=np.asarray(representative_images, np.float32))
    runs = []
    for method in config.methods:
        kd = method == "qat_kd" or (method == "prune" and config.teacher != "none")
        runs.append({"name": "pruned" if method == "prune" else method,
                     "method": "prune" if method == "prune" else "qat", "kd": kd})
    return {
        "bridge_dir": os.path.abspath(bridge_dir),
        "train_files": [os.path.abspath(p) for p in train_files],
        "representative_file": os.path.abspath(representative_path),
        "output_dir": os.path.abspath(output_dir),
        "work_dir": os.path.abspath(work_dir),
        "runs": runs,
        "training": {
            "batch_size": config.batch_size,
            "optimizer": config.optimizer,
            "learning_rate": config.learning_rate,
            "alpha": config.alpha,
            "temperature": temperature,
            "seed": config.seed,
        },
        "pruning": {"target_sparsity": config.target_sparsity,
                    "end_fraction": config.pruning_end_fraction},
        "int8_io": config.int8_io,
    }


def write_job(work_dir, job):
    """Writes `job` (with where its result goes) to `work_dir/job.json`; returns `(job path, result path)`."""
    job_path = os.path.join(work_dir, JOB_FILE)
    result_path = os.path.join(work_dir, WORKER_RESULT)
    atomic.write_json(job_path, dict(job, result_file=result_path), indent=1)
    if os.path.exists(result_path):
        os.remove(result_path)
    return job_path, result_path


def read_json(path):
    """A job or a worker result."""
    with open(path) as f:
        return json.load(f)


def write_result(path, result):
    """The worker's result, written atomically (the Keras 3 side reads it only once it is whole)."""
    atomic.write_json(path, result, indent=1)


# ------------------------------------------------------------ slice keys


def encode_key(key):
    """A `x[key]` index (slices, Ellipsis, ints, None) as JSON."""
    items = key if isinstance(key, tuple) else (key,)
    encoded = []
    for item in items:
        if item is Ellipsis:
            encoded.append({"ellipsis": True})
        elif item is None:
            encoded.append({"newaxis": True})
        elif isinstance(item, slice):
            encoded.append({"slice": [item.start, item.stop, item.step]})
        elif isinstance(item, (int, np.integer)):
            encoded.append({"index": int(item)})
        else:
            raise UnsupportedLayerError(f"Cannot convert the index {key!r} to tf_keras.")
    return encoded


def decode_key(encoded):
    """The index `encode_key` wrote, back as a tuple for `x[...]`."""
    items = []
    for item in encoded:
        if "ellipsis" in item:
            items.append(Ellipsis)
        elif "newaxis" in item:
            items.append(None)
        elif "slice" in item:
            items.append(slice(*item["slice"]))
        else:
            items.append(item["index"])
    return tuple(items)
