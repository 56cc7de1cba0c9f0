"""One training run from config objects: data, model, optimizers, fit, test, save.

The scripts turn flags into a `TrainConfig` and an `MBAKTConfig` and call
`train`; anything that compares runs (seeds, modes) calls it the same way.

Example:
```python
result = train(TrainConfig(dataset="fashion_mnist", epochs=1), MBAKTConfig(mode="mbakt"))
print(format_branch_table(result.test_results, result.parameter_counts))
```
"""

import dataclasses
import json
import os
import time
from typing import Optional, Tuple

import keras

from mbakt_tf import data as data_lib
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.model import ENSEMBLE, MBAKT

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass
class TrainConfig:
    """Everything about a run except the MBAKT objective (that is `MBAKTConfig`).

    Example:
    >>> TrainConfig(epochs=2, batch_size=64).run_name_for(MBAKTConfig(mode="plain"))
    'fashion_mnist_small_resnet8_plain_seed0'
    """

    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    validation_fraction: float = 0.1
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    augment: bool = True
    backbone: str = "small_resnet8"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    d_learning_rate: float = 2e-4
    seed: int = 0
    jit_compile: bool = False
    output_dir: str = "saved_models"
    run_name: Optional[str] = None
    verbose: int = 1
    synthetic_kwargs: Optional[dict] = None

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises `ValueError` naming the first field that makes no sense."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "d_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}."
            )
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}.")

    def run_name_for(self, mbakt_config):
        return self.run_name or f"{self.dataset}_{self.backbone}_{mbakt_config.mode}_seed{self.seed}"

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainResult:
    model: MBAKT
    history: dict
    test_results: dict
    parameter_counts: dict
    run_dir: str
    wall_time_seconds: float
    info: data_lib.DatasetInfo


def make_optimizers(train_config, steps_per_epoch):
    """(generator optimizer, discriminator optimizer) for `train_config`."""
    total_steps = max(1, train_config.epochs * steps_per_epoch)
    learning_rate = train_config.learning_rate
    if train_config.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    decay = train_config.weight_decay or None
    if train_config.optimizer == "sgd":
        g_optimizer = keras.optimizers.SGD(
            learning_rate, momentum=train_config.momentum, nesterov=train_config.momentum > 0,
            weight_decay=decay,
        )
    elif train_config.optimizer == "adam":
        g_optimizer = keras.optimizers.Adam(learning_rate, weight_decay=decay)
    else:
        g_optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=train_config.weight_decay)
    d_optimizer = keras.optimizers.Adam(train_config.d_learning_rate, beta_1=0.5)
    return g_optimizer, d_optimizer


def load_data(train_config):
    return data_lib.load_classification(
        train_config.dataset,
        data_dir=train_config.data_dir,
        batch_size=train_config.batch_size,
        validation_fraction=train_config.validation_fraction,
        image_size=train_config.image_size,
        augment=train_config.augment,
        seed=train_config.seed,
        train_limit=train_config.train_limit,
        test_limit=train_config.test_limit,
        synthetic_kwargs=train_config.synthetic_kwargs,
    )


def parameter_counts(model):
    """Parameters of the exported main branch, each early-exit branch, and training-only parts."""
    counts = {"main": model.main_model().count_params()}
    for branch in model.branch_names[1:]:
        counts[branch] = model.branch_model(branch).count_params()
    counts["training_network"] = model.network.count_params()
    if model.discriminator is not None:
        counts["discriminator"] = model.discriminator.count_params()
    return counts


def train(train_config, mbakt_config, callbacks=(), splits=None):
    """Trains one model, evaluates it on the test split and saves it under the run dir.

    Writes `model.keras` (the whole MBAKT model), `main_branch.keras` (the plain
    main branch) and `results.json` into `output_dir/run_name/`. `splits`, when
    given, is what `load_data(train_config)` returned.
    """
    keras.utils.set_random_seed(train_config.seed)
    if splits is None:
        splits = load_data(train_config)
    info = splits.info
    steps_per_epoch = max(1, info.num_train // train_config.batch_size)
    model = MBAKT.from_backbone(
        train_config.backbone, num_classes=info.num_classes, input_shape=info.input_shape,
        config=mbakt_config,
    )
    g_optimizer, d_optimizer = make_optimizers(train_config, steps_per_epoch)
    model.compile(g_optimizer=g_optimizer, d_optimizer=d_optimizer, jit_compile=train_config.jit_compile)

    run_dir = os.path.join(train_config.output_dir, train_config.run_name_for(mbakt_config))
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()
    history = model.fit(
        splits.train,
        validation_data=splits.validation,
        epochs=train_config.epochs,
        callbacks=list(callbacks),
        verbose=train_config.verbose,
        shuffle=False,  # the tf.data pipeline shuffles with the run's seed
    )
    train_seconds = time.time() - start
    test_results = model.evaluate(splits.test, return_dict=True, verbose=0)
    counts = parameter_counts(model)

    model.save(os.path.join(run_dir, "model.keras"))
    model.main_model().save(os.path.join(run_dir, "main_branch.keras"))
    summary = {
        "train_config": train_config.to_dict(),
        "mbakt_config": mbakt_config.to_dict(),
        "dataset": dataclasses.asdict(info),
        "test": {k: float(v) for k, v in test_results.items()},
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "parameters": counts,
        "train_seconds": train_seconds,
    }
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return TrainResult(
        model=model, history=summary["history"], test_results=summary["test"],
        parameter_counts=counts, run_dir=run_dir, wall_time_seconds=train_seconds, info=info,
    )


def heads_in(results):
    """Head names present in evaluate() results, main first, ensemble last."""
    heads = [k[: -len("_accuracy")] for k in results if k.endswith("_accuracy")]
    branches = sorted((h for h in heads if h.startswith("branch_")), key=lambda h: int(h.split("_")[1]))
    return [h for h in ["main"] if h in heads] + branches + [h for h in [ENSEMBLE] if h in heads]


def format_branch_table(results, parameter_counts=None):
    """A plain-text table: one row per head with accuracy, loss and parameters."""
    parameter_counts = parameter_counts or {}
    rows = [("head", "accuracy", "loss", "inference params")]
    for head in heads_in(results):
        loss = results.get(f"{head}_loss", results.get("loss") if head == "main" else None)
        params = parameter_counts.get(head)
        rows.append((
            head,
            f"{100 * results[f'{head}_accuracy']:.2f}%",
            "-" if loss is None else f"{loss:.4f}",
            "-" if params is None else f"{params:,}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
