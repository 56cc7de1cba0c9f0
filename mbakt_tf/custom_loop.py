"""A `strategy.run` training loop: `fit`/`evaluate` for `MultiWorkerMirroredStrategy`.

`keras.Model.fit` under `MultiWorkerMirroredStrategy` is broken in Keras
3.15.1 (keras-team/keras#20585: its symbolic build on a distributed batch and
its per-replica metric results fail). This loop calls the model's own
`train_step`/`test_step` under `strategy.run`, one `tf.function` per step, and
drives ordinary Keras callbacks (`History`, progress bar, `ResumableBackup`,
the guards), so the training math is exactly `fit`'s. It works under any
strategy, which is how the tests check it against `fit` on one device.

Metrics are read in cross-replica context after each step: Keras metric
variables created in a strategy scope are mirrored with SUM aggregation,
so every worker reads the same global values.

Example:
```python
with strategy.scope():
    model = MBAKT.from_backbone(...); model.compile(...)
history = custom_loop.fit(model, resume.training_stream(train_ds), epochs=3, strategy=strategy,
                          steps_per_epoch=steps, validation_data=val_ds)
results = custom_loop.evaluate(model, test_ds, strategy)
```
"""

import keras
import numpy as np
import tensorflow as tf

from mbakt_tf import distribute


def _results(model, names):
    by_name = {metric.name: metric for metric in model.metrics}
    return {name: float(np.asarray(by_name[name].result())) for name in names}


def _reset(model):
    for metric in model.metrics:
        metric.reset_state()


class _Steps:
    """The per-step tf.functions of one model under one strategy."""

    def __init__(self, model, strategy):
        self.model, self.strategy = model, strategy
        # Each returns the step's metric dict (per-replica values); only its
        # keys are used: the values are read from the metrics, reduced.
        self.train_step = tf.function(lambda batch: strategy.run(model.train_step, args=(batch,)))
        self.test_step = tf.function(lambda batch: strategy.run(model.test_step, args=(batch,)))

    def train(self, batch):
        return list(self.train_step(batch))

    def test(self, batch):
        return list(self.test_step(batch))


def _steps_for(model, strategy):
    steps = getattr(model, "_mbakt_custom_loop_steps", None)
    if steps is None or steps.strategy is not strategy:
        steps = _Steps(model, strategy)
        model._mbakt_custom_loop_steps = steps
    return steps


def evaluate(model, dataset, strategy):
    """Runs `model.test_step` over `dataset`; returns the metric results as floats.

    BatchNorm moving statistics are first averaged over replicas (see
    `distribute.average_replica_variables`), so every replica evaluates the
    model that gets saved.
    """
    distribute.average_replica_variables(model, strategy)
    steps = _steps_for(model, strategy)
    _reset(model)
    names = None
    for batch in strategy.experimental_distribute_dataset(dataset):
        names = steps.test(batch)
    if names is None:
        raise ValueError("the evaluation dataset is empty.")
    return _results(model, names)


def fit(model, stream, epochs, strategy, steps_per_epoch, initial_epoch=0,
        first_epoch_steps=None, validation_data=None, callbacks=(), verbose=1):
    """Trains `model` like `model.fit` with `strategy.run`; returns the `History` callback.

    Args:
        model: a compiled `MBAKT` built in `strategy.scope()`.
        stream: the training batches (global batches) of the whole run, e.g.
            `resume.training_stream(train_ds)`; one iterator reads it all.
        epochs: index of the last epoch + 1, as in `fit`.
        strategy: the strategy the model was built under.
        steps_per_epoch: batches per epoch.
        initial_epoch: first epoch to run (resume).
        first_epoch_steps: steps of the first epoch run (default
            `steps_per_epoch`; fewer when resuming mid-epoch).
        validation_data: optional dataset evaluated after each epoch (`val_*`).
        callbacks: Keras callbacks.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
    """
    steps = _steps_for(model, strategy)
    if hasattr(model, "with_precise_batch_norm"):  # the batch-norm statistics fit recomputes
        callbacks = model.with_precise_batch_norm(callbacks, stream)
    callbacks = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, verbose=verbose,
        epochs=epochs, steps=steps_per_epoch, model=model,
    )
    iterator = iter(strategy.experimental_distribute_dataset(stream))
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        _reset(model)
        callbacks.on_epoch_begin(epoch)
        count = steps_per_epoch
        if epoch == initial_epoch and first_epoch_steps is not None:
            count = first_epoch_steps
        for batch_index in range(count):
            callbacks.on_train_batch_begin(batch_index)
            names = steps.train(next(iterator))
            logs = _results(model, names)
            callbacks.on_train_batch_end(batch_index, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if validation_data is not None:
            callbacks.on_test_begin()  # as fit's validation does: precise batch norm, epoch timers
            val_logs = evaluate(model, validation_data, strategy)
            callbacks.on_test_end(val_logs)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    distribute.average_replica_variables(model, strategy)
    callbacks.on_train_end(logs=logs)
    return model.history
