"""A trained run on disk: its MBAKT model file, the config it recorded, and its data.

`scripts/train.py` writes `saved_models/<run>/model.keras` and, beside it,
`results.json` with the training config. The evaluate, export and optimize
tools start from that folder: they load the model with clear errors, read the
recorded dataset settings, and load the same splits (the run's validation
carve stays held out).

Example:
```python
from mbakt_tf import saved_runs
path = saved_runs.resolve_model_path("saved_models/quickstart")   # .../model.keras
model = saved_runs.load_mbakt_model(path)
splits = saved_runs.load_run_splits(model, path, batch_size=256, augment=False)
images, labels = saved_runs.take_images(splits.test, limit=1000)
saved_runs.sibling_dir(path, "_export")                          # 'saved_models/quickstart_export'
```
"""

import json
import os
import zipfile

import numpy as np

from mbakt_tf import branch_names

MBAKT_CLASSES = ("MBAKT", "MBAKTSegmenter")
RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"


class ModelFileNotFoundError(FileNotFoundError):
    """No saved model where the caller said."""


class NotMBAKTModelError(ValueError):
    """The file exists but does not hold an `MBAKT` model."""


def resolve_model_path(path):
    """A `.keras` path from a file or a run folder (which must hold `model.keras`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise ModelFileNotFoundError(
            f"No saved model at {path!r}: pass a run's model.keras or its run folder "
            "(e.g. saved_models/quickstart)."
        )
    return path


def _saved_config(path):
    """A .keras archive's config.json as a dict, without loading the model."""
    if not zipfile.is_zipfile(path):
        raise NotMBAKTModelError(
            f"{path} is not a Keras .keras archive (a zip file): save the model with "
            "model.save('....keras')."
        )
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            raise NotMBAKTModelError(f"{path} is a zip file but not a Keras .keras archive (no config.json).")
        return json.loads(archive.read("config.json"))


def _saved_class(path):
    """(class_name, registered_name, name) from a .keras archive's config, without loading it."""
    config = _saved_config(path)
    return config.get("class_name"), config.get("registered_name"), config.get("config", {}).get("name")


def saved_class_name(path):
    """The class of the model saved at `path` (a .keras file or run folder), e.g. "MBAKTSegmenter"; no TensorFlow."""
    return _saved_class(resolve_model_path(path))[0]


def saved_branch_names(path):
    """`["main", "branch_1", ...]` of the MBAKT model saved at `path`, read from its config (no TensorFlow).

    None when the config does not name its network's outputs (then loading the model tells).
    """
    network = _saved_config(resolve_model_path(path)).get("config", {}).get("network")
    outputs = network.get("config", {}).get("output_layers") if isinstance(network, dict) else None
    return branch_names.branch_names_of(outputs) if isinstance(outputs, dict) else None


def check_mbakt_model_file(path):
    """The `.keras` path of `path` (a file or run folder) when it holds an MBAKT model; reads only its config.

    Needs no TensorFlow, so the scripts refuse a wrong `--model` in a moment
    instead of after TensorFlow's start.

    Raises:
        ModelFileNotFoundError: nothing at `path`.
        NotMBAKTModelError: not a .keras archive, or it holds another kind of
            model (e.g. `main_branch.keras`, the main branch alone).
    """
    path = resolve_model_path(path)
    class_name, registered, name = _saved_class(path)
    if class_name not in MBAKT_CLASSES and registered not in {f"mbakt_tf>{c}" for c in MBAKT_CLASSES}:
        hint = (
            " main_branch.keras is the main branch alone; use the run's model.keras."
            if os.path.basename(path) == "main_branch.keras"
            else ""
        )
        raise NotMBAKTModelError(
            f"{path} holds a {class_name} model ({name!r}), not an MBAKT model: this needs the "
            f"whole MBAKT model to know its branches.{hint}"
        )
    return path


def load_mbakt_model(path):
    """Loads an `MBAKT` model from a `.keras` file or a run folder, with clear errors.

    Raises:
        ModelFileNotFoundError: nothing at `path`.
        NotMBAKTModelError: not a .keras archive, or it holds another kind of
            model (e.g. `main_branch.keras`, the main branch alone).
    """
    import keras

    from mbakt_tf import tasks
    from mbakt_tf.multi_branch_model import MultiBranchModel

    for task in tasks.TASKS.values():
        task.model_class()  # registers every task's model class for load_model

    path = check_mbakt_model_file(path)
    try:
        model = keras.models.load_model(path)
    except Exception as error:  # noqa: BLE001 - any loader failure means "not loadable here"
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise NotMBAKTModelError(f"{path} could not be loaded as an MBAKT model: {first_line}") from error
    if not isinstance(model, MultiBranchModel):
        raise NotMBAKTModelError(f"{path} holds a {type(model).__name__}, not an MBAKT model.")
    return model


def recorded_run(model_path):
    """The run's results.json beside `model_path` as a dict ({} when there is none)."""
    results = os.path.join(os.path.dirname(os.path.abspath(model_path)), RESULTS_FILE)
    if not os.path.isfile(results):
        return {}
    with open(results) as f:
        return json.load(f)


def is_segmenter(model):
    """True for an `MBAKTSegmenter` (label maps), False for a classifier."""
    from mbakt_tf.segmentation_model import MBAKTSegmenter

    return isinstance(model, MBAKTSegmenter)


def load_run_splits(model, model_path, dataset=None, data_dir=None, image_size=None, **loader_kwargs):
    """The run's dataset splits for `model`'s task, settings from its results.json.

    `dataset`, `data_dir` and `image_size` override the recorded ones; the
    validation fraction, seed and synthetic settings are the run's, so its
    validation images stay out of the training split. `loader_kwargs`
    (`batch_size`, `augment`, `train_limit`, `test_limit`, ...) go to
    `data.load_segmentation` for a segmenter and `data.load_classification`
    otherwise. A segmenter trained on a folder reads its masks with the
    model's `num_classes` and `ignore_label`. `batch_size` is capped at the
    run's recorded number of training images, so that the training split
    (which drops its last partial batch) of a small dataset still yields one.

    Raises:
        ValueError: no dataset given and none recorded; data whose classes
            are not the model's (their number, or the class names the run
            recorded).
    """
    from mbakt_tf import data

    run = recorded_run(model_path)
    recorded = run.get("train_config", {})
    dataset = dataset or recorded.get("dataset")
    if dataset is None:
        raise ValueError(
            f"No dataset: {model_path} has no {RESULTS_FILE} beside it; pass dataset= (--dataset)."
        )
    settings = {
        "data_dir": data_dir or recorded.get("data_dir"),
        "validation_fraction": recorded.get("validation_fraction", 0.1),
        "image_size": image_size or recorded.get("image_size"),
        "seed": recorded.get("seed", 0),
        "synthetic_kwargs": recorded.get("synthetic_kwargs") if dataset == "synthetic" else None,
        **loader_kwargs,
    }
    num_train = run.get("dataset", {}).get("num_train")
    if num_train and settings.get("batch_size") and dataset == recorded.get("dataset"):
        settings["batch_size"] = max(1, min(settings["batch_size"], int(num_train)))
    if is_segmenter(model) and dataset == "folder":
        settings.update(num_classes=model.num_classes, ignore_label=model.ignore_label)
    load = data.load_segmentation if is_segmenter(model) else data.load_classification
    splits = load(dataset, **settings)
    check_classes(model, model_path, splits.info, run.get("dataset", {}).get("class_names"))
    return splits


def check_classes(model, model_path, info, recorded_names=None):
    """Raises `ValueError` when `info`'s classes are not `model`'s: their number, or the names the run recorded."""
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"{model_path} predicts {model.num_classes} classes but the data ({info.source or info.name}) has "
            f"{info.num_classes}: {', '.join(map(str, info.class_names[:12]))}. Pass the data it was trained on."
        )
    if recorded_names and list(recorded_names) != list(info.class_names):
        raise ValueError(
            f"{model_path} was trained on the classes {recorded_names} (its {RESULTS_FILE}), but the data "
            f"({info.source or info.name}) names them {info.class_names}: class i would get the wrong name."
        )


def provenance(model, model_path, splits, head="main"):
    """What a derived file came from: model path, mode, backbone, data, and the run's test figures of `head`."""
    run = recorded_run(model_path)
    test = run.get("test", {})
    source = {
        "model_path": os.path.abspath(model_path),
        "mode": model.config.mode,
        "backbone": run.get("train_config", {}).get("backbone"),
        "dataset": splits.info.name,
        "num_train": splits.info.num_train,
        "recorded_test_accuracy": test.get(f"{head}_accuracy"),
    }
    if is_segmenter(model):
        source["recorded_test_miou"] = test.get(f"{head}_miou")
    return source


def take_images(dataset, limit=None):
    """`(images, labels)` numpy arrays from the first batches of `dataset`, at most `limit`."""
    images, labels, count = [], [], 0
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
        count += len(x)
        if limit is not None and count >= limit:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def sibling_dir(model_path, suffix):
    """`saved_models/<run><suffix>`: a folder beside the run folder of `model_path`."""
    run_dir = os.path.dirname(os.path.abspath(model_path))
    path = os.path.join(os.path.dirname(run_dir), os.path.basename(run_dir) + suffix)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
