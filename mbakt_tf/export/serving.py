"""The serving contract of every exported model, and its SavedModel.

One signature, `serving_default`: input `images`, float32 `(batch, H, W, C)`
raw pixel values in [0, 255] (rescaling is the graph's first layer); outputs
`logits` and `probabilities` (softmax over the last axis), `(batch, classes)`
for a classifier and `(batch, H, W, classes)` for a segmenter. `tflite.py`
converts from this SavedModel, so the TFLite files share the contract.

Example:
```python
from mbakt_tf.export import serving
serving.write_saved_model(model.main_model(), "/tmp/main_saved_model")
outputs, facts = serving.probe_saved_model("/tmp/main_saved_model", x_test[:100])
outputs["probabilities"].shape, facts["parameter_count"], facts["mbakt_tf_imported"]   # ..., False
```
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")


def check_images(images, input_shape, name):
    """`images` as float32 `(N, *input_shape)`; `ValueError` naming `name` otherwise or when empty."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != input_shape:
        expected = ", ".join(map(str, input_shape))
        raise ValueError(f"{name} must have shape (N, {expected}), got {images.shape}.")
    if len(images) == 0:
        raise ValueError(f"{name} is empty.")
    return images


def _is_tf_keras(model):
    """True for a tf_keras (Keras 2) model, as the tfmot process builds; False for Keras 3."""
    return any(cls.__module__.split(".")[0] == "tf_keras" for cls in type(model).__mro__)


def write_saved_model(model, path):
    """Writes `model` as a SavedModel with one `serving_default` signature; returns `path`.

    The endpoint takes `images` float32 (None, H, W, C) raw pixels in [0, 255]
    and returns `{"logits", "probabilities"}`. A Keras 3 model goes through
    `keras.export.ExportArchive`, which tracks only the model's variables; a
    tf_keras model (the QAT or pruned copy in the tfmot process, which must not
    import Keras 3) through `tf.saved_model.save`. Either way the TFLite files
    converted from it share the contract.
    """
    import tensorflow as tf

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    input_signature = [tf.TensorSpec((None, *shape), tf.float32, name=INPUT_NAME)]

    def serve(images):
        logits = model(images, training=False)
        return {OUTPUT_NAMES[0]: logits, OUTPUT_NAMES[1]: tf.nn.softmax(logits, axis=-1)}

    if os.path.exists(path):
        shutil.rmtree(path)
    if _is_tf_keras(model):
        tf.saved_model.save(model, path, signatures={
            SIGNATURE_KEY: tf.function(serve, input_signature=input_signature)})
        return path
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=input_signature)
    archive.write_out(path, verbose=False)
    return path


# The probe itself: only numpy and TensorFlow. Run in a fresh interpreter (never importing mbakt_tf,
# which that run checks), or here with `fresh_process=False`.
_PROBE_FUNCTION = r"""
import json, sys
import numpy as np
import tensorflow as tf

def probe(saved_model_dir, images, signature_key):
    loaded = tf.saved_model.load(saved_model_dir)
    serve = loaded.signatures[signature_key]
    (input_name, input_spec), = serve.structured_input_signature[1].items()
    outputs = {}
    for start in range(0, len(images), 256):
        batch = serve(**{input_name: tf.constant(images[start:start + 256])})
        for key, value in batch.items():
            outputs.setdefault(key, []).append(value.numpy())
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
    return {key: np.concatenate(value) for key, value in outputs.items()}, facts
"""
_SAVED_MODEL_PROBE = _PROBE_FUNCTION + r"""
saved_model_dir, images_path, outputs_path, signature_key = sys.argv[1:5]
outputs, facts = probe(saved_model_dir, np.load(images_path), signature_key)
np.savez(outputs_path, **outputs)
assert not facts["mbakt_tf_imported"], "the SavedModel probe imported mbakt_tf"
print("SAVED_MODEL_FACTS " + json.dumps(facts))
"""


def probe_saved_model(saved_model_dir, images, timeout=600, fresh_process=True):
    """Runs the SavedModel on `images` in a fresh Python process that never imports mbakt_tf.

    Returns `(outputs, facts)`: outputs `{"logits", "probabilities"}` arrays;
    facts the signature, variable count, parameter count, variable names and
    whether mbakt_tf or keras were imported there (mbakt_tf never is: the
    process asserts it). With `fresh_process=False` the same probe runs in
    this process (no TensorFlow start; `facts["fresh_process"]` says which).
    """
    if not fresh_process:
        namespace = {}
        exec(_PROBE_FUNCTION, namespace)  # the fresh process's code, so both runs check the same things
        outputs, facts = namespace["probe"](
            os.path.abspath(saved_model_dir), np.asarray(images, np.float32), SIGNATURE_KEY)
        return outputs, dict(facts, fresh_process=False)
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
        facts = dict(json.loads(line[len("SAVED_MODEL_FACTS "):]), fresh_process=True)
        with np.load(outputs_path) as saved:
            outputs = {key: saved[key] for key in saved.files}
    return outputs, facts
