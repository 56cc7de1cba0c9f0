"""Export of a tiny trained model: every format, parity, int8 tensors, no branches, early exit, errors.

The shared tiny run (conftest.py `trained_run`: small_resnet8, 16x16x1, 4 synthetic classes) is exported
once per module; the tests read what the exporter wrote and re-check it independently (own SavedModel
load, own LiteRT interpreter), so a bug in the exporter's checks does not hide a bug in its files.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mbakt_tf import export, saved_runs
from mbakt_tf.export import serving
from tests.helpers import TINY_RUN_DATA, train_tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("float32", "float16", "dynamic_range", "int8")
# What the tests demand, stated once (the exporter's own bounds are export.PARITY_TOLERANCES):
SAVED_MODEL_ATOL = 1e-4      # same TF kernels: max |logit diff| vs Keras
FLOAT32_ATOL = 1e-3          # LiteRT float32 (XNNPACK) vs Keras
FLOAT16_ATOL = 5e-2          # float16 weights
QUANTIZED_MIN_TOP1 = 0.9     # dynamic-range and int8 top-1 agreement with Keras


def _export_config(**kwargs):
    kwargs.setdefault("test_limit", 128)
    kwargs.setdefault("representative_samples", 64)
    kwargs.setdefault("benchmark_runs", 20)
    kwargs.setdefault("benchmark_warmup", 5)
    kwargs.setdefault("max_int8_accuracy_drop", 0.05)
    return export.ExportConfig(**kwargs)


@pytest.fixture(scope="module")
def run(trained_run):
    """The shared tiny trained run (conftest.py `trained_run`): model.keras, main_branch.keras, results.json.

    The default design: peers (copies of the last stage) and a gated teacher.
    """
    result = trained_run.result
    assert result.model.config.resolved_branch_design() == "peer" and result.model.gated
    return result


@pytest.fixture(scope="module")
def exit_run(tmp_path_factory):
    """A tiny MBAKT run with early exits (branch_design="exit")."""
    return train_tiny_run(tmp_path_factory.mktemp("exit_runs"), "tiny_exit", branch_design="exit").result


@pytest.fixture(scope="module")
def test_images(run):
    from mbakt_tf import data

    splits = data.load_classification(
        "synthetic", batch_size=128, validation_fraction=0.0, augment=False, synthetic_kwargs=TINY_RUN_DATA)
    images, labels = next(iter(splits.test))
    return images.numpy(), labels.numpy()


@pytest.fixture(scope="module")
def main_export(run, tmp_path_factory):
    messages = []
    result = export.export_from_file(
        os.path.join(run.run_dir, "model.keras"), str(tmp_path_factory.mktemp("export") / "main"),
        config=_export_config(), progress=messages.append,
    )
    return result, messages


@pytest.fixture(scope="module")
def branch_export(exit_run, test_images, tmp_path_factory):
    """Early exit 1 through the model-object API, uint8 int8 I/O."""
    from mbakt_tf import data

    splits = data.load_classification(
        "synthetic", batch_size=64, validation_fraction=0.0, augment=False, synthetic_kwargs=TINY_RUN_DATA)
    representative = next(iter(splits.train))[0].numpy()
    return export.export_model(
        exit_run.model, str(tmp_path_factory.mktemp("export") / "branch_1"),
        representative_images=representative, test_images=test_images[0], test_labels=test_images[1],
        class_names=[f"class_{i}" for i in range(4)],
        config=_export_config(branch="1", formats=("float32", "int8"), int8_io="uint8", fresh_process_check=False),
    )


def _keras_logits(model, images):
    return model.predict(images, batch_size=128, verbose=0)


def _run_tflite(path, images):
    """Logits of a TFLite file for float images, quantizing/dequantizing by hand (no export code)."""
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner("serving_default")
    input_detail = runner.get_input_details()["images"]
    output_detail = runner.get_output_details()["logits"]
    scale, zero_point = input_detail["quantization"]
    out_scale, out_zero = output_detail["quantization"]
    logits = []
    for image in images:
        x = image[None]
        if scale:
            info = np.iinfo(input_detail["dtype"])
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        y = runner(images=x.astype(input_detail["dtype"]))["logits"][0].astype(np.float32)
        logits.append((y - out_zero) * out_scale if out_scale else y)
    return np.stack(logits)

# ----------------------------------------------------------------------------- main export


def test_main_export_writes_every_format_and_passes_its_checks(run, main_export):
    result, messages = main_export
    out = result.output_dir
    assert result.ok and not result.failed_checks
    assert os.path.isfile(os.path.join(out, "saved_model", "saved_model.pb"))
    for fmt in FORMATS:
        assert os.path.getsize(os.path.join(out, f"model_{fmt}.tflite")) > 1000
    with open(os.path.join(out, "labels.txt")) as f:
        assert f.read().splitlines() == run.info.class_names
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest == json.loads(json.dumps(result.manifest))
    assert manifest["input"]["shape"] == [None, 16, 16, 1] and manifest["input"]["value_range"] == [0, 255]
    assert manifest["model"]["parameters"] == run.model.main_model().count_params()
    assert manifest["evaluation"]["images"] == 128
    assert manifest["latency"]["int8_over_float32"] > 0
    assert manifest["latency"]["int8"]["runs"] == 20
    sizes = {fmt: manifest["files"][fmt]["bytes"] for fmt in FORMATS}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    assert sizes["dynamic_range"] < sizes["float16"]
    assert any("fresh process" in m for m in messages) and any("int8" in m for m in messages)


def test_grayscale_files_get_metadata_and_say_why_mediapipe_cannot_run_them(main_export):
    """A 16x16x1 model without rgb_input: MediaPipe Tasks take RGB only (tests/test_mediapipe.py runs them)."""
    manifest = main_export[0].manifest
    summary = manifest["mediapipe"]
    if not summary["written"]:  # no MediaPipe Python here: the manifest says so
        assert "make setup-mediapipe" in summary["reason"]
        return
    for fmt in FORMATS:
        metadata = manifest["files"][fmt]["tflite_metadata"]
        assert metadata["written"] and metadata["input"]["color_space"] == "GRAYSCALE"
        figures = manifest["evaluation"][fmt]["mediapipe"]
        assert not figures["ran"] and "rgb_input" in figures["hint"]
        # MediaPipe names the first thing it refuses: the int8 input dtype, else the colour space.
        assert ("INT8" if fmt == "int8" else "RGB") in figures["reason"]
        assert ("int8_io='uint8'" in figures["hint"]) == (fmt == "int8")


def test_saved_model_signature_and_parity(run, main_export, test_images):
    result, _ = main_export
    images = test_images[0]
    loaded = tf.saved_model.load(os.path.join(result.output_dir, "saved_model"))
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 16, 16, 1]
    outputs = serve(images=tf.constant(images))
    assert set(outputs) == {"logits", "probabilities"}
    expected = _keras_logits(run.model.main_model(), images)
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=SAVED_MODEL_ATOL)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
    # The exporter's own reload ran in a process without mbakt_tf, with the same result.
    saved = result.manifest["files"]["saved_model"]
    assert "mbakt_tf" in saved["reloaded_without"]
    assert result.manifest["evaluation"]["saved_model"]["max_abs_logit_diff"] <= SAVED_MODEL_ATOL
    assert result.manifest["evaluation"]["saved_model"]["top1_agreement"] == 1.0


def test_probe_runs_without_mbakt_tf(main_export, test_images):
    result, _ = main_export
    outputs, facts = serving.probe_saved_model(
        os.path.join(result.output_dir, "saved_model"), test_images[0][:8])
    assert facts["mbakt_tf_imported"] is False
    assert "mbakt_tf" in sys.modules  # ...while this process has it: the probe is a separate process
    assert outputs["logits"].shape == (8, 4)


def test_tflite_files_match_keras_within_tolerances(run, main_export, test_images):
    result, _ = main_export
    images, labels = test_images
    expected = _keras_logits(run.model.main_model(), images)
    logits = {fmt: _run_tflite(os.path.join(result.output_dir, f"model_{fmt}.tflite"), images)
              for fmt in FORMATS}
    assert np.max(np.abs(logits["float32"] - expected)) <= FLOAT32_ATOL
    assert np.max(np.abs(logits["float16"] - expected)) <= FLOAT16_ATOL
    for fmt in ("dynamic_range", "int8"):
        agreement = np.mean(np.argmax(logits[fmt], -1) == np.argmax(expected, -1))
        assert agreement >= QUANTIZED_MIN_TOP1, (fmt, agreement)
    # The manifest reports the same figures the tests measured.
    evaluation = result.manifest["evaluation"]
    for fmt in FORMATS:
        accuracy = np.mean(np.argmax(logits[fmt], -1) == labels)
        assert evaluation[fmt]["accuracy"] == pytest.approx(accuracy, abs=1e-9), fmt
    keras_accuracy = np.mean(np.argmax(expected, -1) == labels)
    assert result.manifest["int8_accuracy_drop"] == pytest.approx(
        keras_accuracy - evaluation["int8"]["accuracy"], abs=1e-9)


def test_int8_file_has_int8_tensors_and_builtin_ops_only(main_export):
    result, _ = main_export
    interpreter = Interpreter(model_path=os.path.join(result.output_dir, "model_int8.tflite"))
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    assert input_detail["dtype"] == np.int8
    assert input_detail["quantization"] == (1.0, -128)  # int8 input = pixel - 128
    assert all(d["dtype"] == np.int8 for d in interpreter.get_output_details())
    dtypes = [np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()]
    assert "float32" not in dtypes and dtypes.count("int8") > 10
    for fmt in FORMATS:
        ops = result.manifest["files"][fmt]["ops"]
        assert ops["CONV_2D"] == 9 and ops["FULLY_CONNECTED"] == 1, (fmt, ops)
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    float_dtypes = [np.dtype(t["dtype"]).name for t in Interpreter(
        model_path=os.path.join(result.output_dir, "model_float32.tflite")).get_tensor_details()]
    assert "int8" not in float_dtypes


def test_exports_hold_no_branch_or_discriminator_variables(run, main_export):
    result, _ = main_export
    loaded = tf.saved_model.load(os.path.join(result.output_dir, "saved_model"))
    names = [v.name for v in loaded.variables]
    assert names and not [n for n in names if n.startswith(("branch_", "gate")) or "discriminator" in n]
    assert sum(int(np.prod(v.shape)) for v in loaded.variables) == run.model.main_model().count_params()
    assert run.model.main_model().count_params() < run.model.network.count_params()
    assert len(names) == len(run.model.main_model().variables)
    interpreter = Interpreter(model_path=os.path.join(result.output_dir, "model_float32.tflite"))
    tensor_names = " ".join(t["name"] for t in interpreter.get_tensor_details())
    assert "main_logits" in tensor_names
    assert "/branch_" not in tensor_names and "discriminator" not in tensor_names


# ----------------------------------------------------------------------------- early exit


def test_early_exit_export_is_smaller_and_standalone(exit_run, main_export, branch_export, test_images):
    main, _ = main_export  # the peer design's main branch: the same plain network
    branch = branch_export
    run = exit_run
    assert branch.ok, branch.failed_checks
    cost, main_cost = branch.manifest["model"], main.manifest["model"]
    assert cost["branch"] == "branch_1"
    assert cost["parameters"] == run.model.branch_model("branch_1").count_params()
    assert cost["parameters"] < main_cost["parameters"]
    assert cost["flops_per_image"] < main_cost["flops_per_image"]
    for fmt in ("float32", "int8"):
        assert branch.manifest["files"][fmt]["bytes"] < main.manifest["files"][fmt]["bytes"]
    assert set(branch.manifest["files"]) == {"saved_model", "float32", "int8"}
    # fresh_process_check=False: reloaded in this process, and the manifest says so (the main export
    # checks the fresh process).
    assert branch.manifest["files"]["saved_model"]["reloaded_in"] == "the exporting process"
    assert "saved_model_fresh_process_without_mbakt_tf" not in [c["name"] for c in branch.manifest["checks"]]
    assert main.manifest["files"]["saved_model"]["reloaded_in"] == "a fresh process"

    loaded = tf.saved_model.load(os.path.join(branch.output_dir, "saved_model"))
    names = [v.name for v in loaded.variables]
    assert any(n.startswith("branch_1_adapt") for n in names)
    assert not [n for n in names if n.startswith(("branch_2", "main_logits", "discriminator"))]
    expected = _keras_logits(run.model.branch_model("branch_1"), test_images[0])
    got = loaded.signatures["serving_default"](images=tf.constant(test_images[0]))["logits"].numpy()
    np.testing.assert_allclose(got, expected, atol=SAVED_MODEL_ATOL)
    assert branch.manifest["evaluation"]["keras"]["accuracy"] == pytest.approx(
        np.mean(np.argmax(expected, -1) == test_images[1]))


def test_uint8_io_takes_pixel_bytes(branch_export, test_images):
    interpreter = Interpreter(model_path=os.path.join(branch_export.output_dir, "model_int8.tflite"))
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    assert input_detail["dtype"] == np.uint8 and input_detail["quantization"] == (1.0, 0)
    assert all(d["dtype"] == np.uint8 for d in interpreter.get_output_details())
    assert "uint8 input = the pixel values themselves" in branch_export.manifest["input"]["int8_file"]


# ----------------------------------------------------------------------------- errors


def test_bad_arguments_give_clear_errors(run, tmp_path):
    model_path = os.path.join(run.run_dir, "model.keras")
    with pytest.raises(saved_runs.ModelFileNotFoundError, match="No saved model at"):
        saved_runs.load_mbakt_model(tmp_path / "missing.keras")
    with pytest.raises(saved_runs.ModelFileNotFoundError, match="model.keras"):
        saved_runs.load_mbakt_model(tmp_path)  # a folder without model.keras
    with pytest.raises(saved_runs.NotMBAKTModelError, match="main_branch.keras is the main branch alone"):
        saved_runs.load_mbakt_model(os.path.join(run.run_dir, "main_branch.keras"))
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    with pytest.raises(saved_runs.NotMBAKTModelError, match="not a Keras .keras archive"):
        saved_runs.load_mbakt_model(junk)
    for branch in ("7", "branch_3", 0):
        with pytest.raises(ValueError, match=r"Unknown branch .*early exits are branch_1, branch_2"):
            export.resolve_branch(run.model, branch)
    with pytest.raises(ValueError, match="branch must be 'main', k or 'branch_k'"):
        export.ExportConfig(branch="deep")
    with pytest.raises(ValueError, match="Unknown TFLite formats"):
        export.ExportConfig(formats=("float32", "int4"))
    with pytest.raises(ValueError, match="int8_io must be one of"):
        export.ExportConfig(int8_io="int16")
    with pytest.raises(ValueError, match="Unknown branch"):
        export.export_from_file(model_path, str(tmp_path / "out"), config=export.ExportConfig(branch="9"))
    assert not (tmp_path / "out").exists()  # rejected before writing anything
    assert export.resolve_branch(run.model, 2) == export.resolve_branch(run.model, "branch_2") == "branch_2"
    assert export.resolve_branch(run.model, None) == export.resolve_branch(run.model, "main") == "main"


def test_failed_check_raises_after_writing_the_manifest(run, test_images, tmp_path, monkeypatch):
    monkeypatch.setitem(export.PARITY_TOLERANCES, "float32", {"atol": -1.0, "rtol": 0.0, "min_top1": 0.0})
    images, labels = test_images
    with pytest.raises(export.ExportCheckError, match="float32_logit_parity"):
        export.export_model(
            run.model, str(tmp_path), representative_images=images, test_images=images[:16],
            test_labels=labels[:16],
            config=_export_config(formats=("float32",), benchmark_runs=0, fresh_process_check=False))
    with open(tmp_path / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["ok"] is False
    assert [c["name"] for c in manifest["checks"] if not c["passed"]] == ["float32_logit_parity"]


# ----------------------------------------------------------------------------- script


def _script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "export.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def test_export_script_end_to_end(run, tmp_path):
    out = tmp_path / "export"
    # Three processes at once: the export, and two that must stop with a clear error.
    processes = {
        "export": _script(f"--model={run.run_dir}", f"--output_dir={out}", "--formats=float32,int8",
                          "--test_limit=64", "--representative_samples=64", "--benchmark_runs=10",
                          "--max_int8_accuracy_drop=0.05"),
        "branch": _script(f"--model={run.run_dir}", "--branch=5", f"--output_dir={tmp_path / 'b'}"),
        "plain": _script(f"--model={run.run_dir}/main_branch.keras", f"--output_dir={tmp_path / 'p'}"),
    }
    results = {name: (p.wait(timeout=600), *p.communicate()) for name, p in processes.items()}
    code, stdout, stderr = results["export"]
    assert code == 0, stderr[-3000:]
    assert "fresh process" in stdout and "int8 / float32" in stdout
    checks_line = [line for line in stdout.splitlines() if line.startswith("Checks:")][0]
    passed, total = checks_line.split()[1].split("/")
    assert passed == total
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ok"] and set(manifest["files"]) == {"saved_model", "float32", "int8"}
    assert (out / "model_int8.tflite").is_file() and (out / "labels.txt").is_file()

    code, _, stderr = results["branch"]  # refused from the saved config (test_cli.py: before TensorFlow)
    assert code == 2 and "Unknown branch '5'" in stderr and "branch_1, branch_2" in stderr
    assert saved_runs.saved_branch_names(run.run_dir) == run.model.branch_names
    code, _, stderr = results["plain"]
    assert code == 2 and "not an MBAKT model" in stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "p").exists()
