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
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from typing import Optional, Tuple

import numpy as np

from mbakt_tf.config import dataclass_from_dict

TFLITE_FORMATS = ("float32", "float16", "dynamic_range", "int8")
INT8_IO_TYPES = ("int8", "uint8")
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
SAVED_MODEL_DIR = "saved_model"
MANIFEST = "manifest.json"
LABELS = "labels.txt"
MANIFEST_VERSION = 1
MBAKT_CLASSES = ("MBAKT", "MBAKTSegmenter")
# Segmentation outputs are maps (H x W x classes per image): parity runs on at
# most this many test images unless ExportConfig.test_limit says otherwise.
SEGMENTATION_TEST_LIMIT = 1000

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


class ModelFileNotFoundError(FileNotFoundError):
    """No saved model where the caller said."""


class NotMBAKTModelError(ValueError):
    """The file exists but does not hold an `MBAKT` model."""


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
        return [c for c in self.manifest["checks"] if not c["passed"]]


def _quiet(progress):
    return progress if progress is not None else (lambda message: None)


# --------------------------------------------------------------------- loading


def resolve_model_path(path):
    """A `.keras` path from a file or a run folder (which must hold `model.keras`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise ModelFileNotFoundError(
            f"No saved model at {path!r}: pass a run's model.keras or its run folder "
            "(e.g. saved_models/quickstart)."
        )
    return path


def _saved_class(path):
    """(class_name, registered_name, name) from a .keras archive's config, without loading it."""
    if not zipfile.is_zipfile(path):
        raise NotMBAKTModelError(
            f"{path} is not a Keras .keras archive (a zip file): save the model with "
            "model.save('....keras')."
        )
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            raise NotMBAKTModelError(f"{path} is a zip file but not a Keras .keras archive (no config.json).")
        config = json.loads(archive.read("config.json"))
    return config.get("class_name"), config.get("registered_name"), config.get("config", {}).get("name")


def load_mbakt_model(path):
    """Loads an `MBAKT` model from a `.keras` file or a run folder, with clear errors.

    Raises:
        ModelFileNotFoundError: nothing at `path`.
        NotMBAKTModelError: not a .keras archive, or it holds another kind of
            model (e.g. `main_branch.keras`, the main branch alone).
    """
    import keras

    from mbakt_tf.model import MBAKT

    path = resolve_model_path(path)
    class_name, registered, name = _saved_class(path)
    if class_name not in MBAKT_CLASSES and registered not in {f"mbakt_tf>{c}" for c in MBAKT_CLASSES}:
        hint = (
            " main_branch.keras is the main branch alone; export from the run's model.keras."
            if os.path.basename(path) == "main_branch.keras"
            else ""
        )
        raise NotMBAKTModelError(
            f"{path} holds a {class_name} model ({name!r}), not an MBAKT model: export needs the "
            f"whole MBAKT model to know its branches.{hint}"
        )
    try:
        model = keras.models.load_model(path)
    except Exception as error:  # noqa: BLE001 - any loader failure means "not loadable here"
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise NotMBAKTModelError(f"{path} could not be loaded as an MBAKT model: {first_line}") from error
    if not isinstance(model, MBAKT):
        raise NotMBAKTModelError(f"{path} holds a {type(model).__name__}, not an MBAKT model.")
    return model


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


# ------------------------------------------------------------------- SavedModel


def write_saved_model(keras_model, path):
    """Writes `keras_model` as a SavedModel with one `serving_default` signature.

    `keras.export.ExportArchive` tracks only `keras_model`'s variables; the
    endpoint takes `images` float32 (None, H, W, C) raw pixels in [0, 255] and
    returns `{"logits", "probabilities"}`.
    """
    import keras
    import tensorflow as tf

    height, width, channels = (int(d) for d in keras_model.input.shape[1:])
    archive = keras.export.ExportArchive()
    archive.track(keras_model)

    def serve(images):
        logits = keras_model(images, training=False)
        return {OUTPUT_NAMES[0]: logits, OUTPUT_NAMES[1]: tf.nn.softmax(logits, axis=-1)}

    archive.add_endpoint(
        SIGNATURE_KEY,
        serve,
        input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32, name=INPUT_NAME)],
    )
    if os.path.exists(path):
        shutil.rmtree(path)
    archive.write_out(path, verbose=False)
    return path


# Runs in a fresh interpreter: only numpy and TensorFlow, never mbakt_tf (checked).
_SAVED_MODEL_PROBE = r"""
import json, sys
import numpy as np
import tensorflow as tf

saved_model_dir, images_path, outputs_path, signature_key = sys.argv[1:5]
loaded = tf.saved_model.load(saved_model_dir)
serve = loaded.signatures[signature_key]
(input_name, input_spec), = serve.structured_input_signature[1].items()
images = np.load(images_path)
outputs = {}
for start in range(0, len(images), 256):
    batch = serve(**{input_name: tf.constant(images[start:start + 256])})
    for key, value in batch.items():
        outputs.setdefault(key, []).append(value.numpy())
np.savez(outputs_path, **{key: np.concatenate(value) for key, value in outputs.items()})
variables = [(v.name, [int(d) for d in v.shape]) for v in loaded.variables]
facts = {
    "input": {"name": input_name, "dtype": input_spec.dtype.name,
              "shape": [None if d is None else int(d) for d in input_spec.shape]},
    "outputs": {k: {"dtype": s.dtype.name, "shape": [None if d is None else int(d) for d in s.shape]}
                for k, s in serve.structured_outputs.items()},
    "variable_count": len(variables),
    "parameter_count": int(sum(int(np.prod(shape)) for _, shape in variables)),
    "variable_names": [name for name, _ in variables],
    "mbakt_tf_imported": any(m == "mbakt_tf" or m.startswith("mbakt_tf.") for m in sys.modules),
    "keras_imported": "keras" in sys.modules,
    "python": sys.executable,
}
assert not facts["mbakt_tf_imported"], "the SavedModel probe imported mbakt_tf"
print("SAVED_MODEL_FACTS " + json.dumps(facts))
"""


def probe_saved_model(saved_model_dir, images, timeout=600):
    """Runs the SavedModel on `images` in a fresh Python process that never imports mbakt_tf.

    Returns `(outputs, facts)`: outputs `{"logits", "probabilities"}` arrays;
    facts the signature, variable count, parameter count, variable names and
    whether mbakt_tf or keras were imported there (mbakt_tf never is: the
    process asserts it).
    """
    with tempfile.TemporaryDirectory(prefix="mbakt_probe_") as tmp:
        images_path = os.path.join(tmp, "images.npy")
        outputs_path = os.path.join(tmp, "outputs.npz")
        np.save(images_path, np.asarray(images, np.float32))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("PYTHONSTARTUP", None)
        # cwd is a temporary folder and the script is passed inline: nothing imports mbakt_tf.
        process = subprocess.run(
            [sys.executable, "-c", _SAVED_MODEL_PROBE, os.path.abspath(saved_model_dir),
             images_path, outputs_path, SIGNATURE_KEY],
            capture_output=True, text=True, cwd=tmp, env=env, timeout=timeout,
        )
        if process.returncode != 0:
            raise RuntimeError(
                f"Reloading the SavedModel in a fresh process failed:\n{process.stderr[-3000:]}"
            )
        line = [x for x in process.stdout.splitlines() if x.startswith("SAVED_MODEL_FACTS ")][-1]
        facts = json.loads(line[len("SAVED_MODEL_FACTS "):])
        with np.load(outputs_path) as saved:
            outputs = {key: saved[key] for key in saved.files}
    return outputs, facts


# ---------------------------------------------------------------------- TFLite


def representative_dataset(images):
    """Calibration generator for the converter: one `{"images": (1, H, W, C)}` at a time.

    The first image gets one pixel at 0 and one at 255 so that the input's
    quantization range is exactly [0, 255]: scale 1, so the uint8 input is the
    pixel bytes themselves and the int8 input is pixel - 128.
    """
    images = np.array(images, np.float32, copy=True)
    flat = images[0].reshape(-1)
    flat[0], flat[-1] = 0.0, 255.0
    images[0] = flat.reshape(images[0].shape)

    def generate():
        for image in images:
            yield {INPUT_NAME: image[None]}

    return generate


def convert_tflite(saved_model_dir, fmt, representative_images=None, int8_io="int8"):
    """TFLite flatbuffer bytes of the SavedModel's `serving_default` in format `fmt`.

    Builtin ops only (`TFLITE_BUILTINS`, `TFLITE_BUILTINS_INT8` for int8):
    no Flex/SELECT_TF_OPS, which stock Android LiteRT builds lack.
    """
    import tensorflow as tf

    if fmt not in TFLITE_FORMATS:
        raise ValueError(f"Unknown TFLite format {fmt!r}; choose from {list(TFLITE_FORMATS)}.")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE_KEY])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("int8 conversion needs representative_images (training images).")
        if int8_io not in INT8_IO_TYPES:
            raise ValueError(f"int8_io must be one of {INT8_IO_TYPES}, got {int8_io!r}.")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, int8_io)
        converter.inference_output_type = getattr(tf, int8_io)
    with warnings.catch_warnings():
        # The converter's own calibration uses the deprecated tf.lite.Interpreter; not ours to fix.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return converter.convert()


def _litert():
    try:
        from ai_edge_litert import interpreter
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TFLite parity and benchmarks need the LiteRT interpreter: pip install ai-edge-litert"
        ) from error
    return interpreter


def _quantization(detail):
    scale, zero_point = detail["quantization"]
    return {"scale": float(scale), "zero_point": int(zero_point)} if scale else None


def _tensor_doc(detail, name):
    return {
        "name": name,
        "tensor": detail["name"],
        "index": int(detail["index"]),
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(d) for d in detail["shape"]],
        "quantization": _quantization(detail),
    }


class LiteRTModel:
    """One TFLite file in the LiteRT interpreter: float in, dequantized float out.

    Example:
    ```python
    lite = LiteRTModel("saved_models/quickstart_export/model_int8.tflite")
    lite.predict(images)["logits"]     # images float32 (N, H, W, C) in [0, 255]
    ```
    """

    def __init__(self, path, num_threads=1):
        interpreter_lib = _litert()
        self.path = path
        self.interpreter = interpreter_lib.Interpreter(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        self.input = runner.get_input_details()[INPUT_NAME]
        self.outputs = runner.get_output_details()
        self._input_index = self.input["index"]

    def quantize_input(self, images):
        images = np.asarray(images, np.float32)
        dtype = np.dtype(self.input["dtype"])
        quant = _quantization(self.input)
        if quant is None:
            return images.astype(dtype)
        q = np.round(images / quant["scale"] + quant["zero_point"])
        info = np.iinfo(dtype)
        return np.clip(q, info.min, info.max).astype(dtype)

    def predict(self, images):
        """`{"logits", "probabilities"}` float32 arrays for float images (N, H, W, C), one at a time."""
        results = {name: [] for name in self.outputs}
        for image in self.quantize_input(images):
            self.interpreter.set_tensor(self._input_index, image[None])
            self.interpreter.invoke()
            for name, detail in self.outputs.items():
                value = self.interpreter.get_tensor(detail["index"])[0]
                quant = _quantization(detail)
                if quant is not None:
                    value = (value.astype(np.float32) - quant["zero_point"]) * quant["scale"]
                results[name].append(value.astype(np.float32))
        return {name: np.stack(values) for name, values in results.items()}

    def benchmark(self, runs, warmup):
        """Median and other statistics of `runs` timed invocations (ms) after `warmup` untimed ones."""
        shape = self.input["shape"]
        rng = np.random.default_rng(0)
        image = self.quantize_input(rng.uniform(0, 255, size=shape).astype(np.float32))
        self.interpreter.set_tensor(self._input_index, image)
        for _ in range(warmup):
            self.interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append((time.perf_counter() - start) * 1e3)
        times = np.asarray(times)
        return {
            "median_ms": float(np.median(times)),
            "p10_ms": float(np.percentile(times, 10)),
            "p90_ms": float(np.percentile(times, 90)),
            "runs": int(runs),
            "warmup": int(warmup),
        }


def tflite_structure(path):
    """Ops (by name, no delegate), tensor dtype counts, and input/output docs of a TFLite file."""
    interpreter_lib = _litert()
    interpreter = interpreter_lib.Interpreter(
        model_path=path,
        experimental_op_resolver_type=interpreter_lib.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    ops = {}
    for op in interpreter._get_ops_details():  # the only op listing the interpreter offers
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    tensors = interpreter.get_tensor_details()
    dtypes = {}
    for tensor in tensors:
        name = np.dtype(tensor["dtype"]).name
        dtypes[name] = dtypes.get(name, 0) + 1
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    return {
        "ops": dict(sorted(ops.items())),
        "tensor_dtypes": dict(sorted(dtypes.items())),
        "tensor_names": [t["name"] for t in tensors],
        "input": _tensor_doc(runner.get_input_details()[INPUT_NAME], INPUT_NAME),
        "outputs": [_tensor_doc(d, n) for n, d in runner.get_output_details().items()],
    }


def expected_weight_ops(keras_model):
    """TFLite CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED counts a Keras model converts to.

    Counts every conv and dense layer the model holds, nested ones included
    (e.g. the two 1x1 convs inside a keras-cv squeeze-and-excite layer).
    """
    import keras

    counts = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 0, "FULLY_CONNECTED": 0}
    for layer in keras_model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.SeparableConv2D):
            counts["CONV_2D"] += 1
            counts["DEPTHWISE_CONV_2D"] += 1
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            counts["DEPTHWISE_CONV_2D"] += 1
        elif isinstance(layer, keras.layers.Conv2D):
            counts["CONV_2D"] += 1
        elif isinstance(layer, keras.layers.Dense):
            counts["FULLY_CONNECTED"] += 1
    return counts


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


class _Checks:
    def __init__(self):
        self.items = []

    def add(self, name, passed, detail):
        self.items.append({"name": name, "passed": bool(passed), "detail": detail})


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
    """
    config = config or ExportConfig()
    run = _Export(model, output_dir, config, progress)
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
        run.tflite(fmt, saved_model_dir, representative_images)
    run.parity_checks()
    run.benchmark()
    run.labels(class_names)
    result = run.write_manifest(source)
    if config.strict and not result.ok:
        failed = "; ".join(f"{c['name']}: {c['detail']}" for c in result.failed_checks)
        raise ExportCheckError(
            f"Export to {output_dir} failed checks (see {result.files['manifest']}): {failed}")
    return result


class _Export:
    """The steps of `export_model`, sharing the reference outputs, checks and manifest parts."""

    def __init__(self, model, output_dir, config, progress):
        self.model, self.output_dir, self.config = model, output_dir, config
        self.say = _quiet(progress)
        self.branch = resolve_branch(model, config.branch)
        self.keras_model = deployable_model(model, self.branch)
        self.input_shape = tuple(int(d) for d in self.keras_model.input.shape[1:])
        self.num_classes = int(self.keras_model.output.shape[-1])
        self.segmentation = len(self.keras_model.output.shape) == 4  # (batch, H, W, classes)
        self.ignore_label = getattr(model, "ignore_label", None)
        self.forbidden = foreign_names(model, self.branch)
        self.pattern = _foreign_pattern(self.forbidden)
        self.checks = _Checks()
        self.files, self.docs, self.lite_models = {}, {}, {}
        self.latency = None

    def images(self, images, name):
        return _check_images(images, self.input_shape, name)

    def _output_shape(self):
        dims = ["batch", *(str(d) for d in self.keras_model.output.shape[1:-1]), str(self.num_classes)]
        return "(" + ", ".join(dims) + ")"

    def _outputs_figures(self, outputs):
        return {**_figures(outputs, self.test_labels, self.ignore_label), **parity(self.reference, outputs)}

    def keras_reference(self, test_images, test_labels):
        self.test_images, self.test_labels = test_images, test_labels
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
        write_saved_model(self.keras_model, path)
        self.files["saved_model"] = path
        self.say("SavedModel: reloading with tf.saved_model.load in a fresh process (no mbakt_tf)")
        outputs, facts = probe_saved_model(path, self.test_images)
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

    def tflite(self, fmt, saved_model_dir, representative_images):
        """Converts one TFLite variant, runs it in LiteRT, checks its ops, tensors and dtypes."""
        path = os.path.join(self.output_dir, f"model_{fmt}.tflite")
        calibration = f" (calibrating on {len(representative_images)} training images)"
        self.say(f"TFLite {fmt}: converting" + (calibration if fmt == "int8" else ""))
        with open(path, "wb") as f:
            f.write(convert_tflite(saved_model_dir, fmt, representative_images, self.config.int8_io))
        self.files[fmt] = path
        structure = tflite_structure(path)
        self.say(f"TFLite {fmt}: running {len(self.test_images)} images in LiteRT")
        lite = self.lite_models[fmt] = LiteRTModel(path, num_threads=self.config.num_threads)
        self.evaluation[fmt] = self._outputs_figures(lite.predict(self.test_images))
        self.docs[fmt] = {
            "path": os.path.basename(path),
            "bytes": os.path.getsize(path),
            **{key: structure[key] for key in ("input", "outputs", "ops", "tensor_dtypes")},
        }
        add, ops = self.checks.add, structure["ops"]
        non_builtin = [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]
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
                "shape": [None, *self.input_shape],
                "layout": "NHWC",
                "value_range": [0, 255],
                "preprocessing": "none: raw pixel values; rescaling to [0, 1] is the graph's first layer",
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
            "checks": self.checks.items,
            "ok": all(c["passed"] for c in self.checks.items),
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


def _check_images(images, input_shape, name):
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != input_shape:
        expected = ", ".join(map(str, input_shape))
        raise ValueError(f"{name} must have shape (N, {expected}), got {images.shape}.")
    if len(images) == 0:
        raise ValueError(f"{name} is empty.")
    return images


# ------------------------------------------------------------------ from a file


def recorded_run(model_path):
    """The run's results.json beside `model_path` as a dict ({} when there is none)."""
    results = os.path.join(os.path.dirname(os.path.abspath(model_path)), "results.json")
    if not os.path.isfile(results):
        return {}
    with open(results) as f:
        return json.load(f)


def default_output_dir(model_path, branch="main"):
    """`saved_models/<run>_export` (`..._export_branch_k` for an early exit) beside the run folder."""
    run_dir = os.path.dirname(os.path.abspath(model_path))
    suffix = "_export" if branch == "main" else f"_export_{branch}"
    path = os.path.join(os.path.dirname(run_dir), os.path.basename(run_dir) + suffix)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _take_images(dataset, limit=None):
    images, labels, count = [], [], 0
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
        count += len(x)
        if limit is not None and count >= limit:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


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
        ModelFileNotFoundError, NotMBAKTModelError: see `load_mbakt_model`.
        ValueError: unknown branch; no dataset recorded nor given.
        ExportCheckError: see `export_model`.
    """
    from mbakt_tf import data as data_lib

    config = config or ExportConfig()
    say = _quiet(progress)
    model_path = resolve_model_path(model_path)
    say(f"Loading {model_path}")
    model = load_mbakt_model(model_path)
    branch = resolve_branch(model, config.branch)
    output_dir = output_dir or default_output_dir(model_path, branch)
    run = recorded_run(model_path)
    recorded = run.get("train_config", {})
    dataset = dataset or recorded.get("dataset")
    if dataset is None:
        raise ValueError(
            f"No dataset: {model_path} has no results.json beside it; pass dataset= (--dataset)."
        )
    say(f"Loading {dataset} (training images for calibration, test images for parity)")
    from mbakt_tf.segmentation_model import MBAKTSegmenter

    segmentation = isinstance(model, MBAKTSegmenter)
    load = data_lib.load_segmentation if segmentation else data_lib.load_classification
    if segmentation and config.test_limit is None:
        config = dataclasses.replace(config, test_limit=SEGMENTATION_TEST_LIMIT)
    splits = load(
        dataset,
        data_dir=data_dir or recorded.get("data_dir"),
        batch_size=256,
        validation_fraction=recorded.get("validation_fraction", 0.1),
        image_size=image_size or recorded.get("image_size"),
        augment=False,
        seed=recorded.get("seed", 0),  # the run's validation carve: calibration never sees it
        test_limit=config.test_limit,
        synthetic_kwargs=recorded.get("synthetic_kwargs") if dataset == "synthetic" else None,
    )
    representative, _ = _take_images(splits.train, config.representative_samples)
    test_images, test_labels = _take_images(splits.test)
    source = {
        "model_path": os.path.abspath(model_path),
        "mode": model.config.mode,
        "backbone": recorded.get("backbone"),
        "dataset": splits.info.name,
        "recorded_test_accuracy": run.get("test", {}).get(f"{branch}_accuracy"),
    }
    if segmentation:
        source["recorded_test_miou"] = run.get("test", {}).get(f"{branch}_miou")
    return export_model(
        model,
        output_dir,
        representative_images=representative,
        test_images=test_images,
        test_labels=test_labels,
        class_names=splits.info.class_names,
        config=config,
        source=source,
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
            _size(doc["bytes"]),
            f"{100 * figures['accuracy']:.2f}%"
            + (f" / {100 * figures['miou']:.2f}%" if segmentation else ""),
            f"{figures['max_abs_logit_diff']:.2g}",
            f"{100 * figures['top1_agreement']:.2f}%",
            "-" if lat is None else f"{lat['median_ms']:.3f} ms",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    table.insert(1, "  ".join("-" * w for w in widths))
    lines += table
    if manifest.get("int8_accuracy_drop") is not None:
        lines.append(f"int8 accuracy drop vs Keras float: {100 * manifest['int8_accuracy_drop']:.2f} points")
    if latency.get("int8_over_float32") is not None:
        lines.append(
            f"LiteRT latency int8 / float32 (median of {latency['int8']['runs']} runs, batch 1, "
            f"{latency['num_threads']} thread): {latency['int8_over_float32']:.2f}"
        )
    failed = [c for c in manifest["checks"] if not c["passed"]]
    lines.append(
        f"Checks: {len(manifest['checks']) - len(failed)}/{len(manifest['checks'])} passed"
        + "".join(f"\n  FAILED {c['name']}: {c['detail']}" for c in failed)
    )
    return "\n".join(lines)


def _count(value):
    return "n/a" if value is None else f"{value:,}"


def _size(num_bytes):
    return f"{num_bytes / 1024:.1f} KiB" if num_bytes < 1024**2 else f"{num_bytes / 1024**2:.2f} MiB"
