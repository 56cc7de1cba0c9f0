"""QAT and pruning through tfmot: the Keras 3 -> tf_keras bridge, one QAT and one pruning fine-tune.

tfmot lives in its own virtualenv (`make setup-optimize`, a prerequisite of
`make test`) and runs in a subprocess: importing it here would set
TF_USE_LEGACY_KERAS and break keras-cv for the rest of the test session.
Without that virtualenv the tfmot tests are skipped (they fail under CI=true).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import mbakt_tf
from mbakt_tf import optimize, saved_runs
from mbakt_tf.export import tflite
from mbakt_tf.tfmot import describe, handoff, launch
from mbakt_tf import data as data_lib
from tests.helpers import tiny_segmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tfmot_python():
    try:
        return optimize.tfmot_python()
    except optimize.TfmotUnavailableError as error:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(str(error))
        pytest.skip(str(error))


def _tiny_backbones():
    """One tiny backbone of every family `backbones.py` names (same builders, fewer and thinner stages)."""
    import keras_cv

    return {
        "small_resnet": lambda: mbakt_tf.backbones.small_image_resnet(
            (8, 16), (1, 1), input_shape=(16, 16, 1)),
        "resnet18": lambda: keras_cv.models.ResNetBackbone(
            stackwise_filters=[64, 64], stackwise_blocks=[1, 1], stackwise_strides=[1, 2],
            block_type="basic_block", include_rescaling=True, input_shape=(32, 32, 3)),
        "mobilenet_v3_small": lambda: keras_cv.models.MobileNetV3Backbone(
            stackwise_expansion=[1, 72.0 / 16, 4], stackwise_filters=[16, 24, 40],
            stackwise_kernel_size=[3, 3, 5], stackwise_stride=[2, 2, 2],
            stackwise_se_ratio=[0.25, None, 0.25], stackwise_activation=["relu", "relu", "hard_swish"],
            include_rescaling=True, input_shape=(32, 32, 3)),
        "cspdarknet_tiny": lambda: keras_cv.models.CSPDarkNetBackbone(
            stackwise_channels=[16, 32], stackwise_depth=[1, 1], include_rescaling=True,
            input_shape=(32, 32, 3)),
    }


# Layers each family's conversion must produce: the parts that are not one-to-one.
EXPECTED_CLASSES = {
    "small_resnet": {"Rescaling", "Conv2D", "BatchNormalization", "ReLU", "Add", "Dense"},
    "resnet18": {"MaxPooling2D", "ReLU"},  # keras-cv's Activation("relu") layers
    # hard_swish spelled out (Rescaling + ReLU(6) + Rescaling + Multiply), squeeze-and-excite inlined
    "mobilenet_v3_small": {"DepthwiseConv2D", "ZeroPadding2D", "Multiply", "GlobalAveragePooling2D"},
    # Focus (x[..., ::2, ::2, :]) and the Sequential conv blocks with Lambda(silu) activations
    "cspdarknet_tiny": {"BridgeSlice", "Concatenate", "Activation"},
}


def _randomize(model, seed=0):
    """Random BN statistics and a larger head, so a wrong weight mapping would show in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([
                rng.uniform(0.5, 1.5, w.shape).astype("float32") if i in (0, 3)
                else rng.normal(0, 0.2, w.shape).astype("float32")
                for i, w in enumerate(layer.get_weights())
            ])
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 10, rng.normal(0, 1, bias.shape).astype("float32")])


@pytest.fixture(scope="module")
def family_bridges(tmp_path_factory):
    """Keras 3 side: the main branch of an MBAKT model (peer design) on each family, described for tf_keras."""
    root = tmp_path_factory.mktemp("bridges")
    described = {}
    for name, build in _tiny_backbones().items():
        model = mbakt_tf.MBAKT.from_backbone(
            build(), num_classes=5, config=mbakt_tf.MBAKTConfig(mode="mbakt", branch_design="peer"))
        main = model.main_model()
        _randomize(main)
        directory = str(root / name)
        describe.write_bridge(main, directory, num_probe=4)
        graph, _, _ = handoff.read_bridge(directory)
        described[name] = (directory, graph)
    return described


@pytest.fixture(scope="module")
def family_parity(family_bridges, tmp_path_factory):
    """tf_keras side, one tfmot process: every family rebuilt, outputs compared.

    Its work folder is given relative to the current one, as `scripts/optimize.py --model=saved_models/x`
    gives it (test_worker_resolves_a_relative_work_dir).
    """
    python = _tfmot_python()
    names = list(family_bridges)
    here = os.getcwd()
    root = tmp_path_factory.mktemp("parity_cwd")
    os.chdir(root)
    try:
        results = optimize.check_bridges([family_bridges[n][0] for n in names],
                                         os.path.join("saved_models", "work"), python=python)
    finally:
        os.chdir(here)
    return dict(zip(names, results)), root


@pytest.mark.parametrize("family", ["small_resnet", "resnet18", "mobilenet_v3_small", "cspdarknet_tiny"])
def test_bridge_parity_on_each_backbone_family(family, family_bridges, family_parity):
    _, graph = family_bridges[family]
    classes = {node["class"] for node in graph["nodes"]}
    assert EXPECTED_CLASSES[family] <= classes, f"{family}: {sorted(classes)}"
    if family == "cspdarknet_tiny":
        activations = {n["config"].get("activation") for n in graph["nodes"] if n["class"] == "Activation"}
        assert activations == {"swish"}
    parity = family_parity[0][family]
    assert parity["images"] == 4
    assert parity["max_abs_reference"] > 0.5  # the outputs are not trivially small
    assert parity["max_abs_diff"] <= handoff.PARITY_ATOL, parity
    assert parity["passed"]


def test_worker_resolves_a_relative_work_dir(family_parity):
    # The tfmot process runs inside work_dir; the fixture passed a relative one, from another folder.
    results, root = family_parity
    assert all(parity["passed"] for parity in results.values())
    assert os.path.isfile(root / "saved_models" / "work" / "job.json")


def test_unsupported_layer_is_a_clear_error():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Reshape((36, 4))(x)
    x = keras.layers.LSTM(3, name="my_lstm")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(handoff.UnsupportedLayerError, match=r"'my_lstm' of type .*LSTM"):
        describe.describe(model)

    class Scale(keras.layers.Layer):  # a custom layer with weights of its own
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), name="w")

        def call(self, x):
            return x * self.w

    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, Scale(name="my_scale")(inputs))
    with pytest.raises(handoff.UnsupportedLayerError, match="'my_scale'.*weights of its own"):
        describe.describe(model)

    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * t + 1.0, name="my_lambda")(inputs))
    with pytest.raises(handoff.UnsupportedLayerError, match="'my_lambda'.*not a known activation"):
        describe.describe(model)


def test_tfmot_process_modules_load_no_keras():
    """What runs in the tfmot process (and the format both sides share) never imports Keras 3."""
    code = ("import sys; import mbakt_tf.tfmot.worker, mbakt_tf.tfmot.rebuild, mbakt_tf.tfmot.handoff; "
            "loaded = [m for m in ('keras', 'keras_cv', 'keras_hub', 'mbakt_tf.model') if m in sys.modules]; "
            "sys.exit(f'loaded {loaded}' if loaded else 0)")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]


def test_optimize_config_validation():
    with pytest.raises(ValueError, match="methods"):
        optimize.OptimizeConfig(methods=("qat", "distill"))
    with pytest.raises(ValueError, match="target_sparsity"):
        optimize.OptimizeConfig(target_sparsity=1.0)
    with pytest.raises(ValueError, match="needs a teacher"):
        optimize.OptimizeConfig(methods=("qat_kd",), teacher="none")


def test_missing_tfmot_python_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(optimize.TFMOT_PYTHON_ENV, sys.executable)  # the Keras 3 venv: no tfmot
    if launch._has_tfmot(sys.executable):
        pytest.skip("this Python has tfmot")
    with pytest.raises(optimize.TfmotUnavailableError, match="cannot import tensorflow_model_optimization"):
        optimize.tfmot_python()


def test_segmentation_model_is_refused_before_any_work(tmp_path):
    python = _tfmot_python()
    model_path = str(tmp_path / "run" / "model.keras")
    os.makedirs(os.path.dirname(model_path))
    tiny_segmenter(mode="plain").save(model_path)
    with pytest.raises(saved_runs.NotMBAKTModelError, match="MBAKTSegmenter: QAT and pruning support"):
        optimize.optimize_from_file(model_path, config=optimize.OptimizeConfig(tfmot_python=python))
    assert not os.path.exists(tmp_path / "run_optimize")
    script = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "optimize.py"), f"--model={os.path.dirname(model_path)}",
         f"--tfmot_python={python}"], capture_output=True, text=True, timeout=300)
    assert script.returncode == 2 and "error: " in script.stderr and "QAT and pruning support" in script.stderr


def test_kd_loss_is_ce_plus_the_mbakt_distillation_term():
    import tensorflow as tf

    from mbakt_tf import losses
    from mbakt_tf.tfmot import worker

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 6)
    teacher, student = rng.normal(0, 2, (6, 4)), rng.normal(0, 2, (6, 4))
    packed = tf.constant(np.concatenate([labels[:, None], teacher], 1), tf.float32)
    student = tf.constant(student, tf.float32)
    ce = float(losses.cross_entropy(labels, student))
    kd = float(losses.distillation(teacher.astype("float32"), student, 3.0))
    np.testing.assert_allclose(float(tf.reduce_mean(worker.kd_loss(0.0, 3.0, 4)(packed, student))), ce, rtol=1e-5)
    mixed = float(tf.reduce_mean(worker.kd_loss(0.3, 3.0, 4)(packed, student)))
    np.testing.assert_allclose(mixed, 0.7 * ce + 0.3 * kd, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """QAT with ensemble KD and pruning, one short fine-tune each, on a tiny BYOT model.

    (QAT with the labels only is the same code with the distillation weight at 0,
    see test_kd_loss_is_ce_plus_the_mbakt_distillation_term.)
    """
    python = _tfmot_python()
    keras.utils.set_random_seed(0)
    splits = data_lib.load_classification(
        "synthetic", batch_size=16, augment=False, validation_fraction=0.0,
        synthetic_kwargs=dict(num_train=64, num_test=32, image_shape=(16, 16, 1), num_classes=4))
    model = mbakt_tf.MBAKT.from_backbone(
        mbakt_tf.backbones.small_image_resnet((8, 16), (1, 1), input_shape=(16, 16, 1)),
        num_classes=4, config=mbakt_tf.MBAKTConfig(mode="byot"))
    model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(splits.train, epochs=1, verbose=0)
    representative, _ = saved_runs.take_images(splits.train, 16)
    test_images, test_labels = saved_runs.take_images(splits.test)
    config = optimize.OptimizeConfig(
        methods=("qat_kd", "prune"), epochs=1, batch_size=16, target_sparsity=0.6, strict=False,
        representative_samples=16, tfmot_python=python)
    output_dir = str(tmp_path_factory.mktemp("optimize"))
    return optimize.optimize_model(model, output_dir, splits.train, representative, test_images,
                                   test_labels, config=config)


def test_qat_step_writes_a_fully_int8_tflite(tiny_run):
    report = tiny_run.report
    assert report["teacher"] == "ensemble"
    for name in ("qat_kd",):
        run = report["runs"][name]
        assert run["steps"] == 4 and np.isfinite(run["history"]["loss"]).all()
        assert run["kd"]
        path = tiny_run.files[f"{name}_int8"]
        structure = tflite.tflite_structure(path)
        assert structure["input"]["dtype"] == "int8"
        assert {o["dtype"] for o in structure["outputs"]} == {"int8"}
        assert structure["tensor_dtypes"].get("float32", 0) == 0, structure["tensor_dtypes"]
        assert structure["ops"]["CONV_2D"] == 6 and structure["ops"]["FULLY_CONNECTED"] == 1
        outputs = tflite.LiteRTModel(path).predict(np.full((2, 16, 16, 1), 128.0, np.float32))
        assert outputs["logits"].shape == (2, 4)


def test_pruning_step_reaches_the_target_sparsity(tiny_run):
    pruned = tiny_run.report["runs"]["pruned"]
    assert pruned["kd"] and pruned["schedule"]["end_step"] < pruned["steps"]
    sparsity = pruned["sparsity"]
    assert abs(sparsity["overall"] - 0.6) < 0.005
    assert set(sparsity["layers"]) >= {"stem_conv", "main_logits"}
    assert all(abs(s - 0.6) < 0.02 for s in sparsity["layers"].values()), sparsity["layers"]
    assert sparsity["zero_weights_after_strip"] >= sparsity["zero_weights"]  # strip_pruning kept them
    rows = {row["file"]: row for row in tiny_run.report["rows"] if row["file"]}
    assert rows["model_pruned_float32.tflite"]["gzip_bytes"] < rows["model_float32.tflite"]["gzip_bytes"]


def test_report_lists_every_model_and_passes_its_checks(tiny_run):
    report = tiny_run.report
    assert report["ok"], [c for c in report["checks"] if not c["passed"]]
    assert report["bridge"]["parity"]["max_abs_diff"] <= handoff.PARITY_ATOL
    assert [row["file"] for row in report["rows"]] == [
        None, "model_float32.tflite", "model_ptq_int8.tflite", "model_qat_kd_int8.tflite", "model_pruned_float32.tflite", "model_pruned_int8.tflite"]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in report["rows"])
    assert os.path.exists(os.path.join(tiny_run.output_dir, optimize.REPORT_MD))
    assert "| QAT int8 + ensemble KD |" in optimize.format_markdown(report)
