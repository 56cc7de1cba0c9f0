"""Quantization-aware training and magnitude pruning of the main branch with tfmot.

tensorflow-model-optimization (tfmot) works only on tf_keras models and, once
imported, sets `TF_USE_LEGACY_KERAS=1`, after which keras-cv no longer imports
in that process. So the work is split over two processes that talk through
files in `<output_dir>/work/`:

1. **Keras 3 process** (`optimize_model`, `optimize_from_file`, here): cuts the
   main branch out of the trained MBAKT model and describes it for tf_keras
   (`tfmot/describe.py`); runs the training images through the input pipeline
   (augmentation included), one pass per fine-tuning epoch, and stores each
   pass with the **teacher's logits** on exactly those images
   (`tfmot/teacher.py`; the ensemble of all branches by default: the MBAKT
   model keeps teaching during the fine-tune); measures the float model and
   the post-training int8 file of `export.py` as baselines.
2. **tfmot process** (`tfmot/worker.py`, started by `tfmot/launch.py` with the
   Python of `tfmot_python()`): rebuilds the main branch in tf_keras
   (`tfmot/rebuild.py`, checking parity with the Keras 3 model), then for
   each requested method fine-tunes a copy with cross-entropy on the labels
   plus, with KD, `alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`:
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
work/                         the hand-off files of tfmot/handoff.py (removed unless keep_work)
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
import os
import shutil
import time
from typing import Optional, Tuple

import numpy as np

from mbakt_tf import atomic, saved_runs
from mbakt_tf.checks import Checks
from mbakt_tf.export import serving, tflite
from mbakt_tf.export.tflite import gzip_size
from mbakt_tf.reporting import format_size, text_table
from mbakt_tf.tfmot import describe, handoff
from mbakt_tf.tfmot.handoff import WORKER_RESULT, make_job, write_epoch_file  # noqa: F401
from mbakt_tf.tfmot.launch import (  # noqa: F401 - the documented names of this module
    OPTIMIZE_VENV,
    TFMOT_PYTHON_ENV,
    TfmotUnavailableError,
    check_bridges,
    run_worker,
    tfmot_python,
)
from mbakt_tf.tfmot.teacher import resolve_teacher, teacher_function, write_training_epochs  # noqa: F401

METHODS = ("qat", "qat_kd", "prune")
TEACHERS = ("auto", "ensemble", "main", "none")
OPTIMIZERS = ("sgd", "adam")
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
WORK_DIR = "work"


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



# ------------------------------------------------------------ the run


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
        handoff.UnsupportedLayerError: the main branch has a layer the
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
    bridge_dir = describe.write_bridge(main, os.path.join(work_dir, "bridge"), seed=config.seed)
    needs_teacher = any(m in ("qat_kd", "prune") for m in config.methods) and teacher != "none"
    teacher_fn = teacher_function(model, teacher) if needs_teacher else None
    train_files = write_training_epochs(train_dataset, config.epochs, work_dir, teacher_fn,
                                        limit=config.train_limit, progress=say)

    say(f"Float main branch and post-training int8 on {len(test_images)} test images")
    reference = main.predict(test_images, batch_size=256, verbose=0).astype(np.float32)
    float_accuracy = float(np.mean(np.argmax(reference, -1) == test_labels))
    baseline_saved_model = serving.write_saved_model(main, os.path.join(work_dir, "float_saved_model"))
    files = {}
    files["float32"] = tflite.write_tflite(os.path.join(output_dir, "model_float32.tflite"),
                                           tflite.convert_tflite(baseline_saved_model, "float32"))
    files["ptq_int8"] = tflite.write_tflite(os.path.join(output_dir, "model_ptq_int8.tflite"),
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
        found = {name: (passed, detail) for name, passed, detail in tflite.structure_checks(
            structure, int8_io=config.int8_io if key.endswith("int8") else None)}
        checks.add(f"{key}_builtin_ops_only", *found["builtin_ops_only"])
        if key.endswith("int8"):
            checks.add(f"{key}_fully_int8", found["io_dtype"][0] and found["no_float_tensors"][0],
                       f"{found['io_dtype'][1]}; {found['no_float_tensors'][1]}")
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
        "train_images_per_epoch": handoff.count_images(train_files[0]),
        "main_branch_parameters": int(main.count_params()),
        "bridge": {"parity": parity, "tf_keras_layers": handoff.count_layers(bridge_dir)},
        "rows": rows,
        "runs": worker["runs"],
        "versions": worker["versions"],
        "checks": checks.items,
        "ok": checks.ok,
        "seconds": time.time() - start,
    }
    atomic.write_json(os.path.join(output_dir, REPORT_JSON), report, indent=2)
    atomic.write_text(os.path.join(output_dir, REPORT_MD), format_markdown(report) + "\n")
    if not config.keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    files["report"] = os.path.join(output_dir, REPORT_JSON)
    result = OptimizeResult(output_dir=output_dir, files=files, report=report)
    if config.strict and not result.ok:
        raise OptimizeCheckError(f"Optimization in {output_dir} failed checks: {checks.failure_message()}")
    return result


def default_output_dir(model_path):
    """`saved_models/<run>_optimize` beside the run folder."""
    return saved_runs.sibling_dir(model_path, "_optimize")


def check_saved_model(model_path, config=None):
    """Refuses a saved model that QAT and pruning do not support, from its config alone (no TensorFlow).

    `config` (an `OptimizeConfig`) is what `scripts/optimize.py` passes; no option changes the answer.

    Raises:
        saved_runs.NotMBAKTModelError: a segmenter (QAT and pruning take classifiers for now).
    """
    class_name = saved_runs.saved_class_name(model_path)
    if class_name == "MBAKTSegmenter":
        raise saved_runs.NotMBAKTModelError(
            f"{model_path} holds a {class_name}: QAT and pruning support MBAKT classification models for now.")


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
    check_saved_model(model_path)
    say(f"Loading {model_path}")
    model = saved_runs.load_mbakt_model(model_path)
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
