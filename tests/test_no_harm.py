"""No harm from MBAKT (issue 21): precise batch-norm statistics after `fit`, and the no-harm matrix.

The matrix itself (`experiments/no_harm_matrix.py`, docs/no_harm.md) takes hours on CPU; the slow
test here runs its every cell at the tiny scale: every backbone family the library accepts, both
tasks, plain / peer / exit, one seed; each trains, is evaluated and recorded, and the table lists it.
"""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

import mbakt_tf
from mbakt_tf import branches, data, no_harm_report, resume
from mbakt_tf.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _matrix():
    spec = importlib.util.spec_from_file_location(
        "no_harm_matrix", os.path.join(ROOT, "experiments", "no_harm_matrix.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stale_run(precise):
    """A plain small_resnet8 trained 3 epochs with batch norms at momentum 0.999 (keras-cv MobileNetV3's):
    Keras's moving averages then still hold ~95% of their initial values."""
    keras.utils.set_random_seed(0)
    images, labels = synthetic.make_synthetic(num_classes=4, image_shape=(16, 16, 1), num_examples=256)
    train = data.make_dataset((images, labels), batch_size=16, training=True)
    model = mbakt_tf.MBAKT.from_backbone("small_resnet8", 4, (16, 16, 1), config=mbakt_tf.MBAKTConfig(mode="plain"))
    model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    for layer in branches.batch_norms(model.network):
        layer.momentum = 0.999
    if not precise:
        model.precise_batch_norm_examples = 0
    model.fit(resume.training_stream(train), steps_per_epoch=16, epochs=3, verbose=0)  # training.train's way
    return model, images, labels


def test_fit_recomputes_batch_norm_statistics_so_inference_mode_matches_training_mode():
    fixed, images, labels = _stale_run(precise=True)
    stale, _, _ = _stale_run(precise=False)
    accuracy = {}
    for name, model in (("fixed", fixed), ("stale", stale)):
        net = model.network
        trainable = [v.value for v in net.trainable_variables]
        non_trainable = [v.value for v in net.non_trainable_variables]
        for training in (True, False):
            outputs, _ = net.stateless_call(trainable, non_trainable, images[:128], training=training)
            accuracy[name, training] = float(np.mean(np.argmax(outputs["main_logits"], -1) == labels[:128]))
    # Without the recomputation the modes part (the mismatch is real); with it they agree.
    assert accuracy["stale", True] - accuracy["stale", False] > 0.3
    assert abs(accuracy["fixed", True] - accuracy["fixed", False]) <= 0.05


def test_recalibrated_statistics_are_the_mean_batch_statistics():
    rng = np.random.default_rng(0)
    images = rng.normal(5.0, 3.0, size=(48, 6, 6, 2)).astype("float32")
    inputs = keras.Input((6, 6, 2))
    norm = keras.layers.BatchNormalization(momentum=0.99)
    network = keras.Model(inputs, keras.layers.ReLU()(norm(inputs)))
    batches = [(images[i:i + 16], None) for i in range(0, 48, 16)]
    assert branches.recalibrate_batch_norms(network, batches) == 3
    np.testing.assert_allclose(np.array(norm.moving_mean), images.mean(axis=(0, 1, 2)), rtol=1e-5)
    variances = np.mean([images[i:i + 16].var(axis=(0, 1, 2)) for i in range(0, 48, 16)], axis=0)
    np.testing.assert_allclose(np.array(norm.moving_variance), variances, rtol=1e-4)
    assert norm.momentum == 0.99  # restored


def test_matrix_table_marks_cells_below_the_bar():
    matrix = _matrix()
    rows = [dict(backbone="cspdarknet", task="classification", variant=v, seed=0, test=t, inference_mode_gap=[g])
            for v, t, g in [("plain", 0.60, 0.01), ("peer", 0.55, -0.2), ("exit", 0.61, 0.0)]]
    text = matrix.table(rows)
    assert "| classification | cspdarknet | 0.600 (1) | 0.550 (1) | 0.610 (1) | -0.050 **below bar** | 0.200 |" in text
    assert tuple(matrix.BACKBONES) == no_harm_report.BACKBONE_ORDER  # every family has its row's place


@pytest.mark.slow
def test_every_cell_of_the_no_harm_matrix_trains_and_is_recorded(tmp_path):
    matrix = _matrix()
    matrix.main(["--scale=tiny", f"--out={tmp_path}", "--seeds=0"])
    records = matrix.load_records(str(tmp_path), "tiny")
    expected = {(b, t, v) for b in matrix.BACKBONES for t in matrix.TASKS for v in matrix.VARIANTS}
    assert {(r["backbone"], r["task"], r["variant"]) for r in records} == expected
    refused = {(r["backbone"], r["task"], r["variant"]) for r in records if "refused" in r}
    assert refused == {("cspdarknet", "classification", "peer")}  # a 1x1 last stage (model.classification_design)
    for r in records:
        if "refused" in r:
            assert "peers copy the last stage, whose maps are 1x1" in r["refused"]
            continue
        assert 0.0 <= r["test"] <= 1.0 and len(r["inference_mode_gap"]) == matrix.SCALES["tiny"]["epochs"]
        assert r["design"] == (None if r["variant"] == "plain" else r["variant"])
    table = (tmp_path / "tiny.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| classification |", "| segmentation |"))]
    assert len(rows) == len(matrix.BACKBONES) * len(matrix.TASKS)
    # Resumable: a second call finds every record and trains nothing.
    before = {p: os.path.getmtime(p) for p in tmp_path.glob("tiny/*.json")}
    matrix.main(["--scale=tiny", f"--out={tmp_path}", "--seeds=0"])
    assert before == {p: os.path.getmtime(p) for p in tmp_path.glob("tiny/*.json")}
    json.loads((tmp_path / "tiny" / "segmentation__cspdarknet__exit__seed0.json").read_text())


def test_exit_heads_on_decoder_steps_a_few_pixels_wide_are_left_out_by_default_and_named_in_a_warning(caplog):
    # The matrix's losing cell: exit heads at 1x1 and 2x2 on a CSPDarkNet segmenter (32x32 inputs).
    import keras_cv

    def cspdarknet():
        return keras_cv.models.CSPDarkNetBackbone(
            stackwise_channels=[16, 32, 64, 128], stackwise_depth=[1, 1, 1, 1], include_rescaling=True,
            input_shape=(32, 32, 3))

    with caplog.at_level("INFO", logger="mbakt_tf.segmentation"):
        model = mbakt_tf.MBAKT.from_backbone(cspdarknet(), 4, (32, 32, 3), task="segmentation",
                                             config=mbakt_tf.MBAKTConfig(branch_design="exit"))
    assert model.branch_names == ["main", "branch_1"]  # the 4x4 step's exit only
    assert "no default exit head on decoder steps [1, 2]" in caplog.text and "exit heads on" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mbakt_tf.segmentation"):  # named: built, with a warning
        model = mbakt_tf.MBAKT.from_backbone(cspdarknet(), 4, (32, 32, 3), task="segmentation",
                                             config=mbakt_tf.MBAKTConfig(branch_design="exit", branch_stages=(1, 2, 3)))
    assert len(model.branch_names) == 4
    assert "exit heads on decoder step 1 at 1x1, step 2 at 2x2 predict a 32x32 map" in caplog.text
    assert "branch_design='peer'" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="mbakt_tf.segmentation"):  # small_resnet8: steps at 1/4 and up
        mbakt_tf.MBAKT.from_backbone("small_resnet8", 4, (28, 28, 1), task="segmentation",
                                     config=mbakt_tf.MBAKTConfig(branch_design="exit"))
    assert "exit head" not in caplog.text


def test_peers_on_a_one_pixel_last_stage_are_not_the_default_and_refused_when_named(caplog):
    # The matrix's losing cell: peers on a keras-cv CSPDarkNet classifier at 32x32 (last stage 1x1).
    from mbakt_tf import backbones
    from mbakt_tf import model as model_lib
    from tests.helpers import tiny_cspdarknet as cspdarknet

    with caplog.at_level("INFO", logger="mbakt_tf.model"):
        model = mbakt_tf.MBAKT.from_backbone(cspdarknet(), 4)
    assert model.config.branch_design == "exit" and len(model.branch_names) == 4
    assert "default branch design here is 'exit', not 'peer'" in caplog.text and "1x1" in caplog.text
    restored = mbakt_tf.MBAKT.from_config(model.get_config())
    assert restored.branch_names == model.branch_names
    refusal = "branch_design='peer': peers copy the last stage, whose maps are 1x1"
    with pytest.raises(model_lib.DesignRefusedError, match=refusal):
        mbakt_tf.MBAKT.from_backbone(cspdarknet(), 4, config=mbakt_tf.MBAKTConfig(branch_design="peer"))
    # A 2x2 last stage (64x64 images), and a 1x1 one on another family (the library's resnet18): peers.
    assert mbakt_tf.MBAKT.from_backbone(cspdarknet((64, 64, 3)), 4).config.resolved_branch_design() == "peer"
    assert model_lib.classification_design(mbakt_tf.MBAKTConfig(), backbones.build_backbone(
        "resnet18", (32, 32, 3))).branch_design is None
