"""absl flag definitions grouped by concern, and their conversion to config objects.

Only the scripts import this module; the library never reads flags.
"""

from absl import flags

from mbakt_tf import backbones
from mbakt_tf.config import (
    ADAPTATIONS, ADVERSARIAL_INPUTS, BRANCH_DESIGNS, DISCRIMINATOR_CONDITIONS, ENSEMBLES, MODES, TEACHERS,
    MBAKTConfig,
)
from mbakt_tf.training import OPTIMIZERS, SCHEDULES, STRATEGIES, TASKS, TrainConfig

FLAGS = flags.FLAGS


def define_data_flags():
    flags.DEFINE_enum(
        "task", "classification", TASKS,
        "classification: one label per image; segmentation: one label per pixel (encoder-decoder, "
        "datasets fashion_mnist, synthetic, oxford_iiit_pet; metrics mIoU and pixel accuracy).",
    )
    flags.DEFINE_string(
        "dataset", "fashion_mnist",
        "'fashion_mnist' (local IDX files), 'synthetic', or any TFDS image-classification name.",
    )
    flags.DEFINE_string(
        "data_dir", None,
        "Fashion-MNIST: folder with the four IDX .gz files (default: search "
        "/usr/share/datasets/fashion-mnist, ~/.keras/datasets/fashion-mnist). TFDS: its data_dir.",
    )
    flags.DEFINE_integer("image_size", None, "Resize images to this square size (keeps native size if unset).")
    flags.DEFINE_float("validation_fraction", 0.1, "Fraction of the train split held out for validation.")
    flags.DEFINE_integer("train_limit", None, "Use only this many training examples (quick runs).")
    flags.DEFINE_integer("test_limit", None, "Use only this many test examples (quick runs).")
    flags.DEFINE_bool("augment", True, "Random translation (and flips) on the training split.")
    flags.DEFINE_integer("batch_size", 128, "Global batch size.")


def define_model_flags():
    flags.DEFINE_enum("backbone", "small_resnet8", backbones.available_backbones(), "Backbone name.")
    flags.DEFINE_enum("mode", "mbakt", MODES, "plain: main branch only; byot: self-distillation; mbakt: all four losses.")
    flags.DEFINE_float("alpha", 0.0, "Weight of distillation against cross-entropy, in [0, 1].")
    flags.DEFINE_float("beta", 0.05, "Weight of the feature-hint loss.")
    flags.DEFINE_float("gamma", 0.1, "Final weight of the adversarial loss.")
    flags.DEFINE_float("temperature", 3.0, "Distillation temperature.")
    flags.DEFINE_float("adversarial_temperature", 1.0, "Temperature of the probabilities the discriminator sees.")
    flags.DEFINE_integer("adversarial_warmup_steps", 500, "Steps over which the adversarial weight ramps up from 0.")
    flags.DEFINE_integer("discriminator_steps", 1, "Discriminator updates per generator update.")
    flags.DEFINE_float("discriminator_label_smoothing", 0.1, "Real label of the discriminator is 1 - this.")
    flags.DEFINE_list("discriminator_units", ["64", "64"], "Hidden widths of the discriminator MLP.")
    flags.DEFINE_enum("adversarial_input", "logits", ADVERSARIAL_INPUTS, "What the discriminator sees.")
    flags.DEFINE_enum("teacher", None, TEACHERS, "Distillation teacher (default: main for byot, ensemble for mbakt).")
    flags.DEFINE_list("branch_stages", None, "Stage indices (1 = shallowest) with a branch; default: deepest 3 before the last.")
    flags.DEFINE_enum("adaptation", "auto", ADAPTATIONS, "Adaptation block kind.")
    defaults = MBAKTConfig()
    flags.DEFINE_enum(
        "branch_design", defaults.branch_design, BRANCH_DESIGNS,
        "exit: adaptation block + head on earlier stages; peer: copies of the last --peer_stages "
        "stages on the shared trunk (ONE); deep: each branch copies every stage after its own "
        "(default: peer for classification, exit for segmentation).",
    )
    flags.DEFINE_integer("peer_stages", defaults.peer_stages, "How many of the last stages a peer copies.")
    flags.DEFINE_integer("num_peers", defaults.num_peers, "Number of peers (--branch_design=peer).")
    flags.DEFINE_enum(
        "ensemble", defaults.ensemble, ENSEMBLES,
        "Ensemble teacher: mean of the branch logits, gated (ONE's learned softmax over branches, whose "
        "cross-entropy also trains the branches) or gated_detached (the gate alone learns from it).",
    )
    flags.DEFINE_float(
        "gate_main_weight", defaults.gate_main_weight,
        "The main branch's weight in the gate at the start; 0: Keras's initialisation (about uniform, as in ONE).",
    )
    flags.DEFINE_integer(
        "distillation_warmup_steps", defaults.distillation_warmup_steps,
        "Steps over which the distillation weight alpha ramps up from 0.",
    )
    flags.DEFINE_enum(
        "discriminator_condition", defaults.discriminator_condition, DISCRIMINATOR_CONDITIONS,
        "label: the discriminator also sees the one-hot label (conditional GAN).",
    )
    flags.DEFINE_float(
        "max_adversarial_grad_ratio", defaults.max_adversarial_grad_ratio,
        "The adversarial gradient never exceeds this fraction of the cross-entropy's (at the network's "
        "outputs); 0: no cap.",
    )


def define_training_flags():
    flags.DEFINE_integer("epochs", 10, "Training epochs.")
    flags.DEFINE_enum("optimizer", "sgd", OPTIMIZERS, "Optimizer of the network.")
    flags.DEFINE_float("learning_rate", 0.05, "Initial learning rate of the network.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum (Nesterov).")
    flags.DEFINE_float("weight_decay", 5e-4, "Weight decay of the network's optimizer.")
    flags.DEFINE_enum("schedule", "cosine", SCHEDULES, "Learning-rate schedule.")
    flags.DEFINE_float("d_learning_rate", 2e-4, "Adam learning rate of the discriminator.")
    flags.DEFINE_integer("seed", 0, "Seed of weights, shuffling, augmentation and the validation carve.")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step.")
    flags.DEFINE_string("output_dir", "saved_models", "Runs are written to output_dir/run_name/.")
    flags.DEFINE_string("run_name", None, "Run folder name (default: dataset_backbone_mode_seedN).")
    flags.DEFINE_integer("verbose", 1, "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch.")
    defaults = TrainConfig()
    flags.DEFINE_bool(
        "tensorboard", defaults.tensorboard,
        "TensorBoard logs of every loss term, head accuracy, discriminator metric and the learning rate, "
        "per epoch, in <run folder>/logs (--tensorboard=false: none). View: tensorboard --logdir <run folder>.",
    )
    flags.DEFINE_integer(
        "tensorboard_steps", defaults.tensorboard_steps,
        "Also log the training metrics to TensorBoard every N steps (0: per epoch only).",
    )


def define_distribution_flags():
    """Strategy, devices, determinism, backups and guards (scripts/train.py)."""
    flags.DEFINE_enum(
        "strategy", "default", STRATEGIES,
        "default: one device; one_device; mirrored: all local GPUs, else all logical CPUs "
        "(--cpu_devices); multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG "
        "(launch with scripts/launch_workers.py).",
    )
    flags.DEFINE_integer(
        "cpu_devices", None,
        "Split the CPU into this many logical devices (so --strategy=mirrored runs N replicas without GPUs).",
    )
    flags.DEFINE_bool(
        "sync_batchnorm", False,
        "BatchNorm with global batch statistics across replicas (default: per replica, as Keras does).",
    )
    flags.DEFINE_bool(
        "deterministic", False,
        "tf.config.experimental.enable_op_determinism(): same seed, same result (slower on GPU).",
    )
    flags.DEFINE_string(
        "backup_dir", None,
        "Back up the training state here; rerunning the same command after a crash resumes exactly "
        "from the newest backup. Deleted when the run completes.",
    )
    flags.DEFINE_integer("backup_steps", 0, "Also back up every N steps (0: at epoch ends only).")
    flags.DEFINE_bool(
        "stop_on_non_finite", True,
        "Stop with an error naming the loss term and step when a loss becomes NaN or infinite.",
    )
    flags.DEFINE_integer(
        "collapse_patience", 200,
        "Warn when d_balanced_accuracy stays near 0 or 1 for this many steps (0: never).",
    )


_DISTRIBUTION_FLAGS = (
    "strategy", "cpu_devices", "sync_batchnorm", "deterministic", "backup_dir", "backup_steps",
    "stop_on_non_finite", "collapse_patience",
)


def _int_list(values):
    if values is None:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError as error:
        raise flags.ValidationError(f"expected a comma-separated list of integers, got {values}") from error


def mbakt_config_from_flags():
    return MBAKTConfig(
        mode=FLAGS.mode,
        alpha=FLAGS.alpha,
        beta=FLAGS.beta,
        gamma=FLAGS.gamma,
        temperature=FLAGS.temperature,
        adversarial_temperature=FLAGS.adversarial_temperature,
        adversarial_warmup_steps=FLAGS.adversarial_warmup_steps,
        discriminator_steps=FLAGS.discriminator_steps,
        discriminator_label_smoothing=FLAGS.discriminator_label_smoothing,
        discriminator_units=_int_list(FLAGS.discriminator_units),
        adversarial_input=FLAGS.adversarial_input,
        teacher=FLAGS.teacher,
        branch_stages=_int_list(FLAGS.branch_stages),
        adaptation=FLAGS.adaptation,
        branch_design=FLAGS.branch_design,
        peer_stages=FLAGS.peer_stages,
        num_peers=FLAGS.num_peers,
        ensemble=FLAGS.ensemble,
        gate_main_weight=FLAGS.gate_main_weight or None,
        distillation_warmup_steps=FLAGS.distillation_warmup_steps,
        discriminator_condition=FLAGS.discriminator_condition,
        max_adversarial_grad_ratio=FLAGS.max_adversarial_grad_ratio or None,
    )


def train_config_from_flags():
    return TrainConfig(
        task=FLAGS.task,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        image_size=FLAGS.image_size,
        validation_fraction=FLAGS.validation_fraction,
        train_limit=FLAGS.train_limit,
        test_limit=FLAGS.test_limit,
        augment=FLAGS.augment,
        backbone=FLAGS.backbone,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay,
        schedule=FLAGS.schedule,
        d_learning_rate=FLAGS.d_learning_rate,
        seed=FLAGS.seed,
        jit_compile=FLAGS.jit_compile,
        output_dir=FLAGS.output_dir,
        run_name=FLAGS.run_name,
        verbose=FLAGS.verbose,
        tensorboard=FLAGS.tensorboard,
        tensorboard_steps=FLAGS.tensorboard_steps,
        # Only scripts that call define_distribution_flags() have these.
        **{name: FLAGS[name].value for name in _DISTRIBUTION_FLAGS if name in FLAGS},
    )
