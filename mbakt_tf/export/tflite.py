"""TFLite for Android: conversion of a serving SavedModel, and its files run in LiteRT.

Formats (`TFLITE_FORMATS`): `float32`; `float16` (float16 weights, float32
compute on CPU); `dynamic_range` (int8 weights, activations quantized at run
time); `int8` (full integer: int8 or uint8 input, output and kernels,
calibrated on training images). Builtin ops only: stock Android LiteRT builds
have no Flex ops. `LiteRTModel` runs a file in the `ai_edge_litert`
interpreter (float in, dequantized float out) and times it;
`tflite_structure` lists its ops, tensor dtypes and signature, and
`structure_checks` judges them (the checks `exporter.py` and `optimize.py` record).

Example:
```python
from mbakt_tf.export import serving, tflite
serving.write_saved_model(model.main_model(), "/tmp/sm")
tflite.write_tflite("/tmp/model_int8.tflite",
                   tflite.convert_tflite("/tmp/sm", "int8", representative_images=x_train[:300]))
tflite.LiteRTModel("/tmp/model_int8.tflite").predict(x_test[:10])["logits"]
tflite.non_builtin_ops(tflite.tflite_structure("/tmp/model_int8.tflite")["ops"])   # []
[passed for _, passed, _ in tflite.structure_checks(
    tflite.tflite_structure("/tmp/model_int8.tflite"), int8_io="int8")]              # [True, True, True]
```
"""

import gzip
import time
import warnings

import numpy as np

from mbakt_tf import atomic
from mbakt_tf.export.serving import INPUT_NAME, SIGNATURE_KEY

TFLITE_FORMATS = ("float32", "float16", "dynamic_range", "int8")
INT8_IO_TYPES = ("int8", "uint8")


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


def write_tflite(path, data):
    """Writes the flatbuffer bytes `data` to `path` atomically; returns `path`."""
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def gzip_size(path):
    """Bytes of `path` after gzip -9 (what a sparse or quantized file costs to ship compressed)."""
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9))


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


def non_builtin_ops(ops):
    """The op names of `ops` that a stock LiteRT build lacks (Flex, custom, delegate)."""
    return [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]


def structure_checks(structure, int8_io=None, expected_ops=None, foreign_pattern=None, foreign_names=()):
    """Pass/fail checks of one TFLite file's `tflite_structure`, as `(name, passed, detail)` tuples.

    Always `builtin_ops_only` (stock Android LiteRT has no Flex ops); with
    `foreign_pattern` (a regex of names that must not appear, e.g. other
    branches) `no_foreign_tensors`; with `expected_ops` (`expected_weight_ops`
    of the Keras model) `weight_op_counts_equal_keras`; with `int8_io` (the file
    is full integer) `io_dtype` (input and outputs are `int8_io`) and
    `no_float_tensors`. Callers prefix the names with the file's key.
    """
    ops = structure["ops"]
    non_builtin = non_builtin_ops(ops)
    checks = [("builtin_ops_only", not non_builtin,
               f"ops {sorted(ops)}" if not non_builtin else f"non-builtin ops {non_builtin}")]
    if foreign_pattern is not None:
        leaked = [n for n in structure["tensor_names"] if foreign_pattern.search(n)]
        checks.append(("no_foreign_tensors", not leaked,
                       f"none of {list(foreign_names)}" if not leaked else f"found {leaked[:3]}"))
    if expected_ops is not None:
        found = {op: ops.get(op, 0) for op in expected_ops}
        checks.append(("weight_op_counts_equal_keras", found == expected_ops,
                       f"TFLite {found} vs Keras layers {expected_ops}"))
    if int8_io is not None:
        dtypes = structure["tensor_dtypes"]
        io_dtypes = {structure["input"]["dtype"]} | {o["dtype"] for o in structure["outputs"]}
        checks.append(("io_dtype", io_dtypes == {int8_io},
                       f"input/output dtypes {sorted(io_dtypes)}, wanted {int8_io}"))
        floats = dtypes.get("float32", 0) + dtypes.get("float16", 0)
        checks.append(("no_float_tensors", floats == 0 and dtypes.get("int8", 0) > 0,
                       f"tensor dtypes {dtypes}"))
    return checks
