"""The tasks MBAKT trains, in one table: what differs between classification and segmentation.

Each `Task` names its model class (a `multi_branch_model.MultiBranchModel`
subclass), its data loader, the metric comparisons report, and what the
model needs from the dataset (the segmentation label that marks ignored
pixels). `training`, `comparison` and the scripts look the task up here
instead of testing names. Classes and loaders are named by import path and
loaded on first use, so this module is light (the flags read `TASK_NAMES`
before TensorFlow loads) and imports neither model module.

Example:
>>> get_task("segmentation").metric
'miou'
>>> TASK_NAMES
('classification', 'segmentation')
"""

import dataclasses
import importlib


def _load(path):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: its model, its data, its headline metric.

    Attributes:
        name: the `--task` value.
        model: `"module:Class"` of its `MultiBranchModel` subclass.
        loader: `"module:function"` that loads its `DatasetSplits`.
        metric: the per-head metric comparisons tabulate and plot.
        run_suffix: appended to the dataset in default comparison names.
        uses_ignore_label: its model takes the dataset's `ignore_label`.
        loader_fields: `TrainConfig` fields its loader takes besides the
            common ones (the mask settings of a folder of your own).
    """

    name: str
    model: str
    loader: str
    metric: str
    run_suffix: str = ""
    uses_ignore_label: bool = False
    loader_fields: tuple = ()

    def model_class(self):
        return _load(self.model)

    def load_data(self, dataset, **kwargs):
        return _load(self.loader)(dataset, **kwargs)

    def model_kwargs(self, info):
        """What the model needs from the dataset `info` besides classes and shape."""
        return {"ignore_label": getattr(info, "ignore_label", None)} if self.uses_ignore_label else {}

    def build_model(self, backbone, info, config, **kwargs):
        """The task's model on `backbone` for the dataset `info` (not compiled)."""
        return self.model_class().from_backbone(
            backbone, num_classes=info.num_classes, input_shape=info.input_shape, config=config,
            **self.model_kwargs(info), **kwargs,
        )


TASKS = {
    "classification": Task(
        "classification", model="mbakt_tf.model:MBAKT",
        loader="mbakt_tf.data:load_classification", metric="accuracy",
    ),
    "segmentation": Task(
        "segmentation", model="mbakt_tf.segmentation_model:MBAKTSegmenter",
        loader="mbakt_tf.data:load_segmentation", metric="miou", run_suffix="_segmentation",
        uses_ignore_label=True, loader_fields=("num_classes", "ignore_label"),
    ),
}
TASK_NAMES = tuple(TASKS)


def get_task(name):
    """The `Task` called `name`; a `ValueError` naming the known ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; supported: {', '.join(repr(t) for t in TASKS)}.")
    return TASKS[name]
