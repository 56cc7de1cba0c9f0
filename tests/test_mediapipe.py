"""TFLite Metadata and MediaPipe Tasks: what Android's ImageClassifier / ImageSegmenter read and do.

Tiny untrained models (16x16x1, 4 classes) are exported with `rgb_input` (MediaPipe feeds RGB only)
and TFLite Metadata required. The tests read the files back on their own, outside the exporter: the
metadata with MediaPipe's `MetadataDisplayer`, and MediaPipe's `ImageClassifier` / `ImageSegmenter`
(the Tasks API Android calls) against this process's own LiteRT interpreter on the same images.
MediaPipe runs in .venv-mediapipe (`make setup-mediapipe`); CI has it, elsewhere these tests skip.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from helpers import tiny_batch, tiny_model, tiny_segmenter
from mbakt_tf import export
from mbakt_tf.export import mediapipe_tasks, rgb_input

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress"]  # names with a slash and a space


@pytest.fixture(scope="module")
def mediapipe_python():
    try:
        return mediapipe_tasks.mediapipe_python()
    except mediapipe_tasks.MediaPipeUnavailableError as error:
        if os.environ.get("CI"):
            raise  # `make test` creates .venv-mediapipe: CI must run these
        pytest.skip(str(error))


def _images(count=24, seed=0):
    images, _ = tiny_batch((16, 16, 1), batch=count, seed=seed)
    return np.round(images)  # pixel values, as MediaPipe's uint8 images hold them


def _export(model, out, labels, **config):
    images = _images()
    config = dict(dict(rgb_input=True, tflite_metadata="require", benchmark_runs=0, representative_samples=16,
                       strict=False, fresh_process_check=False), **config)
    return export.export_model(model, str(out), images, images, labels, class_names=LABELS,
                               config=export.ExportConfig(**config))


@pytest.fixture(scope="module")
def classifier_export(mediapipe_python, tmp_path_factory):
    labels = np.arange(24) % 4
    return _export(tiny_model(), tmp_path_factory.mktemp("mp") / "classifier", labels,
                   formats=("float32", "int8"), int8_io="uint8")


def _in_mediapipe(python, code, tmp_path, **arrays):
    """Runs `code` in the MediaPipe Python (no mbakt_tf there) with `arrays` saved; returns its npz."""
    inputs = tmp_path / "inputs.npz"
    outputs = tmp_path / "outputs.npz"
    np.savez(inputs, **arrays)
    process = subprocess.run([python, "-I", "-c", code, str(inputs), str(outputs)],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return dict(np.load(outputs, allow_pickle=False)), process.stdout


def _litert(path, images):
    """This process's own LiteRT run of a file: every output, by signature name."""
    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    detail = runner.get_input_details()["images"]
    results = {}
    for image in images:
        for name, value in runner(images=image[None].astype(detail["dtype"])).items():
            scale, zero = runner.get_output_details()[name]["quantization"]
            value = (value.astype(np.float32) - zero) * scale if scale else value
            results.setdefault(name, []).append(value[0])
    return {name: np.stack(v) for name, v in results.items()}


_CLASSIFY = r"""
import json, sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core import base_options
from mediapipe.tasks.python.metadata import metadata

inputs = np.load(sys.argv[1])
path = str(inputs["path"])
displayer = metadata.MetadataDisplayer.with_model_file(path)
print(json.dumps({"metadata": json.loads(displayer.get_metadata_json()),
                  "labels": displayer.get_associated_file_buffer("labels.txt").decode().splitlines()}))
options = vision.ImageClassifierOptions(base_options=base_options.BaseOptions(model_asset_path=path))
top = []
with vision.ImageClassifier.create_from_options(options) as classifier:
    for image in inputs["images"]:
        heads = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=image)).classifications
        top.append({h.head_name: h.categories[0].index for h in heads}["probabilities"])
np.savez(sys.argv[2], top=np.array(top))
"""


def test_classifier_files_carry_metadata_and_mediapipe_agrees(classifier_export):
    manifest = classifier_export.manifest
    summary = manifest["mediapipe"]
    assert summary["written"] and summary["api"] == "ImageClassifier" and summary["images"] == 24
    assert summary["mediapipe_version"].startswith("0.10.")
    for fmt in ("float32", "int8"):
        assert summary[fmt]["ran"] and summary[fmt]["agreement"] >= 0.99
        metadata = manifest["files"][fmt]["tflite_metadata"]
        assert metadata["written"] and metadata["associated_files"] == ["labels.txt"]
        assert metadata["input"] == {"color_space": "RGB", "normalization": {"mean": [0.0], "std": [1.0]}}
        assert metadata["outputs"] == ["logits", "probabilities"]
        heads = manifest["evaluation"][fmt]["mediapipe"]["heads"]
        assert set(heads) == {"logits", "probabilities"}
        if fmt == "float32":  # MediaPipe fed the very values LiteRT got: same scores
            assert heads["probabilities"]["max_abs_score_diff"] < 1e-5
    checks = {c["name"]: c["passed"] for c in manifest["checks"]}
    for name in ("float32_tflite_metadata", "int8_tflite_metadata",
                 "float32_mediapipe_agrees_with_litert", "int8_mediapipe_agrees_with_litert"):
        assert checks[name], name
    assert "MediaPipe 0.10" in export.format_report(manifest)


def test_mediapipe_image_classifier_matches_litert_read_independently(classifier_export, mediapipe_python,
                                                                      tmp_path):
    path = classifier_export.files["float32"]
    images = rgb_input.to_rgb(_images(12, seed=7)).astype(np.uint8)  # images the exporter never saw
    outputs, stdout = _in_mediapipe(mediapipe_python, _CLASSIFY, tmp_path, path=path, images=images)
    shown = json.loads(stdout.strip().splitlines()[-1])
    assert shown["labels"] == LABELS
    image_input = shown["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert image_input["process_units"][0]["options"] == {"mean": [0.0], "std": [1.0]}
    lite = _litert(path, images.astype(np.float32))
    np.testing.assert_array_equal(outputs["top"], lite["probabilities"].argmax(-1))


def test_rgb_input_converts_in_the_graph_with_builtin_ops(classifier_export):
    manifest = classifier_export.manifest
    assert manifest["input"]["shape"] == [None, 16, 16, 3] and "BT.601" in manifest["input"]["rgb_input"]
    doc = manifest["files"]["float32"]
    assert doc["input"]["shape"] == [1, 16, 16, 3]
    assert {"MUL", "SUM"} <= set(doc["ops"]) and not export.non_builtin_ops(doc["ops"])
    # Gray images as RGB: the file matches the 1-channel Keras model (parity is against Keras).
    assert manifest["evaluation"]["float32"]["max_abs_logit_diff"] < 1e-3
    assert manifest["evaluation"]["float32"]["top1_agreement"] == 1.0
    assert manifest["model"]["parameters"] == manifest["files"]["saved_model"]["parameter_count"]


def test_rgb_to_model_channels_is_bt601_luma():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    gray = rgb_input.RGBToModelChannels(1)(pixel)
    assert float(gray[0, 0, 0, 0]) == pytest.approx(0.299 * 10 + 0.587 * 20 + 0.114 * 30, rel=1e-6)
    np.testing.assert_array_equal(rgb_input.RGBToModelChannels(3)(pixel), pixel)
    assert rgb_input.to_rgb(np.zeros((2, 4, 4, 1))).shape == (2, 4, 4, 3)


_SEGMENT = r"""
import sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core import base_options

inputs = np.load(sys.argv[1])
options = vision.ImageSegmenterOptions(
    base_options=base_options.BaseOptions(model_asset_path=str(inputs["path"])), output_category_mask=True)
with vision.ImageSegmenter.create_from_options(options) as segmenter:
    masks = [segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=image)).category_mask.numpy_view()
             for image in inputs["images"]]
np.savez(sys.argv[2], masks=np.stack(masks).reshape(inputs["images"].shape[:3]))
"""


def test_image_segmenter_per_pixel_classes_match_litert(mediapipe_python, tmp_path):
    """A tiny segmenter's RGB float32 file through `mediapipe_tasks` (the exporter's path, without
    the rest of the export), then MediaPipe's ImageSegmenter read independently."""
    from mbakt_tf.export import serving, tflite

    keras_model = rgb_input.with_rgb_input(tiny_segmenter().main_model(name="main_branch"))
    serving.write_saved_model(keras_model, str(tmp_path / "saved_model"))
    path = str(tmp_path / "model_float32.tflite")
    with open(path, "wb") as f:
        f.write(tflite.convert_tflite(str(tmp_path / "saved_model"), "float32"))
    images = rgb_input.to_rgb(_images(8, seed=3)).astype(np.uint8)
    result = mediapipe_tasks.embed_and_run(
        [{"key": "float32", "path": path, "task": "segmenter", "labels": LABELS}], images,
        python=mediapipe_python)
    doc = result["files"]["float32"]
    assert doc["metadata"]["written"] and doc["metadata"]["labels"] == LABELS
    assert doc["metadata"]["outputs"] == ["logits", "probabilities"]
    assert doc["tasks"]["ran"] and doc["tasks"]["api"] == "ImageSegmenter"
    lite = _litert(path, images.astype(np.float32))  # this process's own LiteRT, metadata included
    figures = mediapipe_tasks.segmenter_agreement(doc["outputs"]["category_mask"], lite["probabilities"])
    assert figures["pixel_agreement"] >= 0.99
    # Independently of mediapipe_tasks: MediaPipe's category masks against LiteRT's argmax.
    outputs, _ = _in_mediapipe(mediapipe_python, _SEGMENT, tmp_path, path=path, images=images)
    assert np.mean(outputs["masks"] == lite["probabilities"].argmax(-1)) >= 0.99


@pytest.mark.slow
def test_segmenter_export_records_per_pixel_agreement(mediapipe_python, tmp_path):
    labels = np.random.default_rng(0).integers(0, 4, size=(24, 16, 16))
    manifest = _export(tiny_segmenter(), tmp_path / "segmenter", labels, formats=("float32",)).manifest
    figures = manifest["evaluation"]["float32"]["mediapipe"]
    assert figures["api"] == "ImageSegmenter" and figures["output"] == "probabilities"
    assert figures["pixel_agreement"] >= 0.99 and manifest["mediapipe"]["float32"]["ran"]
    assert {c["name"]: c["passed"] for c in manifest["checks"]}["float32_mediapipe_agrees_with_litert"]
    assert manifest["files"]["float32"]["tflite_metadata"]["outputs"] == ["logits", "probabilities"]


def test_mediapipe_refusal_is_reported_with_its_reason(classifier_export, mediapipe_python, tmp_path):
    """An int8-input file (Tasks take uint8 or float32): metadata still written, MediaPipe's error kept."""
    from mbakt_tf.export import tflite

    saved_model = classifier_export.files["saved_model"]
    path = tmp_path / "model_int8.tflite"
    representative = rgb_input.to_rgb(_images(8))
    path.write_bytes(tflite.convert_tflite(saved_model, "int8", representative, int8_io="int8"))
    result = mediapipe_tasks.embed_and_run(
        [{"key": "int8", "path": str(path), "task": "classifier", "labels": LABELS}],
        representative.astype(np.uint8), python=mediapipe_python)
    doc = result["files"]["int8"]
    assert doc["metadata"]["written"] and doc["metadata"]["labels"] == LABELS
    assert not doc["tasks"]["ran"] and "INT8" in doc["tasks"]["error"] and "outputs" not in doc


def test_bad_input_gives_clear_errors(tmp_path):
    images = np.zeros((4, 16, 16, 2), np.float32)
    with pytest.raises(ValueError, match=r"1 \(grayscale\) or 3 \(RGB\) channels; this one has 2"):
        export.export_model(tiny_model(input_shape=(16, 16, 2)), str(tmp_path / "two"), images, images,
                            np.zeros(4), config=export.ExportConfig(rgb_input=True))
    with pytest.raises(ValueError, match="tflite_metadata must be one of"):
        export.ExportConfig(tflite_metadata="yes")
    gray = np.zeros((4, 16, 16, 1), np.float32)
    with pytest.raises(mediapipe_tasks.MediaPipeUnavailableError, match="cannot import MediaPipe"):
        export.export_model(tiny_model(), str(tmp_path / "none"), gray, gray, np.zeros(4),
                            config=export.ExportConfig(tflite_metadata="require", mediapipe_python=sys.executable))
    assert not (tmp_path / "none").exists()  # refused before any work
