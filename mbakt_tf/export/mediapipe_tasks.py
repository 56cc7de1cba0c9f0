"""TFLite Metadata for MediaPipe Tasks, and the check that MediaPipe runs each file like LiteRT.

Android apps classify with MediaPipe Tasks' `ImageClassifier` (segment with
`ImageSegmenter`); both read TFLite Metadata from the model file: the labels
(a packed `labels.txt`), the input normalisation and the image type. Our
models take raw [0, 255] pixels and rescale inside the graph, so the
metadata says mean 0, std 1 (MediaPipe feeds `(pixel - mean) / std`: the
pixels themselves). The outputs are described in the file's order:
a classifier gets one classification head per output (`logits`,
`probabilities`: MediaPipe reports both, by head name); a segmenter follows
MediaPipe's two-output convention (the second output is the mask: our
`probabilities`, activation NONE; the first, `logits`, a plain feature).

MediaPipe lives in a virtualenv of its own (`make setup-mediapipe` creates
`.venv-mediapipe/`): the release whose wheel still ships the metadata
writers' native part (0.10.21; later ones, 1.x included, cannot import
them) pins numpy<2 and protobuf<5, which the training stack outgrew. So, as
with tfmot in `optimize.py`, the work runs in a separate process: this file
run as a script (`python -I mediapipe_tasks.py job.json`, so it imports
neither mbakt_tf nor TensorFlow), which for each file

1. writes the metadata into it in place (`metadata_writers`), reads it back
   with `MetadataDisplayer` (JSON, packed files, labels);
2. runs the file through the Python Tasks API, the same C++ graph as on
   Android, on uint8 test images: top-1 class and score of every head
   (`ImageClassifier`), or the category mask (`ImageSegmenter`). A file
   MediaPipe cannot run (a 1-channel input; int8 input: Tasks take uint8 or
   float32) is reported with MediaPipe's own error.

The Keras 3 process then compares MediaPipe with LiteRT on the same images
(`classifier_agreement`, `segmenter_agreement`).

Example:
```python
from mbakt_tf.export import mediapipe_tasks
result = mediapipe_tasks.embed_and_run(
    [{"key": "float32", "path": "out/model_float32.tflite", "task": "classifier",
      "labels": class_names, "model_name": "main_branch"}],
    images_uint8)                          # (N, H, W, 3) RGB
result["files"]["float32"]["metadata"]["labels"]            # read back from the file
result["files"]["float32"]["outputs"]["probabilities_index"]  # MediaPipe's top-1 per image
```
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MEDIAPIPE_PYTHON_ENV = "MBAKT_MEDIAPIPE_PYTHON"
MEDIAPIPE_VENV = ".venv-mediapipe"
TASKS = ("classifier", "segmenter")
TASK_API = {"classifier": "ImageClassifier", "segmenter": "ImageSegmenter"}
LABELS_FILE = "labels.txt"
# What MediaPipe feeds a float model: (pixel - mean) / std. Our models take raw pixels.
NORM_MEAN, NORM_STD = 0.0, 1.0
SEGMENTER_MASK_POSITION = 1  # of two outputs, MediaPipe's ImageSegmenter reads the second
_IMPORT_PROBE = ("import mediapipe.tasks.python.metadata.metadata_writers.metadata_writer, "
                 "mediapipe.tasks.python.vision")


class MediaPipeUnavailableError(RuntimeError):
    """No Python interpreter that can import MediaPipe's metadata writers and Tasks was found."""


# ------------------------------------------------------------ the MediaPipe Python


def _package_parent():
    """The folder holding the `mbakt_tf` package (this file is `mbakt_tf/export/mediapipe_tasks.py`)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _has_mediapipe(python):
    try:
        return subprocess.run([python, "-I", "-c", _IMPORT_PROBE], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def mediapipe_python(explicit=None):
    """The Python interpreter that writes metadata and runs MediaPipe Tasks.

    In this order: `explicit`; `$MBAKT_MEDIAPIPE_PYTHON`; `.venv-mediapipe/bin/python`
    in the repository holding this package or in the working directory (`make
    setup-mediapipe` creates it); this interpreter, when it can import them.

    Raises:
        MediaPipeUnavailableError: none of them can import MediaPipe's metadata
            writers and vision Tasks.
    """
    for python in (explicit, os.environ.get(MEDIAPIPE_PYTHON_ENV)):
        if python:
            if not _has_mediapipe(python):
                raise MediaPipeUnavailableError(
                    f"{python} cannot import MediaPipe's metadata writers and vision Tasks "
                    f"({_IMPORT_PROBE}).")
            return python
    candidates = [os.path.join(root, MEDIAPIPE_VENV, "bin", "python")
                  for root in (_package_parent(), os.getcwd())]
    for python in candidates + [sys.executable]:
        if os.path.exists(python) and _has_mediapipe(python):
            return python
    raise MediaPipeUnavailableError(
        "TFLite Metadata and the MediaPipe Tasks check need MediaPipe in a separate virtualenv: "
        f"run `make setup-mediapipe` (creates {MEDIAPIPE_VENV}/ with mediapipe==0.10.21), or point "
        f"${MEDIAPIPE_PYTHON_ENV} at a Python that has it. Looked at: "
        f"{', '.join(candidates + [sys.executable])}."
    )


# ------------------------------------------------------------ the Keras 3 side


def embed_and_run(files, images, python=None, timeout=None):
    """Writes TFLite Metadata into each file (in place) and runs it in MediaPipe Tasks.

    Args:
        files: dicts with `key` (e.g. the format), `path`, `task` (`"classifier"`
            or `"segmenter"`), `labels` (class names, index order) and optionally
            `model_name`, `description`.
        images: uint8 (N, H, W, C) images for the Tasks run (C = 3: RGB).
        python: the MediaPipe Python (default `mediapipe_python()`).
        timeout: seconds before the process is stopped.

    Returns:
        `{"versions": {...}, "files": {key: {"metadata": {...}, "tasks": {...},
        "outputs": {name: array}}}}`: `metadata` what was written and read back
        (`written`, `labels`, `associated_files`, `json`, `error`); `tasks` the
        run (`ran`, `api`, `images`, or `error`); `outputs` per classifier
        head `<head>_index`, `<head>_score` (N,), or a segmenter's
        `category_mask` (N, H, W).

    Raises:
        MediaPipeUnavailableError: no MediaPipe Python.
        RuntimeError: the process failed (its output is in the message).
    """
    python = mediapipe_python(python)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}.")
    for spec in files:
        if spec["task"] not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {spec['task']!r}.")
    with tempfile.TemporaryDirectory(prefix="mbakt_mediapipe_") as work:
        images_path = os.path.join(work, "images.npy")
        np.save(images_path, images)
        job = {"images_file": images_path, "work_dir": work,
               "result_file": os.path.join(work, "result.json"),
               "files": [dict(spec, path=os.path.abspath(spec["path"])) for spec in files]}
        job_path = os.path.join(work, "job.json")
        with open(job_path, "w") as f:
            json.dump(job, f, indent=1)
        env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
        process = subprocess.run([python, "-I", os.path.abspath(__file__), job_path],
                                 capture_output=True, text=True, timeout=timeout, env=env)
        if process.returncode != 0 or not os.path.exists(job["result_file"]):
            raise RuntimeError(f"The MediaPipe process ({python}) failed with status "
                               f"{process.returncode}:\n{(process.stdout + process.stderr)[-4000:]}")
        with open(job["result_file"]) as f:
            result = json.load(f)
        for doc in result["files"].values():
            outputs_file = doc.pop("outputs_file", None)
            if outputs_file:
                with np.load(outputs_file) as saved:
                    doc["outputs"] = {name: saved[name] for name in saved.files}
    return result


def classifier_agreement(index, score, lite_scores):
    """MediaPipe's top-1 per image against LiteRT's scores of the same output on the same images.

    `top1_agreement`: the fraction of images where MediaPipe's class has
    LiteRT's highest score (a tie counts: quantized scores tie);
    `top1_equal_argmax`: where it is `argmax` itself; `max_abs_score_diff`:
    MediaPipe's score of its class against LiteRT's (shows MediaPipe fed the
    same input values: normalisation, channel order).
    """
    index = np.asarray(index, np.int64)
    lite_scores = np.asarray(lite_scores, np.float32)
    rows = np.arange(len(index))
    picked = lite_scores[rows, index]
    return {
        "top1_agreement": float(np.mean(picked >= lite_scores.max(-1))),
        "top1_equal_argmax": float(np.mean(index == lite_scores.argmax(-1))),
        "max_abs_score_diff": float(np.max(np.abs(picked - np.asarray(score, np.float32)))),
    }


def segmenter_agreement(category_mask, lite_scores):
    """Per-pixel: MediaPipe's category mask against LiteRT's score maps (N, H, W, classes).

    `pixel_agreement`: the fraction of pixels whose MediaPipe class has LiteRT's
    highest score there (ties count); `pixel_equal_argmax`: equal to `argmax`.
    """
    mask = np.asarray(category_mask, np.int64)
    lite_scores = np.asarray(lite_scores, np.float32)
    if mask.shape != lite_scores.shape[:-1]:
        raise ValueError(f"category masks {mask.shape} vs LiteRT maps {lite_scores.shape}.")
    picked = np.take_along_axis(lite_scores, mask[..., None], axis=-1)[..., 0]
    return {
        "pixel_agreement": float(np.mean(picked >= lite_scores.max(-1))),
        "pixel_equal_argmax": float(np.mean(mask == lite_scores.argmax(-1))),
    }


# ------------------------------------------------------------ the MediaPipe process


def _output_names(model_buffer):
    """Names of the subgraph's outputs in file order: the signature's keys (else tensor names)."""
    from mediapipe.tasks.metadata import schema_py_generated as schema_fb

    model = schema_fb.Model.GetRootAsModel(model_buffer, 0)
    subgraph = model.Subgraphs(0)
    outputs = [subgraph.Outputs(i) for i in range(subgraph.OutputsLength())]
    by_tensor = {}
    if model.SignatureDefsLength():
        signature = model.SignatureDefs(0)
        for i in range(signature.OutputsLength()):
            item = signature.Outputs(i)
            by_tensor[item.TensorIndex()] = item.Name().decode()
    return [by_tensor.get(t, subgraph.Tensors(t).Name().decode()) for t in outputs]


def _input_channels(model_buffer):
    from mediapipe.tasks.metadata import schema_py_generated as schema_fb

    subgraph = schema_fb.Model.GetRootAsModel(model_buffer, 0).Subgraphs(0)
    return int(subgraph.Tensors(subgraph.Inputs(0)).ShapeAsNumpy()[-1])


def _write_metadata(spec, model_buffer):
    """The model bytes with metadata, and the output names in file order."""
    from mediapipe.tasks.python.metadata.metadata_writers import image_segmenter, metadata_writer

    def labels():
        return metadata_writer.Labels().add([str(n) for n in spec["labels"]])

    names = _output_names(model_buffer)
    color = metadata_writer.metadata_fb.ColorSpaceType
    channels = _input_channels(model_buffer)
    writer = metadata_writer.MetadataWriter.create(bytearray(model_buffer))
    writer.add_general_info(spec.get("model_name") or "mbakt_tf model", spec.get("description") or "")
    writer.add_image_input(
        norm_mean=[NORM_MEAN], norm_std=[NORM_STD],
        color_space_type=color.RGB if channels == 3 else color.GRAYSCALE if channels == 1 else color.UNKNOWN,
        description="Raw pixel values in [0, 255]; the model rescales them itself.")
    if spec["task"] == "classifier":
        for name in names:
            writer.add_classification_output(
                labels(), name=name, description=f"{name} of the classes (labels.txt, line i = class i)")
    else:
        mask_position = SEGMENTER_MASK_POSITION if len(names) == 2 else 0
        activation = (image_segmenter.Activation.NONE if names[mask_position] == "probabilities"
                      else image_segmenter.Activation.SOFTMAX)
        writer.add_custom_metadata(image_segmenter.ImageSegmenterOptionsMd(activation))
        for position, name in enumerate(names):
            if position == mask_position:
                writer.add_segmentation_output(
                    labels(), name=name, description=f"per-pixel {name} of the classes (labels.txt)")
            else:
                writer.add_feature_output(name=name, description=f"per-pixel {name} of the classes")
    model_with_metadata, _ = writer.populate()
    return bytes(model_with_metadata), names


def _read_metadata(model_buffer):
    from mediapipe.tasks.python.metadata import metadata

    displayer = metadata.MetadataDisplayer.with_model_buffer(model_buffer)
    files = displayer.get_packed_associated_file_list()
    labels = None
    if LABELS_FILE in files:
        labels = displayer.get_associated_file_buffer(LABELS_FILE).decode("utf-8").splitlines()
    return {"json": json.loads(displayer.get_metadata_json()), "associated_files": sorted(files),
            "labels": labels}


def _run_task(spec, images, output_names):
    """MediaPipe's outputs on `images` (a dict of arrays), or raises what MediaPipe raised."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core import base_options

    options = base_options.BaseOptions(model_asset_path=spec["path"])
    image_format = mp.ImageFormat.SRGB if images.shape[-1] == 3 else mp.ImageFormat.GRAY8

    def mp_image(image):
        return mp.Image(image_format=image_format,
                        data=np.ascontiguousarray(image if images.shape[-1] == 3 else image[..., 0]))

    if spec["task"] == "classifier":
        heads = {name: ([], []) for name in output_names}
        task_options = vision.ImageClassifierOptions(base_options=options, max_results=1)
        with vision.ImageClassifier.create_from_options(task_options) as classifier:
            for image in images:
                for head in classifier.classify(mp_image(image)).classifications:
                    top = head.categories[0]
                    heads[head.head_name][0].append(top.index)
                    heads[head.head_name][1].append(top.score)
        outputs = {}
        for name, (index, score) in heads.items():
            outputs[f"{name}_index"] = np.asarray(index, np.int64)
            outputs[f"{name}_score"] = np.asarray(score, np.float32)
        return outputs
    task_options = vision.ImageSegmenterOptions(base_options=options, output_category_mask=True,
                                                output_confidence_masks=False)
    masks = []
    with vision.ImageSegmenter.create_from_options(task_options) as segmenter:
        for image in images:
            masks.append(np.array(segmenter.segment(mp_image(image)).category_mask.numpy_view()))
    return {"category_mask": np.stack(masks).reshape(images.shape[:3]).astype(np.uint8)}


def worker_main(argv):
    """Entry point of the MediaPipe process: `python -I mediapipe_tasks.py job.json`."""
    if len(argv) != 1:
        print("usage: mediapipe_tasks.py JOB_JSON", file=sys.stderr)
        return 2
    import mediapipe as mp

    with open(argv[0]) as f:
        job = json.load(f)
    images = np.load(job["images_file"])
    result = {"versions": {"mediapipe": mp.__version__, "numpy": np.__version__,
                           "python": sys.executable}, "files": {}}
    for spec in job["files"]:
        doc = result["files"][spec["key"]] = {"metadata": {"written": False}, "tasks": {"ran": False}}
        with open(spec["path"], "rb") as f:
            original = f.read()
        try:
            model_buffer, names = _write_metadata(spec, original)
            read_back = _read_metadata(model_buffer)
        except Exception as error:  # noqa: BLE001 - reported per file, the file is left as it was
            doc["metadata"]["error"] = f"{type(error).__name__}: {error}"
            continue
        with open(spec["path"], "wb") as f:
            f.write(model_buffer)
        doc["metadata"] = {"written": True, "bytes_added": len(model_buffer) - len(original),
                           "outputs": names, **read_back}
        doc["tasks"]["api"] = TASK_API[spec["task"]]
        try:
            outputs = _run_task(spec, images, names)
        except Exception as error:  # noqa: BLE001 - MediaPipe's refusal is the reported reason
            doc["tasks"]["error"] = f"{type(error).__name__}: {error}"
            continue
        outputs_file = os.path.join(job["work_dir"], f"outputs_{len(result['files'])}.npz")
        np.savez(outputs_file, **outputs)
        doc["tasks"].update(ran=True, images=int(len(images)))
        doc["outputs_file"] = outputs_file
    with open(job["result_file"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
