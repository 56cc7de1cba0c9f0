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
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from mbakt_tf import atomic, curves, custom_loop, distribute, guards, reporting, resume, run_timing, tasks
from mbakt_tf import data as data_lib
from mbakt_tf.branches import ENSEMBLE
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.multi_branch_model import MultiBranchModel
from mbakt_tf.train_config import OPTIMIZERS, SCHEDULES, STRATEGIES, TASKS, TrainConfig  # noqa: F401 - re-exported

LOG_DIR = "logs"  # TensorBoard logs of a run: <run folder>/logs/{train,validation}


class NotWritableError(OSError):
    """A run's output folder cannot be created or written to."""


def check_writable(directory):
    """Creates `directory` and writes (then deletes) a file in it, or raises `NotWritableError`.

    A real write, not a permission check: root passes `os.access` everywhere,
    yet fails under a parent that is a regular file or on a read-only mount.

    Example:
    >>> import tempfile
    >>> a_file = tempfile.NamedTemporaryFile()
    >>> check_writable(a_file.name + "/logs")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mbakt_tf.training.NotWritableError: Cannot write to '.../logs': Not a directory
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_check_"):
            pass
    except OSError as error:
        raise NotWritableError(f"Cannot write to {directory!r}: {error.strerror or error}") from error


def check_run_dirs(train_config, run_dir):
    """`check_writable` on the run folder and, with TensorBoard on, its `logs/`; returns that (or None)."""
    check_writable(run_dir)
    if not train_config.tensorboard:
        return None
    log_dir = os.path.join(run_dir, LOG_DIR)
    check_writable(log_dir)
    return log_dir


def tensorboard_callback(log_dir, steps=0):
    """Keras's TensorBoard callback, scalars only: every history entry per epoch, and the learning rate.

    Training entries land in `log_dir/train`, `val_*` ones in
    `log_dir/validation`, both as `epoch_<name>` at step = epoch index;
    `epoch_learning_rate` is the generator optimizer's rate at the epoch's
    end. `steps` > 0 also logs every training entry as `batch_<name>` every
    `steps` steps. No graph (large for the two-optimizer step), no profiling.
    Raises `ImportError` at once without the `tensorboard` package (Keras
    would only fail at the first epoch's end, in `tf.summary.scalar`).
    """
    try:
        import tensorboard  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "TensorBoard logs need the tensorboard package (pip install tensorboard); "
            "or switch them off with tensorboard=False (--tensorboard=false)."
        ) from error
    return keras.callbacks.TensorBoard(
        log_dir, update_freq=steps or "epoch", write_graph=False, profile_batch=0,
    )


@dataclasses.dataclass
class TrainResult:
    model: MultiBranchModel
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
    """The run's `DatasetSplits`; a `ValueError` or `FileNotFoundError` (naming the file) for bad data."""
    task = tasks.get_task(train_config.task)
    return task.load_data(
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
        **{field: getattr(train_config, field) for field in task.loader_fields},
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


# Fields that do not change what a run computes: a backup written with other
# values of these still resumes (e.g. another output folder or verbosity, or
# fewer devices after a preemption).
_NOT_IN_FINGERPRINT = (
    "data_dir", "output_dir", "run_name", "verbose", "strategy", "cpu_devices", "deterministic",
    "backup_dir", "backup_steps", "stop_on_non_finite", "collapse_patience", "tensorboard",
    "tensorboard_steps",
)


def run_fingerprint(train_config, mbakt_config):
    """What a backup must match to be resumed: the configs minus paths and logging."""
    values = {k: v for k, v in train_config.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
    values.update({f"mbakt.{k}": v for k, v in mbakt_config.to_dict().items()})
    return values


def build_model(train_config, mbakt_config, info, steps_per_epoch):
    """The compiled MBAKT model of a run (call inside the strategy's scope)."""
    model = tasks.get_task(train_config.task).build_model(train_config.backbone, info, mbakt_config)
    if train_config.sync_batchnorm:
        distribute.synchronize_batchnorm(model)
    g_optimizer, d_optimizer = make_optimizers(train_config, steps_per_epoch)
    model.compile(g_optimizer=g_optimizer, d_optimizer=d_optimizer, jit_compile=train_config.jit_compile)
    return model


def train(train_config, mbakt_config, callbacks=(), splits=None, strategy=None):
    """Trains one model, evaluates it on the test split and saves it under the run dir.

    Writes `model.keras` (the whole MBAKT model), `main_branch.keras` (the plain
    main branch) and `results.json` into `output_dir/run_name/`, each
    atomically, then `curves.png` (see `curves`) and, with
    `train_config.tensorboard`, TensorBoard logs under `logs/` during
    training (see `tensorboard_callback`); a run folder it cannot write
    fails with `NotWritableError` before any work. `splits`, when given, is what `load_data(train_config)`
    returned. `strategy` defaults to `distribute.make_strategy(
    train_config.strategy, train_config.cpu_devices)`; model, both optimizers
    and metrics are created in its scope. With `multi_worker`, training runs
    in `custom_loop` (Keras 3.15.1 `fit` is broken there) and only the chief
    writes the outputs.

    With `backup_dir`, the whole training state is backed up at each epoch end
    (and every `backup_steps` steps) and a restarted run with the same configs
    resumes exactly where the newest backup stands (see `resume`); the backups
    are deleted once the outputs are saved. Non-finite losses stop training
    with `guards.NonFiniteLossError` (unless `stop_on_non_finite=False`); a
    collapsed discriminator is logged as a warning.
    """
    if strategy is None:
        strategy = distribute.make_strategy(train_config.strategy, train_config.cpu_devices)
    distribute.check_batch_size(train_config.batch_size, strategy)
    chief = distribute.is_chief(strategy)
    multi_worker = distribute.is_multi_worker(strategy)
    run_dir = os.path.join(train_config.output_dir, train_config.run_name_for(mbakt_config))
    # Non-chief workers write the same files into a scratch folder that is
    # deleted: every worker does the same work, only the chief's output stays.
    write_dir = run_dir if chief else tempfile.mkdtemp(prefix="mbakt_worker_")
    log_dir = check_run_dirs(train_config, write_dir)  # before any work: fails on a folder it cannot write
    tensorboard = None if log_dir is None else tensorboard_callback(log_dir, train_config.tensorboard_steps)

    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(train_config.seed)
    if splits is None:
        splits = load_data(train_config)
    info = splits.info
    steps_per_epoch = max(1, info.num_train // train_config.batch_size)
    with strategy.scope():
        model = build_model(train_config, mbakt_config, info, steps_per_epoch)

    backup = None
    if train_config.backup_dir:
        backup = resume.ResumableBackup(
            train_config.backup_dir, steps_per_epoch, save_steps=train_config.backup_steps,
            fingerprint=run_fingerprint(train_config, mbakt_config), write=chief,
            before_save=lambda: distribute.average_replica_variables(model, strategy),
        )
        backup.restore(model)
    # The backup first: it ends a resumed epoch early and must clear that stop
    # before other callbacks (EarlyStopping) decide; it skips non-finite steps.
    run_callbacks = [] if backup is None else [backup]
    if train_config.stop_on_non_finite:
        run_callbacks.append(guards.NonFiniteLossGuard(backup=backup))
    if mbakt_config.uses_adversary and train_config.collapse_patience:
        run_callbacks.append(
            guards.DiscriminatorCollapseMonitor(train_config.collapse_patience, backup=backup)
        )
    if mbakt_config.uses_adversary:
        run_callbacks.append(guards.AdversarialTakeoverGuard())
    # Every run, first: the modes' gap it adds to the epoch's logs reaches the backup's history too.
    run_callbacks.insert(0, guards.InferenceModeGapGuard(splits.train))
    if strategy.num_replicas_in_sync > 1:
        # Keras BN keeps one moving average per replica: evaluate and save their mean.
        run_callbacks.append(distribute.AverageReplicaStatistics(strategy))
    if tensorboard is not None:
        run_callbacks.append(tensorboard)
    timer = run_timing.EpochTimer(steps_per_epoch)
    run_callbacks.append(timer)
    run_callbacks += list(callbacks)
    initial_epoch = backup.initial_epoch if backup is not None else 0
    # One stream of batches for the whole run (see resume.training_stream):
    # the data position is the number of batches consumed, nothing else.
    stream = backup.stream(splits.train) if backup is not None else resume.training_stream(splits.train)

    start = time.time()
    if multi_worker:
        position = backup.position if backup is not None else None
        history = custom_loop.fit(
            model, stream, train_config.epochs, strategy, steps_per_epoch=steps_per_epoch,
            initial_epoch=initial_epoch,
            first_epoch_steps=steps_per_epoch - (position.step if position is not None else 0),
            validation_data=splits.validation, callbacks=run_callbacks,
            verbose=train_config.verbose if chief else 0,
        )
    else:
        history = model.fit(
            stream,
            steps_per_epoch=steps_per_epoch,
            validation_data=splits.validation,
            epochs=train_config.epochs,
            initial_epoch=initial_epoch,
            callbacks=run_callbacks,
            verbose=train_config.verbose,
            shuffle=False,  # the tf.data pipeline shuffles with the run's seed
        )
    train_seconds = time.time() - start
    if multi_worker:
        test_results = custom_loop.evaluate(model, splits.test, strategy)
    else:
        test_results = model.evaluate(splits.test, return_dict=True, verbose=0)
    counts = parameter_counts(model)
    epoch_history = backup.history if backup is not None else history.history

    # Leftovers of a run killed while saving these very files.
    atomic.remove_stale_temporaries(write_dir, ("model.keras", "main_branch.keras", "results.json"))
    atomic.save_model(model, os.path.join(write_dir, "model.keras"))
    atomic.save_model(model.main_model(), os.path.join(write_dir, "main_branch.keras"))
    summary = {
        "train_config": train_config.to_dict(),
        "mbakt_config": mbakt_config.to_dict(),
        "dataset": dataclasses.asdict(info),
        "test": {k: float(v) for k, v in test_results.items()},
        "history": {k: [float(x) for x in v] for k, v in epoch_history.items()},
        "parameters": counts,
        "train_seconds": train_seconds,
        "timing": timer.summary(),
        "code_commit": run_timing.code_commit(),
        "method_code": run_timing.LOADED_METHOD_CODE,
        "distribution": {
            "strategy": train_config.strategy,
            "replicas": int(strategy.num_replicas_in_sync),
        },
    }
    if backup is not None and backup.position is not None:
        summary["resumed_from"] = {
            "epoch": backup.position.epoch, "step": backup.position.step,
            "global_step": backup.position.global_step,
        }
    atomic.write_json(os.path.join(write_dir, "results.json"), summary)
    if chief:
        curves.save_curves(
            summary["history"], os.path.join(write_dir, "curves.png"),
            title=f"{train_config.run_name_for(mbakt_config)} ({mbakt_config.mode})",
        )
    if backup is not None:
        backup.finish()
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)
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
    """A plain-text table: one row per head with accuracy, loss and parameters.

    Segmentation results (with `<head>_miou`) get a mIoU column first, and
    accuracy is pixel accuracy.
    """
    parameter_counts = parameter_counts or {}
    segmentation = any(k.endswith("_miou") for k in results)
    rows = [("head",) + (("mIoU", "pixel accuracy") if segmentation else ("accuracy",))
            + ("loss", "inference params")]
    for head in heads_in(results):
        loss = results.get(f"{head}_loss", results.get("loss") if head == "main" else None)
        params = parameter_counts.get(head)
        rows.append((
            head,
            *([f"{100 * results[f'{head}_miou']:.2f}%"] if segmentation else []),
            f"{100 * results[f'{head}_accuracy']:.2f}%",
            "-" if loss is None else f"{loss:.4f}",
            "-" if params is None else f"{params:,}",
        ))
    return reporting.text_table(rows)
