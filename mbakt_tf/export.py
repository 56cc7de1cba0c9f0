"""Deploy the main branch (or one early exit): SavedModel, TFLite for Android, parity, manifest.

Only the main branch is exported by default: `MBAKT.main_model()`, the plain
network's parameters and FLOPs. `branch="branch_k"` (or `k`) exports auxiliary
branch k with the backbone up to its stage instead, a smaller early-exit model.
Everything a phone needs lands in one folder:

```
saved_model/                 TensorFlow SavedModel, signature "serving_default"
model_float32.tflite         LiteRT, float32
model_float16.tflite         float16 weights, float32 compute on CPU
model_dynamic_range.tflite   int8 weights, activations quantized at run time
model_int8.tflite            full integer: int8 (or uint8) input, output and kernels
labels.txt                   one class name per line, line i = class i
manifest.json                input/output details, sizes, cost, parity, checks, latency
```

Every TFLite file carries TFLite Metadata (labels, input normalisation mean 0
std 1, image type) for MediaPipe Tasks' `ImageClassifier` / `ImageSegmenter`,
written in MediaPipe's own virtualenv (`mediapipe_tasks`), and is run there
through the Tasks API on the test images: its top-1 classes (per-pixel
classes of a segmenter) must agree with LiteRT's on the same file. MediaPipe
takes RGB only: `ExportConfig(rgb_input=True)` makes a grayscale model's
files take (H, W, 3) RGB, converted in the graph (`rgb_input`); MediaPipe
takes uint8 or float32 input only, so the int8 file runs there with
`int8_io="uint8"`. A file MediaPipe cannot run is named in the manifest
with MediaPipe's reason.

Input contract (every file): one `images` tensor, NHWC, the training image
size, raw pixel values in [0, 255] (float32; in the int8 file int8 = pixel - 128,
in the uint8 variant the pixel bytes themselves): rescaling is the graph's
first layer, so callers do no preprocessing. Outputs: `logits` and
`probabilities` (softmax), `(batch, num_classes)`. TFLite files have batch 1.

The exporter checks its own work and records every figure in the manifest:
parity with the Keras model (max |logit difference|, top-1 agreement) of the
SavedModel, reloaded with `tf.saved_model.load` in a fresh Python process that
never imports mbakt_tf, and of every TFLite file run by the LiteRT interpreter
(`ai_edge_litert`), on held-out images; test accuracy of every format and the
int8 drop; that no variable, tensor or op of another branch or of the
discriminator is in the exported graphs (variable count and names, parameter
count equal to the Keras model's, TFLite op counts, builtin ops only, no Flex);
and a LiteRT latency benchmark (median of repeats after warm-up), int8 over
float32.

Example:
```python
from mbakt_tf import export
result = export.export_from_file("saved_models/quickstart/model.keras",
                                 config=export.ExportConfig(test_limit=2000))
result.output_dir, result.ok                    # 'saved_models/quickstart_export', True
result.manifest["evaluation"]["int8"]           # accuracy, parity figures of the int8 file
# or from a model object and arrays:
result = export.export_model(model, "saved_models/m_export", representative_images=x_train[:300],
                             test_images=x_test, test_labels=y_test, class_names=names)
```
"""

import dataclasses
import json
import os
import re
import time
from typing import Optional, Tuple

import numpy as np

from mbakt_tf import mediapipe_tasks, rgb_input, saved_runs
from mbakt_tf.checks import Checks
from mbakt_tf.config import dataclass_from_dict
from mbakt_tf.reporting import format_size, text_table
# Re-exported: the errors callers catch and the names they pass come with `export`.
from mbakt_tf.saved_runs import (  # noqa: F401
    ModelFileNotFoundError,
    NotMBAKTModelError,
    load_mbakt_model,
    resolve_model_path,
)
from mbakt_tf.serving import INPUT_NAME, SIGNATURE_KEY, check_images, probe_saved_model, write_saved_model
from mbakt_tf.tflite import (  # noqa: F401
    INT8_IO_TYPES,
    TFLITE_FORMATS,
    LiteRTModel,
    convert_tflite,
    expected_weight_ops,
    non_builtin_ops,
    tflite_structure,
)

SAVED_MODEL_DIR = "saved_model"
MANIFEST = "manifest.json"
LABELS = "labels.txt"
MANIFEST_VERSION = 1
# Segmentation outputs are maps (H x W x classes per image): parity runs on at
# most this many test images unless ExportConfig.test_limit says otherwise.
SEGMENTATION_TEST_LIMIT = 1000
# ExportConfig.tflite_metadata: "auto" writes it when a MediaPipe Python is found
# (else the manifest says why not), "require" fails without one, "off" never.
TFLITE_METADATA_MODES = ("auto", "require", "off")

# Parity with the Keras model. Float formats: max |logit difference| at most
# `atol + rtol * max|keras logit|`; every format: top-1 agreement at least
# `min_top1`. Quantized formats are judged by top-1 agreement (and int8 by its
# accuracy drop, `ExportConfig.max_int8_accuracy_drop`); their logit difference
# is reported only.
PARITY_TOLERANCES = {
    "saved_model": {"atol": 1e-4, "rtol": 1e-5, "min_top1": 0.999},
    "float32": {"atol": 1e-3, "rtol": 1e-4, "min_top1": 0.999},
    "float16": {"atol": 2e-2, "rtol": 5e-3, "min_top1": 0.99},
    "dynamic_range": {"atol": None, "rtol": None, "min_top1": 0.95},
    "int8": {"atol": None, "rtol": None, "min_top1": 0.95},
}


class ExportCheckError(RuntimeError):
    """The files were written but a parity or verification check failed (see the manifest)."""


@dataclasses.dataclass
class ExportConfig:
    """What to export and how hard to check it.

    Args:
        branch: `None` or `"main"`: the main branch; `"branch_k"` or `k`: the
            early exit on auxiliary branch k (1 = shallowest).
        formats: TFLite variants to write, from `TFLITE_FORMATS`. The
            SavedModel is always written (the TFLite files come from it).
        int8_io: dtype of the full-integer file's input and output, `"int8"`
            (pixel - 128) or `"uint8"` (the pixel bytes).
        representative_samples: training images that calibrate int8 ranges.
        test_limit: evaluate on at most this many test images (None: all).
        max_int8_accuracy_drop: largest accepted test-accuracy drop of the int8
            file against the Keras model, as a fraction (0.01 = 1 point).
        benchmark_runs: timed LiteRT invocations per file (0 skips the benchmark).
        benchmark_warmup: untimed invocations before them.
        num_threads: LiteRT threads for evaluation and benchmark.
        strict: raise `ExportCheckError` (after writing every file and the
            manifest) when a check fails.
        rgb_input: the files take RGB (H, W, 3) in [0, 255], as MediaPipe Tasks
            feed them; a 1-channel model converts in the graph (BT.601 luma,
            builtin MUL and SUM ops; `rgb_input.py`). Images passed to the
            exporter stay in the model's own channels.
        tflite_metadata: one of `TFLITE_METADATA_MODES`: write TFLite Metadata
            into every TFLite file and check it with MediaPipe Tasks.
        mediapipe_python: the Python with MediaPipe (default: see
            `mediapipe_tasks.mediapipe_python`).
        min_mediapipe_agreement: least accepted fraction of test images (of
            pixels, for a segmenter) where MediaPipe's class agrees with LiteRT's.

    Example:
    >>> ExportConfig(branch=1).resolved_branch_request
    'branch_1'
    >>> ExportConfig.from_dict(ExportConfig(formats=["int8"]).to_dict()).formats
    ('int8',)
    """

    branch: Optional[str] = None
    formats: Tuple[str, ...] = TFLITE_FORMATS
    int8_io: str = "int8"
    representative_samples: int = 300
    test_limit: Optional[int] = None
    max_int8_accuracy_drop: float = 0.01
    benchmark_runs: int = 200
    benchmark_warmup: int = 20
    num_threads: int = 1
    strict: bool = True
    rgb_input: bool = False
    tflite_metadata: str = "auto"
    mediapipe_python: Optional[str] = None
    min_mediapipe_agreement: float = 0.99

    def __post_init__(self):
        if self.branch is not None:
            self.branch = str(self.branch)
        self.formats = tuple(self.formats)
        self.validate()

    def validate(self):
        """Raises `ValueError` naming the first field that makes no sense."""
        unknown = [f for f in self.formats if f not in TFLITE_FORMATS]
        if unknown:
            raise ValueError(f"Unknown TFLite formats {unknown}; choose from {list(TFLITE_FORMATS)}.")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"formats lists a format twice: {list(self.formats)}.")
        if self.int8_io not in INT8_IO_TYPES:
            raise ValueError(f"int8_io must be one of {INT8_IO_TYPES}, got {self.int8_io!r}.")
        if self.branch is not None and not re.fullmatch(r"main|(branch_)?\d+", self.branch):
            raise ValueError(
                f"branch must be 'main', k or 'branch_k' (k = 1 is the shallowest early exit), "
                f"got {self.branch!r}."
            )
        if self.representative_samples < 1:
            raise ValueError(
                f"representative_samples must be >= 1, got {self.representative_samples}."
            )
        if self.test_limit is not None and self.test_limit < 1:
            raise ValueError(f"test_limit must be None or >= 1, got {self.test_limit}.")
        if not 0.0 <= self.max_int8_accuracy_drop <= 1.0:
            raise ValueError(
                f"max_int8_accuracy_drop must be in [0, 1], got {self.max_int8_accuracy_drop}."
            )
        if self.benchmark_runs < 0 or self.benchmark_warmup < 0:
            raise ValueError("benchmark_runs and benchmark_warmup must be >= 0.")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}.")
        if self.tflite_metadata not in TFLITE_METADATA_MODES:
            raise ValueError(f"tflite_metadata must be one of {TFLITE_METADATA_MODES}, "
                             f"got {self.tflite_metadata!r}.")
        if not 0.0 <= self.min_mediapipe_agreement <= 1.0:
            raise ValueError(
                f"min_mediapipe_agreement must be in [0, 1], got {self.min_mediapipe_agreement}.")

    @property
    def resolved_branch_request(self):
        """`"main"` or `"branch_k"`, before checking that the model has it."""
        if self.branch in (None, "main"):
            return "main"
        return self.branch if self.branch.startswith("branch_") else f"branch_{self.branch}"

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["formats"] = list(self.formats)
        return values

    @classmethod
    def from_dict(cls, values):
        return dataclass_from_dict(cls, values)


@dataclasses.dataclass
class ExportResult:
    """Where the files went and what the checks found (`manifest` is manifest.json)."""

    output_dir: str
    files: dict
    manifest: dict

    @property
    def ok(self):
        return self.manifest["ok"]

    @property
    def failed_checks(self):
        return Checks(self.manifest["checks"]).failed


def _quiet(progress):
    return progress if progress is not None else (lambda message: None)


def resolve_branch(model, branch=None):
    """`"main"` or the `"branch_k"` of `model` that `branch` (None, "main", k, "k", "branch_k") names."""
    request = ExportConfig(branch=None if branch is None else str(branch)).resolved_branch_request
    if request not in model.branch_names:
        exits = model.branch_names[1:]
        available = (
            f"its early exits are {', '.join(exits)} (1 = shallowest)"
            if exits
            else "it has no early exits (trained in mode 'plain')"
        )
        raise ValueError(f"Unknown branch {branch!r}: this model has 'main' and {available}.")
    return request


def deployable_model(model, branch=None):
    """The plain `keras.Model(image -> logits)` to export: the main branch or one early exit."""
    branch = resolve_branch(model, branch)
    if branch == "main":
        return model.main_model(name="main_branch")
    return model.branch_model(branch, name=branch)


def foreign_names(model, branch):
    """Names that must not appear in the export of `branch`: other branches, the discriminator."""
    names = [b for b in model.branch_names[1:] if b != branch] + ["discriminator"]
    if branch != "main":
        names += ["main_logits", "main_pool"]
    return names


def _foreign_pattern(names):
    # "branch_1" must not match inside "main_branch_1" (the exported model's own name) or "branch_10".
    return re.compile("|".join(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![0-9])" for n in names))


def _count_flops(keras_model):
    """FLOPs per image by `mbakt_tf.flops`, or None where the counter cannot walk the model."""
    from mbakt_tf import flops

    try:
        return flops.count_flops(keras_model)
    except Exception:  # noqa: BLE001 - a cost figure must not stop an export
        return None


# --------------------------------------------------------------------- metrics


def parity(reference, candidate):
    """Max |logit| and |probability| differences and top-1 agreement of two output dicts."""
    logits, other = reference["logits"], candidate["logits"]
    return {
        "max_abs_logit_diff": float(np.max(np.abs(logits - other))),
        "max_abs_probability_diff": float(
            np.max(np.abs(reference["probabilities"] - candidate["probabilities"]))
        ),
        "top1_agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(other, -1))),
    }


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _accuracy(outputs, labels, ignore_label=None):
    """Top-1 accuracy; per pixel for label maps, pixels labelled `ignore_label` left out."""
    correct = np.argmax(outputs["logits"], -1) == labels
    if ignore_label is not None:
        correct = correct[labels != ignore_label]
    return float(np.mean(correct)) if correct.size else 0.0


def _figures(outputs, labels, ignore_label=None):
    """Accuracy, and mIoU for label maps (segmentation)."""
    figures = {"accuracy": _accuracy(outputs, labels, ignore_label)}
    if np.ndim(labels) == 3:
        from mbakt_tf.segmentation import mean_iou

        logits = outputs["logits"]
        figures["miou"] = mean_iou(labels, np.argmax(logits, -1), logits.shape[-1])
    return figures


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


# ---------------------------------------------------------------------- export


def export_model(
    model,
    output_dir,
    representative_images,
    test_images,
    test_labels,
    class_names=None,
    config=None,
    source=None,
    progress=None,
):
    """Exports an `MBAKT` model's main branch (or one early exit) and checks the result.

    Args:
        model: a trained `mbakt_tf.MBAKT`.
        output_dir: folder for the files (created; files of an earlier export
            there are replaced).
        representative_images: float32 (N, H, W, C) training images in [0, 255]
            for int8 calibration; the first `config.representative_samples`
            are used.
        test_images, test_labels: held-out images (float32 [0, 255]) and int
            labels: parity and accuracy of every format are measured on them
            (the first `config.test_limit`).
        class_names: written to labels.txt (default `class_0...`).
        config: an `ExportConfig`.
        source: a dict recorded as the manifest's "source" (e.g. the model path).
        progress: called with a message before each long step.

    Returns:
        `ExportResult`. The manifest is also written to `output_dir/manifest.json`.

    Raises:
        ValueError: unknown branch, bad config, images of the wrong shape.
        ExportCheckError: `config.strict` and a check failed (files and
            manifest are written first).
        mediapipe_tasks.MediaPipeUnavailableError: `tflite_metadata="require"`
            and no MediaPipe Python (raised before any work).
    """
    config = config or ExportConfig()
    run = _Export(model, output_dir, config, progress)
    run.find_mediapipe()
    representative_images = run.images(representative_images, "representative_images")
    representative_images = representative_images[: config.representative_samples]
    test_images = run.images(test_images, "test_images")
    test_labels = np.asarray(test_labels).astype(np.int64)
    if run.segmentation:  # label maps (N, H, W)
        test_labels = test_labels.reshape(test_labels.shape[:3])
    else:
        test_labels = test_labels.reshape(-1)
    if len(test_labels) != len(test_images):
        raise ValueError(f"{len(test_images)} test images but {len(test_labels)} test labels.")
    if config.test_limit is not None:
        test_images, test_labels = test_images[: config.test_limit], test_labels[: config.test_limit]
    class_names = list(class_names) if class_names is not None else [
        f"class_{i}" for i in range(run.num_classes)]
    if len(class_names) != run.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {run.num_classes} classes.")

    os.makedirs(output_dir, exist_ok=True)
    run.keras_reference(test_images, test_labels)
    saved_model_dir = run.saved_model()
    for fmt in config.formats:
        run.convert(fmt, saved_model_dir, representative_images)
    run.tflite_metadata(class_names)
    for fmt in config.formats:
        run.tflite(fmt)
    run.parity_checks()
    run.benchmark()
    run.labels(class_names)
    result = run.write_manifest(source)
    if config.strict and not result.ok:
        raise ExportCheckError(f"Export to {output_dir} failed checks (see {result.files['manifest']}): "
                               + run.checks.failure_message())
    return result


class _Export:
    """The steps of `export_model`, sharing the reference outputs, checks and manifest parts."""

    def __init__(self, model, output_dir, config, progress):
        self.model, self.output_dir, self.config = model, output_dir, config
        self.say = _quiet(progress)
        self.branch = resolve_branch(model, config.branch)
        self.keras_model = deployable_model(model, self.branch)
        self.input_shape = tuple(int(d) for d in self.keras_model.input.shape[1:])
        if config.rgb_input:
            rgb_input.check_channels(self.input_shape[-1])
        # What the exported files take: the model's channels, or RGB with rgb_input.
        self.file_input_shape = (*self.input_shape[:-1], rgb_input.RGB_CHANNELS) if config.rgb_input \
            else self.input_shape
        self.num_classes = int(self.keras_model.output.shape[-1])
        self.segmentation = len(self.keras_model.output.shape) == 4  # (batch, H, W, classes)
        self.ignore_label = getattr(model, "ignore_label", None)
        self.forbidden = foreign_names(model, self.branch)
        self.pattern = _foreign_pattern(self.forbidden)
        self.checks = Checks()
        self.files, self.docs, self.lite_models = {}, {}, {}
        self.latency = None
        self.mediapipe_python, self.mediapipe, self.mediapipe_outputs = None, None, {}

    def images(self, images, name):
        return check_images(images, self.input_shape, name)

    def _output_shape(self):
        dims = ["batch", *(str(d) for d in self.keras_model.output.shape[1:-1]), str(self.num_classes)]
        return "(" + ", ".join(dims) + ")"

    def _outputs_figures(self, outputs):
        return {**_figures(outputs, self.test_labels, self.ignore_label), **parity(self.reference, outputs)}

    def file_images(self, images):
        """Images in the model's channels as the exported files take them (RGB with rgb_input)."""
        return rgb_input.to_rgb(images) if self.config.rgb_input else images

    def keras_reference(self, test_images, test_labels):
        self.test_images, self.test_labels = test_images, test_labels
        self.test_file_images = self.file_images(test_images)
        self.say(f"Keras reference: {self.branch} on {len(test_images)} held-out images")
        logits = self.keras_model.predict(test_images, batch_size=256, verbose=0).astype(np.float32)
        self.reference = {"logits": logits, "probabilities": _softmax(logits)}
        main = self.model.main_model()
        discriminator = self.model.discriminator
        self.cost = {
            "branch": self.branch,
            "parameters": int(self.keras_model.count_params()),
            "flops_per_image": _count_flops(self.keras_model),
            "main_branch_parameters": int(main.count_params()),
            "main_branch_flops_per_image": _count_flops(main),
            "training_network_parameters": int(self.model.network.count_params()),
            "discriminator_parameters": int(discriminator.count_params()) if discriminator else 0,
        }
        self.evaluation = {
            "split": "test",
            "images": int(len(test_images)),
            "keras": _figures(self.reference, test_labels, self.ignore_label),
        }

    def saved_model(self):
        """Writes the SavedModel, reloads it in a fresh process, checks its variables."""
        path = os.path.join(self.output_dir, SAVED_MODEL_DIR)
        self.say(f"SavedModel -> {path}")
        serving_model = rgb_input.with_rgb_input(self.keras_model) if self.config.rgb_input \
            else self.keras_model
        write_saved_model(serving_model, path)
        self.files["saved_model"] = path
        self.say("SavedModel: reloading with tf.saved_model.load in a fresh process (no mbakt_tf)")
        outputs, facts = probe_saved_model(path, self.test_file_images)
        self.evaluation["saved_model"] = self._outputs_figures(outputs)
        params, main_params = self.cost["parameters"], self.cost["main_branch_parameters"]
        add = self.checks.add
        add("saved_model_fresh_process_without_mbakt_tf", not facts["mbakt_tf_imported"],
            f"mbakt_tf imported: {facts['mbakt_tf_imported']}, keras imported: {facts['keras_imported']}")
        add("saved_model_parameters_equal_keras", facts["parameter_count"] == params,
            f"SavedModel {facts['parameter_count']:,} vs Keras {self.branch} {params:,}")
        if self.branch == "main":
            add("saved_model_parameters_equal_main_model", facts["parameter_count"] == main_params,
                f"SavedModel {facts['parameter_count']:,} vs main_model() {main_params:,}")
        variables = len(self.keras_model.variables)
        add("saved_model_variable_count_equal_keras", facts["variable_count"] == variables,
            f"SavedModel {facts['variable_count']} vs Keras {variables} variables")
        leaked = [n for n in facts["variable_names"] if self.pattern.search(n)]
        add("saved_model_no_foreign_variables", not leaked,
            f"none of {self.forbidden}" if not leaked else f"found {leaked[:5]}")
        self.docs["saved_model"] = {
            "path": SAVED_MODEL_DIR,
            "bytes": _dir_bytes(path),
            "signature": SIGNATURE_KEY,
            "input": facts["input"],
            "outputs": facts["outputs"],
            "variable_count": facts["variable_count"],
            "parameter_count": facts["parameter_count"],
            "reloaded_without": ["mbakt_tf"] + ([] if facts["keras_imported"] else ["keras"]),
        }
        return path

    def convert(self, fmt, saved_model_dir, representative_images):
        """Converts one TFLite variant to `model_<fmt>.tflite`."""
        path = os.path.join(self.output_dir, f"model_{fmt}.tflite")
        calibration = f" (calibrating on {len(representative_images)} training images)"
        self.say(f"TFLite {fmt}: converting" + (calibration if fmt == "int8" else ""))
        representative_images = self.file_images(representative_images) if fmt == "int8" else None
        with open(path, "wb") as f:
            f.write(convert_tflite(saved_model_dir, fmt, representative_images, self.config.int8_io))
        self.files[fmt] = path

    def tflite(self, fmt):
        """Runs one TFLite file (as written, metadata included) in LiteRT; checks its ops, tensors,
        dtypes, and MediaPipe's agreement with LiteRT."""
        path = self.files[fmt]
        structure = tflite_structure(path)
        self.say(f"TFLite {fmt}: running {len(self.test_images)} images in LiteRT")
        lite = self.lite_models[fmt] = LiteRTModel(path, num_threads=self.config.num_threads)
        outputs = lite.predict(self.test_file_images)
        self.evaluation[fmt] = self._outputs_figures(outputs)
        self.docs[fmt] = {
            "path": os.path.basename(path),
            "bytes": os.path.getsize(path),
            **{key: structure[key] for key in ("input", "outputs", "ops", "tensor_dtypes")},
        }
        self._metadata_doc(fmt)
        self._mediapipe_agreement(fmt, structure, lite, outputs)
        add, ops = self.checks.add, structure["ops"]
        non_builtin = non_builtin_ops(ops)
        add(f"{fmt}_builtin_ops_only", not non_builtin,
            f"ops {sorted(ops)}" if not non_builtin else f"non-builtin ops {non_builtin}")
        leaked = [n for n in structure["tensor_names"] if self.pattern.search(n)]
        add(f"{fmt}_no_foreign_tensors", not leaked,
            f"none of {self.forbidden}" if not leaked else f"found {leaked[:3]}")
        expected = expected_weight_ops(self.keras_model)
        found = {op: ops.get(op, 0) for op in expected}
        add(f"{fmt}_weight_op_counts_equal_keras", found == expected,
            f"TFLite {found} vs Keras layers {expected}")
        if fmt == "int8":
            dtypes = structure["tensor_dtypes"]
            io_dtypes = {structure["input"]["dtype"]} | {o["dtype"] for o in structure["outputs"]}
            add("int8_io_dtype", io_dtypes == {self.config.int8_io},
                f"input/output dtypes {sorted(io_dtypes)}, wanted {self.config.int8_io}")
            floats = dtypes.get("float32", 0) + dtypes.get("float16", 0)
            add("int8_no_float_tensors", floats == 0 and dtypes.get("int8", 0) > 0,
                f"tensor dtypes {dtypes}")

    # ------------------------------------------------ TFLite Metadata, MediaPipe Tasks

    def find_mediapipe(self):
        """The MediaPipe Python, before any work; `None` (and the reason kept) when there is none."""
        mode = self.config.tflite_metadata
        self.mediapipe_reason = None
        if mode == "off" or not self.config.formats:
            self.mediapipe_reason = ("tflite_metadata='off'" if mode == "off"
                                     else "no TFLite file requested")
            return None
        try:
            self.mediapipe_python = mediapipe_tasks.mediapipe_python(self.config.mediapipe_python)
        except mediapipe_tasks.MediaPipeUnavailableError as error:
            if mode == "require":
                raise
            self.mediapipe_reason = f"not written (tflite_metadata='auto'): {error}"
            self.say(f"TFLite Metadata: {self.mediapipe_reason}")
        return self.mediapipe_python

    def tflite_metadata(self, class_names):
        """Writes TFLite Metadata into every TFLite file and runs each in MediaPipe Tasks (one process)."""
        if self.mediapipe_python is None:
            return
        task = "segmenter" if self.segmentation else "classifier"
        # MediaPipe takes uint8 images: LiteRT is compared on the same ones.
        self.mediapipe_images = np.clip(np.round(self.test_file_images), 0, 255).astype(np.uint8)
        h, w, c = self.file_input_shape
        specs = [{"key": fmt, "path": self.files[fmt], "task": task, "labels": list(class_names),
                  "model_name": self.keras_model.name,
                  "description": f"mbakt_tf {self.branch} ({task}): {h}x{w}x{c} raw pixels in [0, 255]"}
                 for fmt in self.config.formats]
        api = mediapipe_tasks.TASK_API[task]
        self.say(f"TFLite Metadata: labels, normalisation (mean 0, std 1), image type into "
                 f"{len(specs)} file(s); MediaPipe Tasks {api} on {len(self.mediapipe_images)} images")
        try:
            self.mediapipe = mediapipe_tasks.embed_and_run(specs, self.mediapipe_images,
                                                           python=self.mediapipe_python)
        except RuntimeError as error:  # the files are as converted: say so, fail the check
            self.mediapipe_reason = f"the MediaPipe process failed: {error}"
            self.checks.add("tflite_metadata_written", False, self.mediapipe_reason[-300:])
            return
        self.class_names = [str(n) for n in class_names]

    def _metadata_doc(self, fmt):
        if self.mediapipe is None:
            self.docs[fmt]["tflite_metadata"] = {"written": False, "reason": self.mediapipe_reason}
            return
        written = self.mediapipe["files"][fmt]["metadata"]
        if not written["written"]:
            self.docs[fmt]["tflite_metadata"] = {"written": False, "reason": written["error"]}
            self.checks.add(f"{fmt}_tflite_metadata", False, f"not written: {written['error']}")
            return
        subgraph = written["json"]["subgraph_metadata"][0]
        image = subgraph["input_tensor_metadata"][0]
        normalization = image["process_units"][0]["options"]
        self.docs[fmt]["tflite_metadata"] = {
            "written": True,
            "bytes_added": written["bytes_added"],
            "min_parser_version": written["json"].get("min_parser_version"),
            "input": {"color_space": image["content"]["content_properties"].get("color_space"),
                      "normalization": normalization},
            "outputs": [o["name"] for o in subgraph["output_tensor_metadata"]],
            "associated_files": written["associated_files"],
            "labels": f"{mediapipe_tasks.LABELS_FILE} packed in the file, {len(written['labels'] or [])} lines",
        }
        ok = (written["labels"] == self.class_names and normalization == {"mean": [0.0], "std": [1.0]}
              and written["outputs"] == [o["name"] for o in subgraph["output_tensor_metadata"]])
        self.checks.add(f"{fmt}_tflite_metadata", ok,
                        f"read back: {len(written['labels'] or [])} labels "
                        f"{'equal' if written['labels'] == self.class_names else 'differ from'} the class "
                        f"names, normalisation {normalization}, outputs {written['outputs']}")

    def _mediapipe_hint(self, structure):
        """What would make MediaPipe Tasks run this file (every fix that applies), or None."""
        fixes = []
        if self.file_input_shape[-1] != rgb_input.RGB_CHANNELS:
            fixes.append("MediaPipe Tasks take RGB images: export with rgb_input=True (--rgb_input)")
        if structure["input"]["dtype"] == "int8":
            fixes.append("MediaPipe Tasks take uint8 or float32 input: export with int8_io='uint8' "
                         "(--int8_io=uint8)")
        return "; ".join(fixes) or None

    def _mediapipe_agreement(self, fmt, structure, lite, outputs):
        """MediaPipe's classes (per pixel for a segmenter) against LiteRT's on the same uint8 images."""
        if self.mediapipe is None or not self.mediapipe["files"][fmt]["metadata"]["written"]:
            return
        doc = self.mediapipe["files"][fmt]
        tasks = doc["tasks"]
        if not tasks["ran"]:
            self.evaluation[fmt]["mediapipe"] = {"api": tasks["api"], "ran": False, "reason": tasks["error"],
                                                 "hint": self._mediapipe_hint(structure)}
            return
        if not np.array_equal(self.mediapipe_images, self.test_file_images):
            outputs = lite.predict(self.mediapipe_images)  # LiteRT on MediaPipe's uint8 images
        figures = {"api": tasks["api"], "ran": True, "images": tasks["images"],
                   "mediapipe_version": self.mediapipe["versions"]["mediapipe"]}
        if self.segmentation:
            # MediaPipe's category mask is the argmax of the output its metadata names the mask.
            mask_output = self.docs[fmt]["tflite_metadata"]["outputs"][
                mediapipe_tasks.SEGMENTER_MASK_POSITION if len(outputs) == 2 else 0]
            figures.update(output=mask_output, **mediapipe_tasks.segmenter_agreement(
                doc["outputs"]["category_mask"], outputs[mask_output]))
            agreement = figures["pixel_agreement"]
        else:
            figures["heads"] = {
                head: mediapipe_tasks.classifier_agreement(
                    doc["outputs"][f"{head}_index"], doc["outputs"][f"{head}_score"], outputs[head])
                for head in outputs}
            agreement = min(h["top1_agreement"] for h in figures["heads"].values())
            figures["top1_agreement"] = agreement
        self.evaluation[fmt]["mediapipe"] = figures
        limit = self.config.min_mediapipe_agreement
        unit = "pixels" if self.segmentation else "images"
        self.checks.add(f"{fmt}_mediapipe_agrees_with_litert", agreement >= limit,
                        f"{tasks['api']}: {agreement:.4f} of {tasks['images']} {unit} >= {limit}")

    def mediapipe_summary(self):
        """The manifest's "mediapipe" part: versions, images, and per file agreement or reason."""
        summary = {"tflite_metadata": self.config.tflite_metadata,
                   "written": self.mediapipe is not None}
        if self.mediapipe is None:
            summary["reason"] = self.mediapipe_reason
            return summary
        task = "segmenter" if self.segmentation else "classifier"
        summary.update(
            mediapipe_version=self.mediapipe["versions"]["mediapipe"],
            python=self.mediapipe["versions"]["python"],
            api=mediapipe_tasks.TASK_API[task],
            images=int(len(self.mediapipe_images)),
            normalization={"mean": mediapipe_tasks.NORM_MEAN, "std": mediapipe_tasks.NORM_STD},
            agreement_measure=("pixels" if self.segmentation else "images")
            + " whose MediaPipe class has LiteRT's highest score on the same file and uint8 image "
              "(a tie counts)",
        )
        for fmt in self.config.formats:
            figures = self.evaluation.get(fmt, {}).get("mediapipe")
            if figures is None:
                summary[fmt] = {"ran": False, "reason": self.docs.get(fmt, {}).get("tflite_metadata")}
            elif figures["ran"]:
                summary[fmt] = {"ran": True, "agreement": figures.get("top1_agreement",
                                                                      figures.get("pixel_agreement"))}
            else:
                summary[fmt] = {"ran": False, "reason": figures["reason"], "hint": figures["hint"]}
        return summary

    def parity_checks(self):
        """Every format against `PARITY_TOLERANCES`; int8 accuracy drop against the config."""
        scale = float(np.max(np.abs(self.reference["logits"])))
        for fmt in ["saved_model", *self.config.formats]:
            tolerance, figures = PARITY_TOLERANCES[fmt], self.evaluation[fmt]
            if tolerance["atol"] is not None:
                bound = tolerance["atol"] + tolerance["rtol"] * scale
                self.checks.add(f"{fmt}_logit_parity", figures["max_abs_logit_diff"] <= bound,
                                f"max |logit diff| {figures['max_abs_logit_diff']:.3g} <= {bound:.3g}")
            self.checks.add(f"{fmt}_top1_agreement", figures["top1_agreement"] >= tolerance["min_top1"],
                            f"{figures['top1_agreement']:.4f} >= {tolerance['min_top1']}")
        self.int8_drop = None
        if "int8" in self.config.formats:
            self.int8_drop = self.evaluation["keras"]["accuracy"] - self.evaluation["int8"]["accuracy"]
            limit = self.config.max_int8_accuracy_drop
            self.checks.add("int8_accuracy_drop", self.int8_drop <= limit,
                            f"{100 * self.int8_drop:.2f} points <= {100 * limit:.2f}")

    def benchmark(self):
        """LiteRT latency of every TFLite file (batch 1), and int8 over float32."""
        config = self.config
        if config.benchmark_runs == 0 or not self.lite_models:
            return
        self.say(f"LiteRT latency: {config.benchmark_runs} timed runs per file after "
                 f"{config.benchmark_warmup} warm-up, {config.num_threads} thread(s), batch 1")
        latency = {"num_threads": config.num_threads, "batch": 1,
                   "interpreter": "ai_edge_litert, default op resolver (XNNPACK delegate)"}
        for fmt, lite in self.lite_models.items():
            latency[fmt] = lite.benchmark(config.benchmark_runs, config.benchmark_warmup)
        if "int8" in latency and "float32" in latency:
            latency["int8_over_float32"] = latency["int8"]["median_ms"] / latency["float32"]["median_ms"]
        self.latency = latency

    def labels(self, class_names):
        path = os.path.join(self.output_dir, LABELS)
        with open(path, "w") as f:
            f.write("\n".join(str(n) for n in class_names) + "\n")
        self.files["labels"] = path

    def write_manifest(self, source):
        import tensorflow as tf

        from mbakt_tf import __version__

        formats = ["saved_model", *self.config.formats]
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "mbakt_tf_version": __version__,
            "tensorflow_version": tf.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": dict(source or {}),
            "export_config": self.config.to_dict(),
            "model": self.cost,
            "input": {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": [None, *self.file_input_shape],
                "layout": "NHWC",
                "value_range": [0, 255],
                "preprocessing": "none: raw pixel values; rescaling to [0, 1] is the graph's first layer",
                "rgb_input": (
                    None if not self.config.rgb_input
                    else "RGB; the model takes it as it is" if self.input_shape[-1] == 3
                    else f"RGB, converted in the graph to the model's 1 channel: {rgb_input.CONVERSION}"
                ),
                "int8_file": _int8_input_doc(self.docs.get("int8")),
            },
            "outputs": {
                "logits": f"float32 {self._output_shape()}: unnormalized class scores",
                "probabilities": f"float32 {self._output_shape()}: softmax(logits) over the last axis",
                "class_of_index": f"line i of {LABELS}",
            },
            "num_classes": self.num_classes,
            "labels": LABELS,
            "files": self.docs,
            "evaluation": self.evaluation,
            "int8_accuracy_drop": self.int8_drop,
            "parity_tolerances": {fmt: PARITY_TOLERANCES[fmt] for fmt in formats},
            "latency": self.latency,
            "mediapipe": self.mediapipe_summary(),
            "checks": self.checks.items,
            "ok": self.checks.ok,
        }
        path = os.path.join(self.output_dir, MANIFEST)
        with open(path, "w") as f:
            json.dump(manifest, f, indent=2)
        self.files["manifest"] = path
        return ExportResult(output_dir=self.output_dir, files=self.files, manifest=manifest)


def _int8_input_doc(doc):
    if doc is None:
        return None
    quant, dtype = doc["input"]["quantization"], doc["input"]["dtype"]
    if quant["scale"] == 1.0 and quant["zero_point"] == 0:
        meaning = "the pixel values themselves (0..255)"
    elif quant["scale"] == 1.0 and quant["zero_point"] == -128:
        meaning = "pixel - 128"
    else:
        meaning = f"round(pixel / {quant['scale']:.6g}) + {quant['zero_point']}"
    return f"{dtype} input = {meaning} (scale {quant['scale']:.6g}, zero point {quant['zero_point']})"


# ------------------------------------------------------------------ from a file


def default_output_dir(model_path, branch="main"):
    """`saved_models/<run>_export` (`..._export_branch_k` for an early exit) beside the run folder."""
    return saved_runs.sibling_dir(model_path, "_export" if branch == "main" else f"_export_{branch}")


def export_from_file(
    model_path,
    output_dir=None,
    config=None,
    dataset=None,
    data_dir=None,
    image_size=None,
    progress=None,
):
    """Loads a saved MBAKT model and its run's data, then `export_model`.

    The dataset, its folder, image size, synthetic settings and validation
    carve default to those in the run's results.json; the representative
    images come from the training split (no augmentation), parity and
    accuracy from the test split.

    Args:
        model_path: a `.keras` MBAKT file or its run folder.
        output_dir: default `default_output_dir(model_path, branch)`.
        config: an `ExportConfig`.
        dataset, data_dir, image_size: override the recorded ones.
        progress: called with a message before each long step.

    Raises:
        ModelFileNotFoundError, NotMBAKTModelError: see `saved_runs.load_mbakt_model`.
        ValueError: unknown branch; no dataset recorded nor given.
        ExportCheckError: see `export_model`.
    """
    config = config or ExportConfig()
    say = _quiet(progress)
    model_path = resolve_model_path(model_path)
    say(f"Loading {model_path}")
    model = load_mbakt_model(model_path)
    branch = resolve_branch(model, config.branch)
    output_dir = output_dir or default_output_dir(model_path, branch)
    if saved_runs.is_segmenter(model) and config.test_limit is None:
        config = dataclasses.replace(config, test_limit=SEGMENTATION_TEST_LIMIT)
    say("Loading the run's data (training images for calibration, test images for parity)")
    splits = saved_runs.load_run_splits(
        model, model_path, dataset=dataset, data_dir=data_dir, image_size=image_size,
        batch_size=256, augment=False, test_limit=config.test_limit,
    )
    representative, _ = saved_runs.take_images(splits.train, config.representative_samples)
    test_images, test_labels = saved_runs.take_images(splits.test)
    return export_model(
        model,
        output_dir,
        representative_images=representative,
        test_images=test_images,
        test_labels=test_labels,
        class_names=splits.info.class_names,
        config=config,
        source=saved_runs.provenance(model, model_path, splits, head=branch),
        progress=progress,
    )


def format_report(manifest):
    """A plain-text summary of a manifest: sizes, parity, accuracy, latency, checks."""
    evaluation = manifest["evaluation"]
    model = manifest["model"]
    lines = [
        f"Exported {model['branch']}: {model['parameters']:,} parameters, "
        f"{_count(model['flops_per_image'])} FLOPs/image (main branch: {model['main_branch_parameters']:,}, "
        f"{_count(model['main_branch_flops_per_image'])}; training network "
        f"{model['training_network_parameters']:,} + discriminator {model['discriminator_parameters']:,})",
        f"Parity and accuracy on {evaluation['images']} held-out test images "
        f"(Keras accuracy {100 * evaluation['keras']['accuracy']:.2f}%"
        + (f", mIoU {100 * evaluation['keras']['miou']:.2f}%" if "miou" in evaluation["keras"] else "")
        + "):",
    ]
    segmentation = "miou" in evaluation["keras"]  # accuracy and agreement are per pixel
    rows = [("format", "file", "size", "accuracy / mIoU" if segmentation else "accuracy", "max|dlogit|",
             "top-1 agree", "latency")]
    latency = manifest.get("latency") or {}
    for fmt, doc in manifest["files"].items():
        figures = evaluation[fmt]
        lat = latency.get(fmt)
        rows.append((
            fmt,
            doc["path"] + ("/" if fmt == "saved_model" else ""),
            format_size(doc["bytes"]),
            f"{100 * figures['accuracy']:.2f}%"
            + (f" / {100 * figures['miou']:.2f}%" if segmentation else ""),
            f"{figures['max_abs_logit_diff']:.2g}",
            f"{100 * figures['top1_agreement']:.2f}%",
            "-" if lat is None else f"{lat['median_ms']:.3f} ms",
        ))
    lines.append(text_table(rows))
    if manifest.get("int8_accuracy_drop") is not None:
        lines.append(f"int8 accuracy drop vs Keras float: {100 * manifest['int8_accuracy_drop']:.2f} points")
    if latency.get("int8_over_float32") is not None:
        lines.append(
            f"LiteRT latency int8 / float32 (median of {latency['int8']['runs']} runs, batch 1, "
            f"{latency['num_threads']} thread): {latency['int8_over_float32']:.2f}"
        )
    lines.extend(_mediapipe_lines(manifest.get("mediapipe")))
    lines.append(Checks(manifest["checks"]).summary())
    return "\n".join(lines)


def _mediapipe_lines(summary):
    if not summary:
        return []
    if not summary["written"]:
        return [f"TFLite Metadata / MediaPipe: {summary['reason']}"]
    unit = "per-pixel" if summary["api"] == "ImageSegmenter" else "top-1"
    lines = [f"MediaPipe {summary['mediapipe_version']} {summary['api']} vs LiteRT ({unit} agreement, "
             f"{summary['images']} images; TFLite Metadata in every file):"]
    for fmt, figures in summary.items():
        if isinstance(figures, dict) and "ran" in figures:
            lines.append(f"  {fmt}: " + (f"{100 * figures['agreement']:.2f}%" if figures["ran"] else
                                         f"not run: {figures.get('hint') or figures['reason']}"))
    return lines


def _count(value):
    return "n/a" if value is None else f"{value:,}"
