"""Quantization-aware training and magnitude pruning of the main branch with tfmot.

tensorflow-model-optimization (tfmot) works only on tf_keras models and, once
imported, sets `TF_USE_LEGACY_KERAS=1`, after which keras-cv no longer imports
in that process. So the work is split over two processes that talk through
files in `<output_dir>/work/`:

1. **Keras 3 process** (`optimize_model`, `optimize_from_file`): cuts the main
   branch out of the trained MBAKT model and describes it for tf_keras
   (`tf_keras_bridge.write_bridge`); runs the training images through the
   input pipeline (augmentation included), one pass per fine-tuning epoch, and
   stores each pass with the **teacher's logits** on exactly those images (the
   ensemble of all branches by default: the MBAKT model keeps teaching during
   the fine-tune); measures the float model and the post-training int8 file of
   `export.py` as baselines.
2. **tfmot process** (`worker_main`, started by `run_worker` with the Python of
   `tfmot_python()`): rebuilds the main branch in tf_keras (checking parity
   with the Keras 3 model), then for each requested method fine-tunes a copy
   with cross-entropy on the labels plus, with KD, `alpha * T^2 *
   KL(softmax(teacher / T) || softmax(student / T))`:
   * `qat`, `qat_kd`: `tfmot.quantization.keras.quantize_apply` on an annotated
     copy (layers the default 8-bit registry lacks, e.g. `Rescaling`,
     `Multiply`, get an output-only quantize config), then a full-int8 TFLite
     file (int8 input and output, builtin ops only) via `tflite.convert_tflite`;
   * `prune`: `prune_low_magnitude` with a `PolynomialDecay` schedule from 0 to
     `target_sparsity` over the first `pruning_end_fraction` of the steps,
     `strip_pruning`, then float32 and post-training int8 TFLite files whose
     gzip sizes show what sparsity saves.
3. Back in the Keras 3 process: every TFLite file runs in LiteRT on the test
   split; `report.json` and `report.md` hold accuracies, sizes, gzip sizes,
   sparsity and checks (the QAT files are fully int8, pruning reached the
   target sparsity, the tf_keras copy matched the Keras 3 model).

Output folder (default `<run folder>_optimize`):
```
model_float32.tflite          baseline: the main branch, float32 (export.py)
model_ptq_int8.tflite         baseline: post-training full-int8 (export.py)
model_qat_int8.tflite         QAT, labels only
model_qat_kd_int8.tflite      QAT with the ensemble's soft targets
model_pruned_float32.tflite   pruned to target_sparsity (zeros compress: see its gzip size)
model_pruned_int8.tflite      pruned, then post-training full-int8
report.json, report.md        accuracies, sizes, checks
work/                         the hand-off files (removed unless keep_work)
```

Example:
```python
from mbakt_tf import optimize
result = optimize.optimize_from_file("saved_models/quickstart",
                                     config=optimize.OptimizeConfig(epochs=1))
print(optimize.format_report(result.report))
```
"""

import dataclasses
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Tuple

import numpy as np

from mbakt_tf import saved_runs, serving, tf_keras_bridge, tflite
from mbakt_tf.checks import Checks
from mbakt_tf.reporting import format_size, text_table

METHODS = ("qat", "qat_kd", "prune")
TEACHERS = ("auto", "ensemble", "main", "none")
OPTIMIZERS = ("sgd", "adam")
TFMOT_PYTHON_ENV = "MBAKT_TFMOT_PYTHON"
OPTIMIZE_VENV = ".venv-optimize"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
WORK_DIR = "work"
WORKER_RESULT = "worker_result.json"


class TfmotUnavailableError(RuntimeError):
    """No Python interpreter with tensorflow-model-optimization and tf_keras was found."""


class OptimizeCheckError(RuntimeError):
    """The files were written but a check failed (see the report)."""


@dataclasses.dataclass
class OptimizeConfig:
    """What to fine-tune, how, and with which teacher.

    Args:
        methods: any of `"qat"` (QAT, labels only), `"qat_kd"` (QAT with the
            teacher's soft targets), `"prune"` (magnitude pruning, with KD when
            there is a teacher).
        epochs: fine-tuning epochs of each method.
        batch_size: fine-tuning batch size.
        optimizer: `"sgd"` (momentum 0.9, Nesterov) or `"adam"`.
        learning_rate: initial rate; cosine decay to 0 over the fine-tune.
        teacher: `"ensemble"` (mean logits of all branches), `"main"` (the
            float main branch), `"none"`, or `"auto"`: the ensemble when the
            model has auxiliary branches, else the float main branch.
        alpha: weight of the distillation term (1 - alpha on cross-entropy).
        temperature: distillation temperature; None takes the model's.
        target_sparsity: fraction of pruned weights in every prunable layer.
        pruning_end_fraction: the schedule reaches `target_sparsity` after this
            fraction of the fine-tuning steps; the rest recovers accuracy.
        train_limit, test_limit: use at most this many training / test images.
        augment: augment the training images (teacher logits are computed on
            the augmented images).
        representative_samples: training images that calibrate post-training int8.
        int8_io: input/output dtype of the int8 files, `"int8"` or `"uint8"`.
        seed: seed of the tf_keras fine-tune and of the probe images (the data
            pipeline keeps the run's recorded seed, so its validation carve stays held out).
        keep_work: keep `work/` (the hand-off files) after the run.
        tfmot_python: the Python that runs the tfmot process (default: see
            `tfmot_python()`).
        strict: raise `OptimizeCheckError` (after writing everything) when a
            check fails.
    """

    methods: Tuple[str, ...] = METHODS
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.005
    teacher: str = "auto"
    alpha: float = 0.5
    temperature: Optional[float] = None
    target_sparsity: float = 0.5
    pruning_end_fraction: float = 0.7
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    augment: bool = True
    representative_samples: int = 300
    int8_io: str = "int8"
    seed: int = 0
    keep_work: bool = False
    tfmot_python: Optional[str] = None
    strict: bool = True

    def __post_init__(self):
        self.methods = tuple(self.methods)
        self.validate()

    def validate(self):
        """Raises `ValueError` naming the first field that makes no sense."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}, got {list(self.methods)}.")
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if "qat_kd" in self.methods and self.teacher == "none":
            raise ValueError("method 'qat_kd' needs a teacher; teacher='none' was given.")
        for name in ("epochs", "batch_size", "representative_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}.")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 0.0 < self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in (0, 1), got {self.target_sparsity}.")
        if not 0.0 < self.pruning_end_fraction <= 1.0:
            raise ValueError(f"pruning_end_fraction must be in (0, 1], got {self.pruning_end_fraction}.")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}.")
        if self.int8_io not in tflite.INT8_IO_TYPES:
            raise ValueError(f"int8_io must be one of {tflite.INT8_IO_TYPES}, got {self.int8_io!r}.")

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["methods"] = list(self.methods)
        return values


@dataclasses.dataclass
class OptimizeResult:
    output_dir: str
    files: dict
    report: dict

    @property
    def ok(self):
        return self.report["ok"]


# ------------------------------------------------------------ the tfmot Python


def _package_parent():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_tfmot(python):
    """True when `python` can import tfmot and tf_keras (checked without importing them here)."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return all(importlib.util.find_spec(m) is not None for m in ("tensorflow_model_optimization", "tf_keras"))
    probe = ("import importlib.util as u, sys; "
             "sys.exit(0 if all(u.find_spec(m) for m in ('tensorflow_model_optimization', 'tf_keras')) else 1)")
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def tfmot_python(explicit=None):
    """The Python interpreter that runs the tfmot process.

    In this order: `explicit`; `$MBAKT_TFMOT_PYTHON`; `.venv-optimize/bin/python`
    in the repository holding this package or in the working directory (`make
    setup-optimize` creates it); this interpreter when it has tfmot and
    tf_keras (`pip install 'mbakt_tf[optimize]'`).

    Raises:
        TfmotUnavailableError: none of them has tfmot and tf_keras.
    """
    for python in (explicit, os.environ.get(TFMOT_PYTHON_ENV)):
        if python:
            if not _has_tfmot(python):
                raise TfmotUnavailableError(
                    f"{python} cannot import tensorflow_model_optimization and tf_keras.")
            return python
    candidates = [os.path.join(root, OPTIMIZE_VENV, "bin", "python")
                  for root in (_package_parent(), os.getcwd())]
    for python in candidates + [sys.executable]:
        if os.path.exists(python) and _has_tfmot(python):
            return python
    raise TfmotUnavailableError(
        "QAT and pruning need tensorflow-model-optimization and tf_keras in a separate "
        f"virtualenv: run `make setup-optimize` (creates {OPTIMIZE_VENV}/), or point "
        f"${TFMOT_PYTHON_ENV} at a Python that has them (pip install 'mbakt_tf[optimize]'). "
        f"Looked at: {', '.join(candidates + [sys.executable])}."
    )


def _worker_package(path_dir):
    """A stand-in `mbakt_tf` package in `path_dir` for the tfmot process.

    It links every module of this package but has an empty `__init__.py`, so
    `import mbakt_tf.optimize` there never runs the package's `__init__` (which
    imports the Keras 3 model code, and keras-cv may follow).
    """
    source = os.path.dirname(os.path.abspath(__file__))
    package = os.path.join(path_dir, "mbakt_tf")
    os.makedirs(package)
    for entry in os.listdir(source):
        if entry not in ("__init__.py", "__pycache__"):
            os.symlink(os.path.join(source, entry), os.path.join(package, entry))
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write('"""Stand-in package for the tfmot process (see mbakt_tf.optimize)."""\n')


def run_worker(job, work_dir, python=None, timeout=None, progress=None):
    """Runs `worker_main` on `job` in a tfmot process; returns its result dict.

    The process finds this package through a private folder on PYTHONPATH
    (`_worker_package`), so the other interpreter's own packages (e.g. its
    absl-py) are never shadowed by this environment's, and no Keras 3 model
    code is imported there.
    """
    python = tfmot_python(python)
    work_dir = os.path.abspath(work_dir)  # the process runs in it: relative paths would not resolve
    os.makedirs(work_dir, exist_ok=True)
    job_path = os.path.join(work_dir, "job.json")
    result_path = os.path.join(work_dir, WORKER_RESULT)
    job = dict(job, result_file=result_path)
    with open(job_path, "w") as f:
        json.dump(job, f, indent=1)
    if os.path.exists(result_path):
        os.remove(result_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               PYTHONUNBUFFERED="1")
    env.pop("PYTHONSTARTUP", None)
    log_path = os.path.join(work_dir, "worker.log")
    with tempfile.TemporaryDirectory(prefix="mbakt_tfmot_path_") as path_dir:
        _worker_package(path_dir)
        env["PYTHONPATH"] = path_dir
        command = [python, "-c", "import sys; from mbakt_tf.optimize import worker_main; "
                                 "sys.exit(worker_main(sys.argv[1:]))", job_path]
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, cwd=work_dir, env=env)
            tail = []
            for line in process.stdout:
                log.write(line)
                tail = (tail + [line])[-40:]
                if line.startswith("PROGRESS ") and progress is not None:
                    progress(line[len("PROGRESS "):].rstrip())
            returncode = process.wait(timeout=timeout)
    if returncode != 0 or not os.path.exists(result_path):
        raise RuntimeError(
            f"The tfmot process ({python}) failed with status {returncode}; log {log_path}:\n"
            + "".join(tail)[-4000:]
        )
    with open(result_path) as f:
        return json.load(f)


def check_bridges(directories, work_dir, python=None):
    """Rebuilds each bridge folder in tf_keras in one tfmot process; returns their parity dicts.

    Nothing is trained: this checks the conversion alone (the tests use it on
    every backbone family).
    """
    directories = [os.path.abspath(d) for d in directories]
    job = {"bridge_dir": directories[0], "extra_bridges": directories, "runs": []}
    result = run_worker(job, work_dir, python=python)
    return [result["extra_bridges"][d] for d in directories]


# ------------------------------------------------------------ hand-off files


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
        write_epoch_file(path, np.concatenate(images)[:limit], np.concatenate(labels)[:limit],
                         np.concatenate(logits)[:limit] if logits else None)
        paths.append(path)
    return paths


def make_job(bridge_dir, train_files, representative_images, output_dir, work_dir, config, temperature):
    """The job description `worker_main` reads."""
    representative_path = os.path.join(work_dir, "representative.npz")
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


# ============================================================ the tfmot side
# Everything below runs in the tfmot process: tf_keras, never Keras 3 models.


def _tfmot():
    import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1

    return tfmot


def _output_quantize_config():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs,
    )

    return default_8bit_quantize_configs.Default8BitOutputQuantizeConfig


def quantize_model(model):
    """A QAT copy of a tf_keras functional `model` (tfmot's default 8-bit scheme).

    Layers in tfmot's default registry (and BatchNormalization, which its
    transforms fold into the preceding convolution) are annotated as tfmot
    would; the rest (`Rescaling`, `Multiply`, the bridge's slice layer ...)
    get an output-only quantize config, so every tensor has a range and the
    TFLite file can be fully int8.
    """
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    tfmot = _tfmot()
    q = tfmot.quantization.keras
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    output_config = _output_quantize_config()

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        if registry.supports(layer) or isinstance(layer, tf_keras.layers.BatchNormalization):
            return q.quantize_annotate_layer(layer)
        return q.quantize_annotate_layer(layer, output_config())

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    scope = {**tf_keras_bridge.custom_objects(), output_config.__name__: output_config}
    with q.quantize_scope(scope):
        return q.quantize_apply(annotated)


def pruning_schedule(total_steps, target_sparsity, end_fraction):
    """`PolynomialDecay` from 0 to `target_sparsity`, reaching it exactly on an update step.

    Masks update every `frequency` steps (about 10 updates) from step 0; the
    last update, at `end_step`, applies the full target.
    """
    tfmot = _tfmot()
    wanted_end = max(1, int(round(total_steps * end_fraction)) - 1)
    frequency = max(1, wanted_end // 10)
    end_step = max(frequency, frequency * (wanted_end // frequency))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(target_sparsity), begin_step=0,
        end_step=end_step, frequency=frequency)
    return schedule, {"begin_step": 0, "end_step": end_step, "frequency": frequency,
                      "total_steps": total_steps, "target_sparsity": float(target_sparsity)}


def prune_model(model, schedule):
    """A copy of a tf_keras `model` whose prunable layers are wrapped by `prune_low_magnitude`.

    Layers with weights tfmot's prune registry knows how to prune (Conv2D,
    DepthwiseConv2D, Dense, ...) are wrapped; the rest stay as they are
    (`prune_low_magnitude` on the whole model would refuse e.g. `Rescaling`).
    """
    import tf_keras
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    tfmot = _tfmot()
    registry = prune_registry.PruneRegistry

    def wrap(layer):
        if registry.supports(layer) and registry._weight_names(layer):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return tf_keras.models.clone_model(model, clone_function=wrap)


def sparsity_of(pruned_model):
    """Fraction of zeros in the weights the pruning wrappers of `pruned_model` prune.

    Returns overall and per-layer figures, and how many weights that is.
    """
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    wrapper = pruning_wrapper.PruneLowMagnitude
    per_layer, zeros, total = {}, 0, 0
    for layer in pruned_model.layers:
        if not isinstance(layer, wrapper):
            continue
        values = np.concatenate([np.asarray(weight).reshape(-1) for weight, _, _ in layer.pruning_vars])
        per_layer[layer.layer.name] = float(np.mean(values == 0))
        zeros += int(np.sum(values == 0))
        total += int(values.size)
    return {"overall": zeros / max(total, 1), "pruned_weights": total, "zero_weights": zeros,
            "layers": per_layer}


def kd_loss(alpha, temperature, num_classes):
    """tf_keras loss on `y = [label, teacher logits...]`: (1 - alpha) CE + alpha T^2 KL."""
    import tensorflow as tf

    def loss(y, logits):
        labels = tf.cast(y[:, 0], tf.int32)
        logits = tf.cast(logits, tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        if y.shape[-1] == 1 or alpha == 0:
            return ce
        teacher = tf.stop_gradient(y[:, 1:])
        t_log = tf.nn.log_softmax(teacher / temperature, axis=-1)
        s_log = tf.nn.log_softmax(logits / temperature, axis=-1)
        kl = tf.reduce_sum(tf.exp(t_log) * (t_log - s_log), axis=-1)
        return (1.0 - alpha) * ce + alpha * temperature**2 * kl

    return loss


def packed_accuracy(y, logits):
    """Top-1 accuracy against the label in column 0 of a packed target."""
    import tensorflow as tf

    labels = tf.cast(y[:, 0], tf.int64)
    return tf.cast(tf.equal(labels, tf.argmax(logits, axis=-1)), tf.float32)


def _epoch_dataset(path, batch_size, with_teacher):
    import tensorflow as tf

    with np.load(path) as saved:
        images = saved["images"].astype(np.float32)
        labels = saved["labels"].astype(np.float32)[:, None]
        target = labels
        if with_teacher:
            if "teacher" not in saved.files:
                raise ValueError(f"{path} has no teacher logits, but the run asks for distillation.")
            target = np.concatenate([labels, saved["teacher"]], axis=1)
    dataset = tf.data.Dataset.from_tensor_slices((images, target)).batch(batch_size, drop_remainder=True)
    return dataset.prefetch(2), len(images) // batch_size


def _epoch_steps(path, batch_size):
    with np.load(path) as saved:
        return len(saved["labels"]) // batch_size


def fine_tune(model, train_files, training, kd, callbacks=(), say=print):
    """Fits a tf_keras `model` one epoch per file (the files are already shuffled and augmented)."""
    import tf_keras

    datasets = [_epoch_dataset(p, training["batch_size"], kd) for p in train_files]
    total_steps = sum(steps for _, steps in datasets)
    if total_steps < 1:
        raise ValueError(f"Fewer training images than one batch of {training['batch_size']}.")
    schedule = tf_keras.optimizers.schedules.CosineDecay(training["learning_rate"], total_steps)
    if training["optimizer"] == "adam":
        optimizer = tf_keras.optimizers.Adam(schedule)
    else:
        optimizer = tf_keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    num_classes = int(model.output_shape[-1])
    alpha = training["alpha"] if kd else 0.0
    model.compile(optimizer=optimizer, loss=kd_loss(alpha, training["temperature"], num_classes),
                  metrics=[packed_accuracy])
    history = {}
    for epoch, (dataset, steps) in enumerate(datasets):
        start = time.time()
        fit = model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, callbacks=list(callbacks), verbose=0)
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        say(f"  epoch {epoch + 1}/{len(datasets)}: {steps} steps, loss {history['loss'][-1]:.4f}, "
            f"train accuracy {history['packed_accuracy'][-1]:.4f} ({time.time() - start:.0f} s)")
    return history, total_steps


def write_serving_saved_model(model, path):
    """The tf_keras model as a SavedModel with export.py's signature (images -> logits, probabilities)."""
    import tensorflow as tf

    shape = tuple(model.input_shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None,) + shape, tf.float32, name=serving.INPUT_NAME)])
    def serve(images):
        logits = model(images, training=False)
        return {serving.OUTPUT_NAMES[0]: logits, serving.OUTPUT_NAMES[1]: tf.nn.softmax(logits, axis=-1)}

    if os.path.exists(path):
        shutil.rmtree(path)
    tf.saved_model.save(model, path, signatures={serving.SIGNATURE_KEY: serve})
    return path


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def worker_main(argv):
    """Entry point of the tfmot process: `python -c '...worker_main(...)' job.json`."""
    if len(argv) != 1:
        print("usage: worker_main JOB_JSON", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)

    def say(message):
        print(f"PROGRESS {message}", flush=True)

    start = time.time()
    tfmot = _tfmot()
    import tensorflow as tf
    import tf_keras

    say(f"tfmot process: tensorflow {tf.__version__}, tf_keras {tf_keras.__version__}, "
        f"tfmot {tfmot.__version__}; rebuilding the main branch in tf_keras")
    _, parity = tf_keras_bridge.load_bridge(job["bridge_dir"])  # raises on a parity failure
    say(f"tf_keras copy matches the Keras 3 model: max |logit diff| {parity['max_abs_diff']:.2g} "
        f"on {parity['images']} random images")
    result = {"bridge_parity": parity, "versions": {
        "tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tfmot": tfmot.__version__,
        "python": sys.executable}, "runs": {}, "extra_bridges": {}}
    for directory in job.get("extra_bridges", []):
        _, result["extra_bridges"][directory] = tf_keras_bridge.load_bridge(directory, check=False)
    representative = None
    if job.get("representative_file"):
        with np.load(job["representative_file"]) as saved:
            representative = saved["images"]
    training = job.get("training")
    for run in job.get("runs", []):
        run_start = time.time()
        tf_keras.utils.set_random_seed(training["seed"])
        base, _ = tf_keras_bridge.load_bridge(job["bridge_dir"], check=False)
        name, kd = run["name"], run["kd"]
        say(f"{name}: {'QAT' if run['method'] == 'qat' else 'pruning'} fine-tune, "
            f"{'labels + teacher KD' if kd else 'labels only'}")
        info = {"method": run["method"], "kd": kd, "files": {}}
        if run["method"] == "qat":
            model = quantize_model(base)
            history, steps = fine_tune(model, job["train_files"], training, kd, say=say)
        else:
            steps_per_epoch = [_epoch_steps(p, training["batch_size"]) for p in job["train_files"]]
            schedule, info["schedule"] = pruning_schedule(
                sum(steps_per_epoch), job["pruning"]["target_sparsity"], job["pruning"]["end_fraction"])
            model = prune_model(base, schedule)
            callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
            history, steps = fine_tune(model, job["train_files"], training, kd, callbacks, say=say)
            info["sparsity"] = sparsity_of(model)
            model = tfmot.sparsity.keras.strip_pruning(model)
            stripped_zeros = sum(int(np.sum(np.asarray(w) == 0)) for w in model.weights)
            info["sparsity"]["zero_weights_after_strip"] = stripped_zeros
            say(f"{name}: sparsity {info['sparsity']['overall']:.4f} over "
                f"{info['sparsity']['pruned_weights']:,} weights of {len(info['sparsity']['layers'])} layers")
        info.update(history=history, steps=steps, parameters=int(model.count_params()))
        saved_model = write_serving_saved_model(model, os.path.join(job["work_dir"], f"{name}_saved_model"))
        say(f"{name}: converting to TFLite")
        if run["method"] == "qat":
            path = os.path.join(job["output_dir"], f"model_{name}_int8.tflite")
            info["files"]["int8"] = _write(path, tflite.convert_tflite(
                saved_model, "int8", representative, job["int8_io"]))
        else:
            for fmt in ("float32", "int8"):
                path = os.path.join(job["output_dir"], f"model_{name}_{fmt}.tflite")
                info["files"][fmt] = _write(path, tflite.convert_tflite(
                    saved_model, fmt, representative, job["int8_io"]))
            weights_path = os.path.join(job["work_dir"], f"{name}.weights.h5")
            model.save_weights(weights_path)
            info["weights_h5_bytes"] = os.path.getsize(weights_path)
            info["weights_h5_gzip_bytes"] = gzip_size(weights_path)
        info["seconds"] = time.time() - run_start
        result["runs"][name] = info
    result["seconds"] = time.time() - start
    with open(job["result_file"], "w") as f:
        json.dump(result, f, indent=1)
    say(f"tfmot process done in {result['seconds']:.0f} s")
    return 0


# ============================================================ the Keras 3 side


def gzip_size(path):
    """Bytes of `path` after gzip -9 (what a sparse or quantized file costs to ship compressed)."""
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9))


def _file_row(label, path, lite_outputs, labels, reference, kind):
    return {
        "model": label,
        "kind": kind,
        "file": os.path.basename(path),
        "bytes": os.path.getsize(path),
        "gzip_bytes": gzip_size(path),
        "accuracy": float(np.mean(np.argmax(lite_outputs["logits"], -1) == labels)),
        "top1_agreement_with_float": float(np.mean(
            np.argmax(lite_outputs["logits"], -1) == np.argmax(reference, -1))),
    }


def optimize_model(
    model,
    output_dir,
    train_dataset,
    representative_images,
    test_images,
    test_labels,
    config=None,
    source=None,
    progress=None,
):
    """QAT and pruning of an MBAKT model's main branch; baselines; evaluation; report.

    Args:
        model: a trained `mbakt_tf.MBAKT`.
        output_dir: folder for the files (created).
        train_dataset: a tf.data pipeline of `(images, labels)` training batches
            (shuffled, augmented as wanted), iterated once per epoch.
        representative_images: float32 (N, H, W, C) training images in [0, 255]
            calibrating post-training int8 (the first `representative_samples`).
        test_images, test_labels: held-out images and int labels.
        config: an `OptimizeConfig`.
        source: recorded as the report's "source".
        progress: called with a message before each long step.

    Returns:
        `OptimizeResult`; `report` is also in `output_dir/report.json`.

    Raises:
        TfmotUnavailableError: no Python with tfmot (see `tfmot_python`).
        tf_keras_bridge.UnsupportedLayerError: the main branch has a layer the
            bridge cannot convert.
        OptimizeCheckError: `config.strict` and a check failed.
    """
    config = config or OptimizeConfig()
    say = progress or (lambda message: None)
    start = time.time()
    python = tfmot_python(config.tfmot_python)  # fail before any work
    teacher = resolve_teacher(model, config.teacher)
    temperature = config.temperature or model.config.temperature
    main = model.main_model()
    input_shape = tuple(int(d) for d in main.input.shape[1:])
    representative_images = serving.check_images(
        representative_images, input_shape, "representative_images")[: config.representative_samples]
    test_images = serving.check_images(test_images, input_shape, "test_images")
    test_labels = np.asarray(test_labels).astype(np.int64).reshape(-1)
    if config.test_limit is not None:
        test_images, test_labels = test_images[: config.test_limit], test_labels[: config.test_limit]

    os.makedirs(output_dir, exist_ok=True)
    work_dir = os.path.join(output_dir, WORK_DIR)
    os.makedirs(work_dir, exist_ok=True)
    say("Describing the main branch for tf_keras")
    bridge_dir = tf_keras_bridge.write_bridge(main, os.path.join(work_dir, "bridge"), seed=config.seed)
    needs_teacher = any(m in ("qat_kd", "prune") for m in config.methods) and teacher != "none"
    teacher_fn = teacher_function(model, teacher) if needs_teacher else None
    train_files = write_training_epochs(train_dataset, config.epochs, work_dir, teacher_fn,
                                        limit=config.train_limit, progress=say)

    say(f"Float main branch and post-training int8 on {len(test_images)} test images")
    reference = main.predict(test_images, batch_size=256, verbose=0).astype(np.float32)
    float_accuracy = float(np.mean(np.argmax(reference, -1) == test_labels))
    baseline_saved_model = serving.write_saved_model(main, os.path.join(work_dir, "float_saved_model"))
    files = {}
    files["float32"] = _write(os.path.join(output_dir, "model_float32.tflite"),
                              tflite.convert_tflite(baseline_saved_model, "float32"))
    files["ptq_int8"] = _write(os.path.join(output_dir, "model_ptq_int8.tflite"),
                               tflite.convert_tflite(baseline_saved_model, "int8",
                                                     representative_images, config.int8_io))

    say(f"tfmot process ({python}): {', '.join(config.methods)}")
    job = make_job(bridge_dir, train_files, representative_images, output_dir, work_dir, config, temperature)
    worker = run_worker(job, work_dir, python=python, progress=say)
    for name, run in worker["runs"].items():
        for fmt, path in run["files"].items():
            files[f"{name}_{fmt}"] = os.path.join(output_dir, os.path.basename(path))  # as the caller named it

    say("Running every TFLite file in LiteRT on the test images")
    labels_of = {
        "float32": ("TFLite float32 (no fine-tune)", "baseline"),
        "ptq_int8": ("post-training int8 (export.py)", "baseline"),
        "qat_int8": ("QAT int8, labels only", "qat"),
        "qat_kd_int8": (f"QAT int8 + {teacher} KD", "qat"),
        "pruned_float32": (f"pruned {config.target_sparsity:.0%}, float32", "pruned"),
        "pruned_int8": (f"pruned {config.target_sparsity:.0%} + post-training int8", "pruned"),
    }
    rows = [{"model": "Keras float main branch (no fine-tune)", "kind": "baseline", "file": None,
             "bytes": None, "gzip_bytes": None, "accuracy": float_accuracy,
             "top1_agreement_with_float": 1.0}]
    checks = Checks()
    parity = worker["bridge_parity"]
    checks.add("tf_keras_bridge_parity", parity["passed"],
               f"max |logit diff| {parity['max_abs_diff']:.3g} <= {parity['atol']:g}")
    for key, path in files.items():
        lite = tflite.LiteRTModel(path)
        label, kind = labels_of[key]
        rows.append(_file_row(label, path, lite.predict(test_images), test_labels, reference, kind))
        structure = tflite.tflite_structure(path)
        non_builtin = tflite.non_builtin_ops(structure["ops"])
        checks.add(f"{key}_builtin_ops_only", not non_builtin, f"ops {sorted(structure['ops'])}")
        if key.endswith("int8"):
            dtypes = structure["tensor_dtypes"]
            io = {structure["input"]["dtype"]} | {o["dtype"] for o in structure["outputs"]}
            floats = dtypes.get("float32", 0) + dtypes.get("float16", 0)
            checks.add(f"{key}_fully_int8", io == {config.int8_io} and floats == 0,
                       f"input/output {sorted(io)}, tensor dtypes {dtypes}")
    pruned = worker["runs"].get("pruned")
    if pruned is not None:
        reached = pruned["sparsity"]["overall"]
        checks.add("pruning_reached_target_sparsity", reached >= config.target_sparsity - 0.005,
                   f"{reached:.4f} >= {config.target_sparsity} - 0.005")

    report = {
        "source": dict(source or {}),
        "config": config.to_dict(),
        "teacher": teacher,
        "temperature": temperature,
        "test_images": int(len(test_images)),
        "train_images_per_epoch": _count_images(train_files[0]),
        "main_branch_parameters": int(main.count_params()),
        "bridge": {"parity": parity, "tf_keras_layers": _count_nodes(bridge_dir)},
        "rows": rows,
        "runs": worker["runs"],
        "versions": worker["versions"],
        "checks": checks.items,
        "ok": checks.ok,
        "seconds": time.time() - start,
    }
    with open(os.path.join(output_dir, REPORT_JSON), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(output_dir, REPORT_MD), "w") as f:
        f.write(format_markdown(report) + "\n")
    if not config.keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    files["report"] = os.path.join(output_dir, REPORT_JSON)
    result = OptimizeResult(output_dir=output_dir, files=files, report=report)
    if config.strict and not result.ok:
        raise OptimizeCheckError(f"Optimization in {output_dir} failed checks: {checks.failure_message()}")
    return result


def _count_images(path):
    with np.load(path) as saved:
        return int(len(saved["labels"]))


def _count_nodes(bridge_dir):
    with open(os.path.join(bridge_dir, tf_keras_bridge.GRAPH_FILE)) as f:
        return len(json.load(f)["nodes"])


def default_output_dir(model_path):
    """`saved_models/<run>_optimize` beside the run folder."""
    return saved_runs.sibling_dir(model_path, "_optimize")


def optimize_from_file(model_path, output_dir=None, config=None, dataset=None, data_dir=None,
                       image_size=None, progress=None):
    """Loads a saved MBAKT model and its run's data, then `optimize_model`.

    The dataset and its settings default to the run's results.json (like
    `export.export_from_file`); training images come from the training split
    (the run's validation carve is held out), augmented unless
    `config.augment` is False.
    """
    config = config or OptimizeConfig()
    say = progress or (lambda message: None)
    tfmot_python(config.tfmot_python)  # fail before loading anything
    model_path = saved_runs.resolve_model_path(model_path)
    say(f"Loading {model_path}")
    model = saved_runs.load_mbakt_model(model_path)
    if saved_runs.is_segmenter(model):
        raise saved_runs.NotMBAKTModelError(
            f"{model_path} holds a {type(model).__name__}: QAT and pruning support MBAKT "
            "classification models for now.")
    output_dir = output_dir or default_output_dir(model_path)

    def load(augment, batch_size):
        return saved_runs.load_run_splits(
            model, model_path, dataset=dataset, data_dir=data_dir, image_size=image_size,
            batch_size=batch_size, augment=augment,
            train_limit=config.train_limit, test_limit=config.test_limit,
        )

    say("Loading the run's data")
    splits = load(config.augment, config.batch_size)
    plain = load(False, 256) if config.augment else splits
    representative, _ = saved_runs.take_images(plain.train, config.representative_samples)
    test_images, test_labels = saved_runs.take_images(splits.test)
    return optimize_model(model, output_dir, splits.train, representative, test_images, test_labels,
                          config=config, source=saved_runs.provenance(model, model_path, splits),
                          progress=progress)


# ------------------------------------------------------------------- reports


def format_markdown(report):
    """The report's table in Markdown: one row per model, accuracy and sizes."""
    lines = [
        "| model | file | test accuracy | top-1 agreement with float | size | gzip size |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {('`' + row['file'] + '`') if row['file'] else '-'} | "
            f"{100 * row['accuracy']:.2f}% | {100 * row['top1_agreement_with_float']:.2f}% | "
            f"{format_size(row['bytes'])} | {format_size(row['gzip_bytes'])} |"
        )
    return "\n".join(lines)


def format_report(report):
    """A plain-text summary: the table, sparsity, teacher, checks."""
    rows = [("model", "file", "accuracy", "agree", "size", "gzip")]
    for row in report["rows"]:
        rows.append((row["model"], row["file"] or "-", f"{100 * row['accuracy']:.2f}%",
                     f"{100 * row['top1_agreement_with_float']:.2f}%", format_size(row["bytes"]),
                     format_size(row["gzip_bytes"])))
    parity = report["bridge"]["parity"]
    lines = [
        f"Main branch: {report['main_branch_parameters']:,} parameters; tf_keras copy "
        f"({report['bridge']['tf_keras_layers']} layers) max |logit diff| {parity['max_abs_diff']:.2g}.",
        f"Fine-tune: {report['config']['epochs']} epoch(s) of {report['train_images_per_epoch']:,} images, "
        f"teacher {report['teacher']} (T={report['temperature']:g}, alpha={report['config']['alpha']:g}); "
        f"accuracy on {report['test_images']:,} test images:",
        text_table(rows),
    ]
    pruned = report["runs"].get("pruned")
    if pruned:
        s = pruned["sparsity"]
        lines.append(f"Pruned: {s['overall']:.2%} of {s['pruned_weights']:,} prunable weights are zero "
                     f"(target {report['config']['target_sparsity']:.0%}).")
    lines.append(Checks(report["checks"]).summary())
    return "\n".join(lines)
