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
import os
import re
import time

import numpy as np

from mbakt_tf import atomic, saved_runs
from mbakt_tf.checks import Checks
from mbakt_tf.export import rgb_input
from mbakt_tf.export.config import PARITY_TOLERANCES, SEGMENTATION_TEST_LIMIT, ExportConfig
from mbakt_tf.export.mediapipe_steps import MediaPipeSteps
from mbakt_tf.export.serving import INPUT_NAME, SIGNATURE_KEY, check_images, probe_saved_model, write_saved_model
from mbakt_tf.export.tflite import (
    LiteRTModel,
    convert_tflite,
    expected_weight_ops,
    structure_checks,
    tflite_structure,
    write_tflite,
)
from mbakt_tf.saved_runs import load_mbakt_model, resolve_model_path

SAVED_MODEL_DIR = "saved_model"
MANIFEST = "manifest.json"
LABELS = "labels.txt"
MANIFEST_VERSION = 1


class ExportCheckError(RuntimeError):
    """The files were written but a parity or verification check failed (see the manifest)."""


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
    return ExportConfig(branch=None if branch is None else str(branch)).branch_of(model.branch_names)


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


class _Export(MediaPipeSteps):
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
        """Writes the SavedModel, reloads it (in a fresh process unless fresh_process_check=False), checks it."""
        path = os.path.join(self.output_dir, SAVED_MODEL_DIR)
        self.say(f"SavedModel -> {path}")
        serving_model = rgb_input.with_rgb_input(self.keras_model) if self.config.rgb_input \
            else self.keras_model
        write_saved_model(serving_model, path)
        self.files["saved_model"] = path
        fresh = self.config.fresh_process_check
        self.say("SavedModel: reloading with tf.saved_model.load "
                 + ("in a fresh process (no mbakt_tf)" if fresh else "in this process (fresh_process_check=False)"))
        outputs, facts = probe_saved_model(path, self.test_file_images, fresh_process=fresh)
        self.evaluation["saved_model"] = self._outputs_figures(outputs)
        params, main_params = self.cost["parameters"], self.cost["main_branch_parameters"]
        add = self.checks.add
        if fresh:
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
            "reloaded_in": "a fresh process" if fresh else "the exporting process",
            "reloaded_without": (["mbakt_tf"] + ([] if facts["keras_imported"] else ["keras"])) if fresh else [],
        }
        return path

    def convert(self, fmt, saved_model_dir, representative_images):
        """Converts one TFLite variant to `model_<fmt>.tflite`."""
        path = os.path.join(self.output_dir, f"model_{fmt}.tflite")
        calibration = f" (calibrating on {len(representative_images)} training images)"
        self.say(f"TFLite {fmt}: converting" + (calibration if fmt == "int8" else ""))
        representative_images = self.file_images(representative_images) if fmt == "int8" else None
        write_tflite(path, convert_tflite(saved_model_dir, fmt, representative_images, self.config.int8_io))
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
        for name, passed, detail in structure_checks(
                structure, int8_io=self.config.int8_io if fmt == "int8" else None,
                expected_ops=expected_weight_ops(self.keras_model),
                foreign_pattern=self.pattern, foreign_names=self.forbidden):
            self.checks.add(f"{fmt}_{name}", passed, detail)

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
        atomic.write_text(path, "\n".join(str(n) for n in class_names) + "\n")
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
        atomic.write_json(path, manifest, indent=2)
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
