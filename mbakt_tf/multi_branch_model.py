"""`MultiBranchModel`: the training step every MBAKT task shares.

One forward pass of the multi-branch network, a discriminator update on
stop-gradient outputs, then a network update with the generator loss of
`MBAKTConfig`; every head's metrics; the main-branch and early-exit cuts;
serialization. The tasks are its subclasses, siblings of each other:
`model.MBAKT` (classification: a class per image) and
`segmentation_model.MBAKTSegmenter` (a class per pixel). A task says how
its network is built (`from_backbone`), what its labels look like
(`LABEL_AXES`, `_check_label_shape`), which pixels or examples count
(`ignore_label`) and what the discriminator sees (`_adversary_inputs`,
`_discriminator_view`); `tasks` maps task names to them.

Example:
```python
model = mbakt_tf.MBAKT.from_backbone("small_resnet8", 10, (28, 28, 1))
isinstance(model, MultiBranchModel)   # True, and so is every MBAKTSegmenter
```
"""

import logging

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mbakt_tf import branches as branches_lib
from mbakt_tf import losses
from mbakt_tf.branches import ENSEMBLE
from mbakt_tf.config import MBAKTConfig

logger = logging.getLogger("mbakt_tf.multi_branch_model")


class MultiBranchModel(keras.Model):
    """A multi-branch network trained against a discriminator; the base of every task's model.

    Wraps a multi-branch network (a functional model whose outputs follow the
    dict contract of `branches`) and a discriminator. Calling the model
    returns the main branch's logits; `main_model()` cuts the main branch out.
    Build one through a task: `MBAKT.from_backbone` or
    `MBAKTSegmenter.from_backbone`.
    """

    # Label of pixels/examples that count in no loss and no metric (segmentation sets it).
    ignore_label = None
    LABEL_AXES = ("batch",)  # label shape, set by each task: one class per image here

    def __init__(self, network, discriminator=None, config=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = MBAKTConfig.from_dict(config)
        self.config = config or MBAKTConfig()
        self.network = network
        self.discriminator = discriminator
        self.branch_names = branches_lib.branch_names(network)
        self.num_classes = int(network.output[f"{branches_lib.MAIN}_logits"].shape[-1])
        if self.config.uses_branches and len(self.branch_names) < 2:
            raise ValueError(f"mode={self.config.mode!r} needs auxiliary branches; the network has none.")
        if self.config.uses_adversary and discriminator is None:
            raise ValueError("mode='mbakt' with gamma > 0 needs a discriminator.")
        self.d_optimizer = None
        self._build_trackers()
        self.built = True

    # ----------------------------------------------------------------- compile

    def compile(self, g_optimizer=None, d_optimizer=None, **kwargs):
        """Configures training.

        Args:
            g_optimizer: optimizer of the multi-branch network (the generator);
                it becomes `model.optimizer`, so learning-rate callbacks act on
                it. Defaults to SGD(0.05, momentum=0.9, nesterov=True).
            d_optimizer: optimizer of the discriminator. Defaults to
                Adam(2e-4, beta_1=0.5); ignored without an adversary.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`). `loss` and `metrics`
                are not accepted: the losses come from `config`.
        """
        for key in ("loss", "metrics", "optimizer"):
            if key in kwargs:
                raise ValueError(
                    f"MBAKT.compile takes no {key!r}: losses and metrics come from MBAKTConfig; "
                    "pass g_optimizer= and d_optimizer=."
                )
        g_optimizer = keras.optimizers.get(
            g_optimizer or keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)
        )
        super().compile(optimizer=g_optimizer, **kwargs)
        # Built here, inside the caller's strategy scope, on the right variables
        # (never the discriminator's), so Keras and checkpoints see their state.
        self.optimizer.build(self.network.trainable_variables)
        if self.discriminator is not None:
            d_optimizer = keras.optimizers.get(
                d_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)
            )
            if self.dtype_policy.name == "mixed_float16" and not isinstance(
                d_optimizer, keras.optimizers.LossScaleOptimizer
            ):
                d_optimizer = keras.optimizers.LossScaleOptimizer(d_optimizer)
            d_optimizer.build(self.discriminator.trainable_variables)
            self.d_optimizer = d_optimizer

    def get_compile_config(self):
        config = {"g_optimizer": keras.optimizers.serialize(self.optimizer)}
        if self.d_optimizer is not None:
            config["d_optimizer"] = keras.optimizers.serialize(self.d_optimizer)
        return config

    def compile_from_config(self, config):
        self.compile(
            g_optimizer=keras.optimizers.deserialize(config["g_optimizer"]),
            d_optimizer=(
                keras.optimizers.deserialize(config["d_optimizer"]) if "d_optimizer" in config else None
            ),
        )

    # --------------------------------------------------------------------- fit

    # Training images whose batch statistics the precise batch-norm statistics average; 0: none.
    precise_batch_norm_examples = 1024

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, **kwargs):
        """`keras.Model.fit`, then, at each epoch end, every batch norm's moving statistics recomputed.

        The exponential moving statistics lag a trunk that moves fast (MBAKT's
        summed losses move the shared trunk several times faster than plain's),
        so at each epoch end, before validation and before any other callback,
        `branches.recalibrate_batch_norms` replaces them by the mean batch
        statistics, at the current weights, of up to
        `precise_batch_norm_examples` training images (0 turns this off).
        Weights, optimizer and random state are untouched; validation,
        `evaluate`, `predict` and every export then see the network that
        training built.

        The images are read once, when training begins (before `fit` iterates
        its data: an iterator made between epochs over a seeded, reshuffling
        pipeline would shift the later epochs' order), and kept: from a
        `guards.InferenceModeGapGuard` among the callbacks (its data is the
        run's training split, whatever position a resumed run's stream starts
        at), else from `x`: a `tf.data.Dataset` of batches, arrays or tensors
        (sliced by `batch_size`, default 32) or a `keras.utils.PyDataset`;
        from a one-shot iterator nothing is
        recalibrated (a warning says so).
        """
        callbacks = self.with_precise_batch_norm(callbacks, x, batch_size)
        return super().fit(
            x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks, **kwargs)

    def with_precise_batch_norm(self, callbacks, x, batch_size=None):
        """`callbacks` with the precise batch-norm callback first (see `fit`); as they are when it is off.

        `fit` calls it; so does `custom_loop.fit`, so both train the same network.
        """
        callbacks = list(callbacks or [])
        if self.precise_batch_norm_examples:
            from mbakt_tf import guards  # guards reads models; a model does not need it otherwise

            carried = [c.data for c in callbacks if isinstance(c, guards.InferenceModeGapGuard)]
            source = _recalibration_batches(carried[0] if carried else x, batch_size)
            callbacks.insert(0, _PreciseBatchNorm(self.network, source, self.precise_batch_norm_examples))
        return callbacks

    # ----------------------------------------------------------------- metrics

    def _build_trackers(self):
        mean = keras.metrics.Mean
        self.loss_tracker = mean(name="loss")
        self.term_trackers = {
            term: mean(name=term)
            for term in (
                "ce", "ensemble_ce", "kd", "hint", "adv", "d_loss", "d_balanced_accuracy",
                "adv_grad_ratio", "adv_scale",
            )
        }
        heads = self.branch_names + ([ENSEMBLE] if len(self.branch_names) > 1 else [])
        self.accuracy_trackers = {
            head: keras.metrics.SparseCategoricalAccuracy(name=f"{head}_accuracy") for head in heads
        }
        self.head_loss_trackers = {head: mean(name=f"{head}_loss") for head in heads}

    @property
    def metrics(self):
        return (
            [self.loss_tracker]
            + list(self.term_trackers.values())
            + list(self.accuracy_trackers.values())
            + list(self.head_loss_trackers.values())
        )

    def _train_metric_names(self):
        names = ["loss", "ce"]
        if self.config.uses_branches:
            names += ["kd", "hint"]
        if self.gated:
            names += ["ensemble_ce"]
        if self.config.uses_adversary:
            names += ["adv", "d_loss", "d_balanced_accuracy", "adv_grad_ratio", "adv_scale"]
        return names + [f"{head}_accuracy" for head in self.accuracy_trackers]

    # ------------------------------------------------------------ forward pass

    def call(self, images, training=False):
        """Main-branch logits."""
        return self.network(images, training=training)[f"{branches_lib.MAIN}_logits"]

    def branch_logits(self, images, training=False):
        """Dict of logits of every branch and of the ensemble."""
        outputs = self.network(images, training=training)
        logits = [outputs[f"{b}_logits"] for b in self.branch_names]
        return self._heads(logits, self._ensemble(logits, outputs) if len(logits) > 1 else None)

    def _heads(self, logits, ensemble):
        """{head: logits} of every branch (main first) and, with branches, the ensemble."""
        heads = dict(zip(self.branch_names, logits))
        if len(logits) > 1:
            heads[ENSEMBLE] = ensemble
        return heads

    @property
    def gated(self):
        return "gate" in self.network.output

    def _ensemble(self, logits, outputs):
        """The ensemble's logits: the mean of the branches', or their gated sum (ONE)."""
        if "gate" not in outputs:
            return ops.mean(ops.stack(logits, axis=0), axis=0)
        stacked = ops.stack(logits, axis=-1)  # (..., classes, branches)
        gate = ops.cast(outputs["gate"], "float32")  # (batch, branches)
        shape = [-1] + [1] * (len(stacked.shape) - 2) + [len(logits)]
        return ops.sum(stacked * ops.reshape(gate, shape), axis=-1)

    def _teacher(self, logits, ensemble):
        if self.config.resolved_teacher == "main":
            return ops.stop_gradient(logits[0])
        return ops.stop_gradient(ensemble)

    def _adversary_inputs(self, outputs, logits, teacher):
        """(real, [fake per branch]) as the discriminator sees them, float32, without the label."""
        if self.config.adversarial_input == "logits":
            return teacher, list(logits)
        if self.config.adversarial_input == "probabilities":
            t = self.config.adversarial_temperature
            real = ops.softmax(teacher / t, axis=-1)
            fakes = [ops.softmax(z / t, axis=-1) for z in logits]
        else:
            pooled = [
                ops.cast(ops.mean(outputs[f"{b}_features"], axis=(1, 2)), "float32")
                for b in self.branch_names
            ]
            real = ops.stop_gradient(ops.mean(ops.stack(pooled, 0), 0))
            fakes = pooled
        return real, fakes

    def _discriminator_view(self, inputs, labels):
        """What the discriminator sees of `inputs` (labels' shape, or with leading axes, plus the
        last): with the one-hot label concatenated on the last axis (conditional GAN) when
        `discriminator_condition="label"`."""
        if self.config.discriminator_condition != "label":
            return inputs
        # Labels outside [0, num_classes) (an ignore label) one-hot to zeros.
        one_hot = ops.one_hot(labels, self.num_classes, dtype="float32")
        # `inputs` may carry leading axes (the branches) before the batch.
        one_hot = ops.broadcast_to(one_hot, tf.concat([tf.shape(inputs)[:-1], [self.num_classes]], 0))
        return ops.concatenate([inputs, one_hot], axis=-1)

    # ------------------------------------------------------------------- steps

    def _check_batch(self, images, labels):
        """int32 labels of `LABEL_AXES` shape, with an in-graph check of their values; errors name the class."""
        name = type(self).__name__
        if len(images.shape) != 4:
            raise ValueError(
                f"{name} expects image batches of rank 4 (batch, height, width, channels), "
                f"got shape {images.shape}."
            )
        labels = ops.cast(labels, "int32")
        rank = len(self.LABEL_AXES)
        if len(labels.shape) == rank + 1 and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, -1)
        if len(labels.shape) != rank:
            raise ValueError(
                f"{name} expects integer labels of shape ({', '.join(self.LABEL_AXES)}), got {labels.shape}."
            )
        self._check_label_shape(images, labels)
        valid = ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, self.num_classes))
        allowed = f"in [0, {self.num_classes})"
        if self.ignore_label is not None:
            valid = ops.logical_or(valid, ops.equal(labels, self.ignore_label))
            allowed += f" or equal to ignore_label={self.ignore_label}"
        # The check runs before any op reads the labels (a gather would fail first, less clearly).
        check = tf.debugging.Assert(ops.all(valid), [f"label values must be {allowed}"])
        with tf.control_dependencies([check]):
            return tf.identity(labels)

    def _check_label_shape(self, images, labels):
        """Task-specific checks of a batch's label shape against its images (none here)."""
        del images, labels  # a body AutoGraph can convert (a docstring alone is not one)

    def _generator_terms(self, labels, outputs, logits, teacher, ensemble):
        cfg = self.config
        if not cfg.uses_branches:
            ce = losses.cross_entropy(labels, logits[0], self.ignore_label)
            return {"ce": ce}, ce
        # Every head's loss at once, on the heads' logits stacked: one set of ops, not one per head.
        stacked = ops.stack(logits, axis=0)
        ce = losses.cross_entropy_per_branch(labels, stacked, self.ignore_label)
        alpha = self.distillation_weight()
        main_features = outputs[f"{branches_lib.MAIN}_features"]
        hint = [
            losses.hint(outputs[f"{b}_features"], main_features) for b in self.branch_names[1:]
        ]
        if cfg.resolved_teacher == "main":
            # The main branch is the teacher: it has nothing to distil from, so it
            # keeps its full cross-entropy (BYOT), the students mix ce and kd.
            kd = self._distillation(teacher, stacked[1:], labels)
            mixed = ce[0] + (1.0 - alpha) * ops.sum(ce[1:])
        else:
            kd = self._distillation(teacher, stacked, labels)
            mixed = (1.0 - alpha) * ops.sum(ce)
        terms = {"ce": ops.sum(ce), "kd": ops.sum(kd), "hint": ops.sum(ops.stack(hint))}
        total = mixed + alpha * terms["kd"] + cfg.beta * terms["hint"]
        if self.gated:
            # ONE: the gate (and, through the gated logits, every branch) learns from the labels;
            # "gated_detached": the gate alone.
            if cfg.ensemble == "gated_detached":
                ensemble = self._ensemble([ops.stop_gradient(z) for z in logits], outputs)
            terms["ensemble_ce"] = losses.cross_entropy(labels, ensemble, self.ignore_label)
            total = total + terms["ensemble_ce"]
        return terms, total

    def _distillation(self, teacher, stacked_students, labels):
        """The (students,) distillation losses of the students' stacked logits."""
        return losses.distillation_per_branch(
            teacher, stacked_students, self.config.temperature, labels=labels, ignore_label=self.ignore_label
        )

    def _discriminator_update(self, real, fake):
        """Updates D on stop-gradient inputs (`fake`: every branch's, one after another on the
        batch axis); returns (its loss, its balanced accuracy)."""
        cfg = self.config
        both = ops.stop_gradient(ops.concatenate([real, fake], axis=0))
        real_count = tf.shape(real)[0]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        for _ in range(cfg.discriminator_steps):
            with tf.GradientTape() as tape:
                # One call on real and fake together: the discriminators have no batch statistics.
                both_logits = self.discriminator(both, training=True)
                real_logits, fake_logits = both_logits[:real_count], both_logits[real_count:]
                d_loss = losses.discriminator_loss(
                    real_logits, fake_logits, cfg.discriminator_label_smoothing
                )
                scaled = self.d_optimizer.scale_loss(d_loss / replicas)
            variables = self.discriminator.trainable_variables
            self.d_optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return d_loss, losses.discriminator_balanced_accuracy(real_logits, fake_logits)

    def _adversarial_term(self, terms, outputs, logits, teacher, labels, tape):
        """Updates the discriminator, adds its terms to `terms`; returns gamma(t) * adv."""
        real, fakes = self._adversary_inputs(outputs, logits, teacher)
        real = self._discriminator_view(real, labels)
        # Every branch's fakes in one batch (one discriminator call, one label view), branch after branch.
        fake = self._discriminator_view(ops.stack(fakes, axis=0), labels)
        fake = tf.reshape(fake, tf.concat([[-1], tf.shape(fake)[2:]], axis=0))
        with tape.stop_recording():
            terms["d_loss"], terms["d_balanced_accuracy"] = self._discriminator_update(real, fake)
        adv = losses.adversarial_per_branch(self.discriminator(fake, training=False), len(fakes))
        terms["adv"] = ops.sum(adv)
        return self.adversarial_weight() * terms["adv"]

    @staticmethod
    def _global_gradient_ratio(tape, numerator, denominator, sources):
        """`losses.gradient_norm_ratio` over the global batch: replicas sum their squared norms
        (their outputs are disjoint), so every replica applies the same cap as one device would."""
        squared = [losses.squared_gradient_norm(tape, t, sources) for t in (numerator, denominator)]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            squared = context.all_reduce("sum", squared)
        return losses.norm_ratio(*squared)

    def _adversarial_scale(self, ratio):
        """The factor that keeps the adversarial gradient within `max_adversarial_grad_ratio` of ce's."""
        cap = self.config.max_adversarial_grad_ratio
        if cap is None:
            return ops.convert_to_tensor(1.0, "float32")
        return ops.minimum(1.0, cap / ops.maximum(ratio, 1e-12))

    def _ramped(self, weight, warmup_steps):
        if warmup_steps == 0:
            return ops.convert_to_tensor(weight, "float32")
        step = ops.cast(self.optimizer.iterations, "float32") + 1.0
        return weight * ops.minimum(1.0, step / float(warmup_steps))

    def adversarial_weight(self):
        """gamma(t): the adversarial weight at the current generator step."""
        return self._ramped(self.config.gamma, self.config.adversarial_warmup_steps)

    def distillation_weight(self):
        """alpha(t): the distillation weight at the current generator step.

        Example:
        ```python
        model = MBAKT.from_backbone("small_resnet8", 10, (28, 28, 1),
                                    config=MBAKTConfig(alpha=0.5, distillation_warmup_steps=100))
        model.compile()
        float(model.distillation_weight())   # 0.005 before the first step
        ```
        """
        return self._ramped(self.config.alpha, self.config.distillation_warmup_steps)

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._check_batch(images, labels)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        network_variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.network(images, training=True)
            logits = [ops.cast(outputs[f"{b}_logits"], "float32") for b in self.branch_names]
            ensemble = self._ensemble(logits, outputs) if self.config.uses_branches else None
            teacher = self._teacher(logits, ensemble) if self.config.uses_branches else None
            if not self.config.uses_adversary:
                terms, total = self._generator_terms(labels, outputs, logits, teacher, ensemble)
            else:
                # A second tape, on the network's outputs only, measures the adversarial
                # gradient next to the cross-entropy's there (cheap: no backbone).
                with tf.GradientTape(persistent=True) as probe:
                    watched = logits + [outputs[f"{b}_features"] for b in self.branch_names]
                    probe.watch(watched)
                    terms, total = self._generator_terms(labels, outputs, logits, teacher, ensemble)
                    weighted_adv = self._adversarial_term(terms, outputs, logits, teacher, labels, tape)
                with tape.stop_recording():
                    ratio = self._global_gradient_ratio(probe, weighted_adv, terms["ce"], watched)
                    terms["adv_scale"] = self._adversarial_scale(ratio)
                    terms["adv_grad_ratio"] = ratio * terms["adv_scale"]
                del probe
                total = total + terms["adv_scale"] * weighted_adv
            if self.network.losses:
                total = total + ops.sum(ops.stack(self.network.losses))
            scaled = self.optimizer.scale_loss(total / replicas)
        gradients = tape.gradient(scaled, network_variables)
        self.optimizer.apply_gradients(zip(gradients, network_variables))

        self.loss_tracker.update_state(total)
        for term, value in terms.items():
            self.term_trackers[term].update_state(value)
        self._update_accuracy(labels, logits, ensemble)
        return self._results(self._train_metric_names())

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._check_batch(images, labels)
        outputs = self.network(images, training=False)
        logits = [ops.cast(outputs[f"{b}_logits"], "float32") for b in self.branch_names]
        heads = self._update_accuracy(labels, logits, self._ensemble(logits, outputs))
        for head, z in heads.items():
            self.head_loss_trackers[head].update_state(losses.cross_entropy(labels, z, self.ignore_label))
        self.loss_tracker.update_state(losses.cross_entropy(labels, logits[0], self.ignore_label))
        names = ["loss"] + [f"{h}_accuracy" for h in heads] + [f"{h}_loss" for h in heads]
        return self._results(names)

    def _update_accuracy(self, labels, logits, ensemble):
        heads = self._heads(logits, ensemble)
        for head, z in heads.items():
            self.accuracy_trackers[head].update_state(labels, z)
        return heads

    def _results(self, names):
        by_name = {m.name: m for m in self.metrics}
        return {name: by_name[name].result() for name in names}

    # ------------------------------------------------------------------ export

    def main_model(self, name="main_branch"):
        """The main branch as a plain `keras.Model(image -> logits)`.

        It shares weights with this model and has exactly the parameters of
        the plain network of the same configuration.
        """
        return branches_lib.main_branch_model(self.network, name=name)

    def branch_model(self, branch, name=None):
        """An auxiliary branch (e.g. `"branch_1"`) as a standalone early-exit model."""
        return branches_lib.branch_model(self.network, branch, name=name)

    # ----------------------------------------------------------- serialization

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            discriminator=(
                None
                if self.discriminator is None
                else keras.saving.serialize_keras_object(self.discriminator)
            ),
            config=self.config.to_dict(),
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"), custom_objects)
        discriminator = config.pop("discriminator")
        if discriminator is not None:
            discriminator = keras.saving.deserialize_keras_object(discriminator, custom_objects)
        mbakt_config = MBAKTConfig.from_dict(config.pop("config"))
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        return cls(network, discriminator, mbakt_config, **config)


def _recalibration_batches(x, batch_size):
    """A callable giving an iterator of the training data's batches, or None if it cannot."""
    if isinstance(x, tf.data.Dataset):
        return lambda: iter(x)
    if isinstance(x, tuple) and len(x) == 2 and hasattr(x[0], "shape"):
        x = x[0]  # (images, labels) arrays
    if isinstance(x, (np.ndarray, tf.Tensor)) or (hasattr(x, "shape") and hasattr(x, "__len__")):
        size = int(batch_size or 32)
        return lambda: (x[i:i + size] for i in range(0, len(x), size))
    if isinstance(x, keras.utils.PyDataset):
        return lambda: (x[i] for i in range(len(x)))
    logger.warning(
        "precise batch norm: fit got %s, which cannot be iterated again; the moving statistics stay "
        "Keras's exponential averages (they lag a fast-moving trunk, see "
        "branches.recalibrate_batch_norms). Pass a tf.data.Dataset or arrays.", type(x).__name__)
    return None


class _PreciseBatchNorm(keras.callbacks.Callback):
    """At each epoch end (before validation), the network's batch-norm statistics recomputed on up to
    `examples` training images, read once when training begins and kept."""

    def __init__(self, network, batches, examples):
        super().__init__()
        self.network = network
        self.batches = batches
        self.examples = int(examples)
        self.kept = None
        self._done = True

    def on_train_begin(self, logs=None):
        if self.kept is None and self.batches is not None:
            self.kept = self._keep()

    def on_epoch_begin(self, epoch, logs=None):
        self._done = False

    def _keep(self):
        kept, count = [], 0
        for batch in self.batches():
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            images = np.asarray(images)  # whole batches: each normalised by its own statistics
            kept.append(images)
            count += len(images)
            if count >= self.examples:
                break
        return kept

    def _recalibrate(self):
        if not self._done and self.batches is not None:
            if self.kept is None:
                self.kept = self._keep()
            branches_lib.recalibrate_batch_norms(self.network, self.kept)
        self._done = True

    def on_test_begin(self, logs=None):  # validation inside fit: after the epoch's training steps
        self._recalibrate()

    def on_epoch_end(self, epoch, logs=None):
        self._recalibrate()
