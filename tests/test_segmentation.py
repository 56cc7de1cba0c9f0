"""Segmentation: every head's shape, per-pixel losses with an ignore label, train step, mIoU,
export of the main branch, data (Fashion-MNIST masks, shapes, pets trimaps, joint augmentation).

Tiny shapes (16x16 images, 4 classes) on CPU; every model test calls `run_segmenter_test`.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl.testing import parameterized

import mbakt_tf
from mbakt_tf import data, export, losses, segmentation
from mbakt_tf.data import segmentation as seg_data
from tests.helpers import tiny_segmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE, NUM_CLASSES, IGNORE = (16, 16, 1), 4, 255


def tiny_maps(input_shape=SHAPE, num_classes=NUM_CLASSES, batch=8, seed=0):
    """Random images and label maps; the first rows of the first map are ignored."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(batch,) + tuple(input_shape)).astype("float32")
    labels = rng.integers(0, num_classes, size=(batch,) + tuple(input_shape[:2])).astype("int32")
    labels[0, :3] = IGNORE
    return images, labels


def run_segmenter_test(model, images, labels, tmp_dir, expected_branches):
    """Heads and shapes, one fit epoch, evaluate keys, main/early-exit cuts, config and save/load."""
    batch, height, width = 2, images.shape[1], images.shape[2]
    assert isinstance(model, mbakt_tf.MBAKTSegmenter)
    assert model.branch_names == ["main"] + [f"branch_{k}" for k in range(1, expected_branches + 1)]
    outputs = model.network(images[:batch], training=False)
    for branch in model.branch_names:  # every head predicts a full-resolution map
        assert tuple(outputs[f"{branch}_logits"].shape) == (batch, height, width, model.num_classes)
        assert outputs[f"{branch}_features"].shape == outputs["main_features"].shape
    if model.discriminator is not None:  # PatchGAN: a map of patch scores
        real, _ = model._adversary_inputs(outputs, [outputs["main_logits"]], outputs["main_logits"])
        scores = model.discriminator(model._discriminator_view(real, labels[:batch]))
        assert len(scores.shape) == 4 and scores.shape[-1] == 1

    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "main_miou" in history.history
    results = model.evaluate(images, labels, batch_size=4, return_dict=True, verbose=0)
    heads = model.branch_names + (["ensemble"] if expected_branches else [])
    for head in heads:
        assert 0.0 <= results[f"{head}_accuracy"] <= 1.0 and 0.0 <= results[f"{head}_miou"] <= 1.0
        assert np.isfinite(results[f"{head}_loss"])

    main = model.main_model()
    assert tuple(main.output.shape) == (None, height, width, model.num_classes)
    np.testing.assert_allclose(main(images, training=False), model.predict(images, verbose=0), atol=1e-6)
    for branch in model.branch_names[1:]:
        early_exit = model.branch_model(branch)
        assert main.count_params() < model.network.count_params()
        if model.config.resolved_branch_design("segmentation") == "exit":
            assert early_exit.count_params() < main.count_params()
        else:  # a peer, or a deep branch, is a whole encoder-decoder of the main branch's size
            assert early_exit.count_params() == main.count_params()
        assert not [layer for layer in early_exit.layers if "_adapt" in layer.name]

    restored = mbakt_tf.MBAKTSegmenter.from_config(model.get_config())
    assert (restored.config, restored.ignore_label) == (model.config, model.ignore_label)
    assert restored.count_params() == model.count_params()
    path = os.path.join(tmp_dir, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, mbakt_tf.MBAKTSegmenter) and loaded.ignore_label == model.ignore_label
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    loaded_results = loaded.evaluate(images, labels, batch_size=4, return_dict=True, verbose=0)
    for key, value in results.items():
        np.testing.assert_allclose(loaded_results[key], value, rtol=1e-4, atol=1e-5)
    return loaded


class SegmenterTest(parameterized.TestCase):
    def setUp(self):
        keras.utils.set_random_seed(0)
        self.images, self.labels = tiny_maps()

    @parameterized.named_parameters(
        ("plain", "plain", 0), ("mbakt", "mbakt", 2),  # byot: test_reported_losses_leave_ignored_pixels_out
        ("mbakt_features_one_branch", "mbakt", 1,
         {"adversarial_input": "features", "branch_design": "exit", "branch_stages": (2,)}),
    )
    def test_modes(self, mode, expected_branches, extra=None):
        model = tiny_segmenter(mode=mode, **(extra or {}))
        loaded = run_segmenter_test(
            model, self.images, self.labels, self.create_tempdir().full_path, expected_branches)
        assert (loaded.discriminator is None) == (mode != "mbakt")

    def test_gated_ensemble_weighs_each_head_per_image(self):
        model = tiny_segmenter(mode="mbakt", ensemble="gated")
        outputs = model.network(self.images, training=False)
        gate = np.asarray(outputs["gate"])
        np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-5)
        stacked = np.stack([np.asarray(outputs[f"{b}_logits"]) for b in model.branch_names], -1)
        np.testing.assert_allclose(
            np.asarray(model.branch_logits(self.images)["ensemble"]),
            (stacked * gate[:, None, None, None, :]).sum(-1), rtol=1e-5, atol=1e-5)

    @parameterized.named_parameters(("peer", "peer"), ("deep", "deep"))
    def test_peer_and_deep_decoders(self, design):
        """Peers copy the last decoder step, a deep branch every step after its own; every copy has
        new weights, the main branch stays the plain encoder-decoder, and training runs end to end."""
        model = tiny_segmenter(mode="mbakt", branch_design=design, ensemble="gated", gate_main_weight=0.8)
        plain = tiny_segmenter(mode="plain").main_model()
        assert model.main_model().count_params() == plain.count_params()
        layers = {layer.name: layer for layer in model.network.layers}
        # small_resnet8: 3 stages, decoder steps 1-3. Peers copy step 3; deep branches sit on steps
        # 1 and 2 (the default branch_stages), so branch_1 copies steps 2 and 3.
        copied = sorted(n for n in layers if n.startswith("branch_1_decoder_") and n.endswith("_conv"))
        assert copied == (["branch_1_decoder_step3_conv"] if design == "peer" else
                          ["branch_1_decoder_step2_conv", "branch_1_decoder_step3_conv"])
        assert not np.allclose(np.asarray(layers["branch_1_decoder_step3_conv"].kernel),
                               np.asarray(layers["decoder_step3_conv"].kernel))
        assert len(model.branch_names) == 3  # two peers, or one deep branch per step 1 and 2
        if design == "peer":  # the default design: test_modes_mbakt trains and round-trips it
            assert tiny_segmenter(mode="mbakt").config.resolved_branch_design("segmentation") == "peer"
            return
        run_segmenter_test(model, self.images, self.labels, self.create_tempdir().full_path, 2)

    def test_keras_cv_backbone_heads_are_full_resolution(self):
        # MobileNetV3: stride-2 first stage, two stages at the same resolution. Of the three default exit
        # steps, the one at 2x2 (under 1/8 of the 32x32 input) gets no head unless named.
        model = tiny_segmenter("mobilenet_v3_small", input_shape=(32, 32, 3), mode="mbakt", branch_design="exit")
        assert len(model.branch_names) == 3
        named = tiny_segmenter("mobilenet_v3_small", input_shape=(32, 32, 3), mode="mbakt", branch_design="exit",
                               branch_stages=(1, 2, 3))
        assert len(named.branch_names) == 4
        outputs = named.network(np.zeros((1, 32, 32, 3), "float32"))
        model = named
        for branch in model.branch_names:
            assert tuple(outputs[f"{branch}_logits"].shape) == (1, 32, 32, NUM_CLASSES)
            assert outputs[f"{branch}_features"].shape == outputs["main_features"].shape

    def test_main_branch_has_the_plain_models_parameters(self):
        for name, shape in (("small_resnet8", SHAPE), ("mobilenet_v3_small", (32, 32, 3))):
            plain = tiny_segmenter(name, input_shape=shape, mode="plain").main_model()
            mbakt = tiny_segmenter(name, input_shape=shape, mode="mbakt")
            assert mbakt.main_model().count_params() == plain.count_params()
            assert len(mbakt.main_model().weights) == len(plain.weights)
            assert mbakt.network.count_params() > plain.count_params()
            assert not any(layer.name.startswith("branch_") for layer in mbakt.main_model().layers)

    def test_reported_losses_leave_ignored_pixels_out(self):
        model = tiny_segmenter(mode="byot", alpha=0.3, beta=0.2)
        model.compile(g_optimizer=keras.optimizers.SGD(0.0))
        labels = self.labels.copy()
        labels[:, :, :8] = IGNORE  # the left half of every map
        outputs = model.network(self.images, training=True)
        logits = [np.asarray(outputs[f"{b}_logits"]) for b in model.branch_names]
        logs = model.train_on_batch(self.images, labels, return_dict=True)

        valid = labels != IGNORE
        def log_softmax(z):
            z = z - z.max(-1, keepdims=True)
            return z - np.log(np.exp(z).sum(-1, keepdims=True))
        def ce(z):
            picked = np.take_along_axis(log_softmax(z), np.where(valid, labels, 0)[..., None], -1)[..., 0]
            return -picked[valid].mean()
        def kd(teacher, student, t=3.0):
            p, log_p, log_q = np.exp(log_softmax(teacher / t)), log_softmax(teacher / t), log_softmax(student / t)
            return t**2 * (p * (log_p - log_q)).sum(-1)[valid].mean()
        np.testing.assert_allclose(logs["ce"], sum(ce(z) for z in logits), rtol=1e-4)
        np.testing.assert_allclose(logs["kd"], sum(kd(logits[0], z) for z in logits[1:]), rtol=1e-4)
        hint = sum(float(losses.hint(outputs[f"{b}_features"], outputs["main_features"]))
                   for b in model.branch_names[1:])
        expected = ce(logits[0]) + 0.7 * sum(ce(z) for z in logits[1:]) + 0.3 * logs["kd"] + 0.2 * hint
        np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)

    def test_one_train_step_updates_network_and_discriminator(self):
        model = tiny_segmenter(mode="mbakt")
        network_before = [np.array(v) for v in model.network.trainable_variables]
        d_before = [np.array(v) for v in model.discriminator.trainable_variables]
        logs = model.train_on_batch(self.images, self.labels, return_dict=True)
        assert all(np.isfinite(v) for v in logs.values())
        changed = [not np.allclose(b, v) for b, v in zip(network_before, model.network.trainable_variables)]
        assert sum(changed) >= len(changed) - 2
        assert all(not np.allclose(b, v) for b, v in zip(d_before, model.discriminator.trainable_variables))
        assert int(model.optimizer.iterations) == 1 and int(model.d_optimizer.iterations) == 1

    def test_bad_labels_and_arguments(self):
        model = tiny_segmenter(mode="plain")
        labels = self.labels.copy()
        labels[1, 0, 0] = NUM_CLASSES
        with self.assertRaisesRegex(Exception, "label values must be in \\[0, 4\\) or equal to ignore_label=255"):
            model.train_on_batch(self.images, labels)
        with self.assertRaisesRegex(ValueError, "integer labels of shape \\(batch, height, width\\)"):
            tiny_segmenter(mode="plain").train_on_batch(self.images, self.labels[:, 0])
        with self.assertRaisesRegex(ValueError, "ignore_label=3 is a class index"):
            tiny_segmenter(ignore_label=3)
        with self.assertRaisesRegex(ValueError, "Unknown task 'detection'"):
            mbakt_tf.MBAKT.from_backbone("small_resnet8", 4, SHAPE, task="detection")
        with self.assertRaisesRegex(ValueError, "Unexpected arguments for task='classification'"):
            mbakt_tf.MBAKT.from_backbone("small_resnet8", 4, SHAPE, ignore_label=255)


def test_miou_and_pixel_accuracy_against_a_known_confusion_matrix():
    # Rows: label, columns: prediction. IoU_k = C_kk / (row_k + col_k - C_kk).
    confusion = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 4]])
    iou = [3 / (4 + 4 - 3), 2 / (3 + 3 - 2), 4 / (5 + 5 - 4)]
    labels, predictions = [], []
    for true in range(3):
        for pred in range(3):
            labels += [true] * confusion[true, pred]
            predictions += [pred] * confusion[true, pred]
    labels += [IGNORE] * 4  # ignored pixels predicted as class 0: counting them would change IoU_0
    predictions += [0] * 4
    labels = np.array(labels, "int32").reshape(1, 2, 8)
    one_hot = np.eye(3, dtype="float32")[np.array(predictions).reshape(1, 2, 8)]
    assert segmentation.confusion_matrix(labels, one_hot.argmax(-1), 3).tolist() == confusion.tolist()
    assert segmentation.mean_iou(labels, one_hot.argmax(-1), 3) == pytest.approx(np.mean(iou))

    # A segmenter whose "network" returns its input as logits: evaluate() sees these predictions.
    maps = keras.Input((2, 8, 3))
    network = keras.Model(maps, {"main_logits": keras.layers.Identity()(maps), "main_features": maps})
    model = mbakt_tf.MBAKTSegmenter(network, config=mbakt_tf.MBAKTConfig(mode="plain"), ignore_label=IGNORE)
    model.compile()
    results = model.evaluate(one_hot, labels, return_dict=True, verbose=0)
    assert results["main_miou"] == pytest.approx(np.mean(iou), abs=1e-6)  # 0.5889
    assert results["main_accuracy"] == pytest.approx(9 / 12, abs=1e-6)


def test_export_main_branch_to_float32_tflite_with_parity(tmp_path):
    """Fast twin of the slow test below: an untrained segmenter, float32 only."""
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    model = tiny_segmenter(mode="mbakt")
    images, labels = tiny_maps()
    result = export.export_model(
        model, str(tmp_path / "export"), representative_images=images, test_images=images, test_labels=labels,
        class_names=[f"c{i}" for i in range(NUM_CLASSES)],
        config=export.ExportConfig(formats=("float32",), benchmark_runs=0, strict=False, fresh_process_check=False))
    checks = {c["name"]: c["passed"] for c in result.manifest["checks"]}
    for name in ("saved_model_logit_parity", "float32_logit_parity", "saved_model_parameters_equal_main_model",
                 "saved_model_no_foreign_variables", "float32_builtin_ops_only",
                 "float32_weight_op_counts_equal_keras"):
        assert checks[name], (name, result.manifest["checks"])
    runner = Interpreter(model_path=result.files["float32"]).get_signature_runner("serving_default")
    lite = np.concatenate([runner(images=image[None])["logits"] for image in images[:2]])
    assert lite.shape == (2,) + SHAPE[:2] + (NUM_CLASSES,)
    np.testing.assert_allclose(lite, model.main_model().predict(images[:2], verbose=0), atol=1e-3)


@pytest.mark.slow
def test_export_main_branch_to_saved_model_and_tflite_with_parity(tmp_path):
    """Trained (the int8 file's per-pixel agreement means something), float32 and int8."""
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    splits = seg_data.load_segmentation(
        "synthetic", batch_size=16, validation_fraction=0.0, augment=False,
        synthetic_kwargs=dict(image_shape=SHAPE, num_train=128, num_test=32, ignore_border=True))
    model = tiny_segmenter(mode="mbakt")
    model.compile(g_optimizer=keras.optimizers.Adam(3e-3))
    model.fit(splits.train, epochs=4, verbose=0, shuffle=False)
    images, labels = (np.concatenate(a) for a in zip(*[(x.numpy(), y.numpy()) for x, y in splits.test]))
    representative = next(iter(splits.train))[0].numpy()
    result = export.export_model(
        model, str(tmp_path / "export"), representative_images=representative, test_images=images,
        test_labels=labels, class_names=splits.info.class_names,
        config=export.ExportConfig(formats=("float32", "int8"), benchmark_runs=0, strict=False))
    checks = {c["name"]: c["passed"] for c in result.manifest["checks"]}
    for name in ("saved_model_logit_parity", "float32_logit_parity", "saved_model_top1_agreement",
                 "float32_top1_agreement", "saved_model_parameters_equal_main_model",
                 "saved_model_no_foreign_variables", "float32_builtin_ops_only", "int8_builtin_ops_only",
                 "float32_weight_op_counts_equal_keras", "int8_io_dtype", "int8_no_float_tensors"):
        assert checks[name], (name, result.manifest["checks"])
    evaluation = result.manifest["evaluation"]
    assert evaluation["keras"]["miou"] == pytest.approx(evaluation["float32"]["miou"], abs=1e-3)
    assert evaluation["int8"]["top1_agreement"] > 0.8  # per pixel

    # Independently of the exporter: its float32 file against the Keras main branch.
    runner = Interpreter(model_path=result.files["float32"]).get_signature_runner("serving_default")
    lite = np.concatenate([runner(images=image[None])["logits"] for image in images[:4]])
    keras_logits = model.main_model().predict(images[:4], verbose=0)
    assert lite.shape == (4,) + SHAPE[:2] + (NUM_CLASSES,)
    np.testing.assert_allclose(lite, keras_logits, atol=1e-3)


# ------------------------------------------------------------------------ data


def test_fashion_mnist_masks_follow_the_threshold_rule(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("test", 10)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    for key, filename in data.fashion_mnist.FILES.items():
        data.write_idx(os.path.join(tmp_path, filename), arrays[key])
    splits = data.load_segmentation("fashion_mnist", data_dir=str(tmp_path), batch_size=4,
                                    validation_fraction=0.2)
    info = splits.info
    assert (info.num_classes, info.class_names[:2], info.ignore_label) == (11, ["background", "T-shirt/top"], None)
    assert (info.num_train, info.num_validation, info.num_test) == (16, 4, 10)
    masks = np.concatenate([y.numpy() for _, y in splits.test])
    images = arrays["test_images"]
    expected = np.where(images > seg_data.FASHION_MNIST_THRESHOLD, arrays["test_labels"][:, None, None] + 1, 0)
    np.testing.assert_array_equal(masks, expected)


def test_synthetic_shapes_with_ignored_borders():
    splits = data.load_segmentation("synthetic", batch_size=8, synthetic_kwargs=dict(
        num_classes=5, image_shape=(24, 24, 3), num_train=40, num_test=16, ignore_border=True))
    info = splits.info
    assert (info.num_classes, info.input_shape, info.ignore_label) == (5, (24, 24, 3), IGNORE)
    images, masks = next(iter(splits.train))
    assert tuple(images.shape) == (8, 24, 24, 3) and tuple(masks.shape) == (8, 24, 24)
    assert set(np.unique(masks.numpy())) <= {0, 1, 2, 3, 4, IGNORE}
    assert IGNORE in np.unique(masks.numpy())
    with pytest.raises(ValueError, match="Unknown segmentation dataset 'cityscapes'"):
        data.load_segmentation("cityscapes")


def test_joint_augmentation_moves_image_and_mask_together():
    import tensorflow as tf

    masks = np.random.default_rng(0).integers(1, 5, size=(16, 12, 12)).astype("int32")
    images = (masks[..., None] * 40.0).astype("float32")  # image = 40 x mask, everywhere
    augmentation = seg_data.JointAugmentation((12, 12, 1), pad=3, flip=True, seed=1, mask_fill=0)
    out_images, out_masks = augmentation(tf.constant(images), tf.constant(masks))
    np.testing.assert_array_equal(out_images.numpy()[..., 0], 40.0 * out_masks.numpy())
    assert not np.array_equal(out_masks.numpy(), masks)
    assert (out_masks.numpy() == 0).any()  # shifted-in pixels: background


def test_pets_trimaps_through_mocked_tfds():
    import tensorflow_datasets as tfds

    assert seg_data.pets_mask(np.array([1, 2, 3, 0])).numpy().tolist() == [1, 0, IGNORE, IGNORE]
    with tfds.testing.mock_data(num_examples=12):
        with pytest.raises(ValueError, match="varying size"):
            data.load_segmentation("oxford_iiit_pet", batch_size=4)
        splits = data.load_segmentation("oxford_iiit_pet", batch_size=4, image_size=24, validation_fraction=0.25)
        info = splits.info
        assert (info.num_classes, info.input_shape, info.ignore_label) == (2, (24, 24, 3), IGNORE)
        assert (info.num_train, info.num_validation) == (9, 3)
        images, masks = next(iter(splits.train))
        assert tuple(images.shape) == (4, 24, 24, 3) and tuple(masks.shape) == (4, 24, 24)
        assert set(np.unique(masks.numpy())) <= {0, 1, IGNORE}


# --------------------------------------------------------------------- scripts


def test_comparison_summarizes_and_tabulates_miou(tmp_path):
    from mbakt_tf import comparison, reporting

    def result(miou):
        return {"test": {"main_miou": miou, "main_accuracy": 0.8, "ensemble_miou": miou + 0.02},
                "history": {"val_main_miou": [miou - 0.1, miou]}, "parameters": {"main": 1000},
                "train_seconds": 5.0}

    runs = {("plain", 0): result(0.40), ("plain", 1): result(0.42), ("mbakt", 0): result(0.45)}
    summary = comparison.summarize(runs)
    assert summary["plain"]["miou"]["main"]["mean"] == pytest.approx(0.41)
    table = reporting.markdown_table(summary, ["plain", "mbakt"], metric="miou")
    assert "main mIoU (%)" in table and "41.00 ± 1.41" in table and "| mbakt | 1 | 45.00 | 47.00 |" in table
    reporting.plot_validation_curves(runs, str(tmp_path / "miou.png"), ["plain", "mbakt"], metric="miou")
    assert (tmp_path / "miou.png").stat().st_size > 1000


@pytest.mark.slow
def test_train_and_evaluate_scripts_accept_the_segmentation_task(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(script, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)

    train = run("train.py", "--task=segmentation", "--dataset=synthetic", "--mode=mbakt", "--epochs=1",
                "--batch_size=16", "--train_limit=32", "--test_limit=16", f"--output_dir={tmp_path}",
                "--run_name=run", "--verbose=0")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "mIoU" in train.stdout and "\nbranch_2 " in train.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["train_config"]["task"] == "segmentation"
    assert {"main_miou", "ensemble_miou", "branch_1_accuracy"} <= set(results["test"])
    assert results["dataset"]["ignore_label"] is None
    evaluate = run("evaluate.py", f"--model={tmp_path / 'run'}", "--test_limit=16")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    main_row = [line for line in evaluate.stdout.splitlines() if line.startswith("main ")][0]
    assert float(main_row.split()[1].rstrip("%")) == pytest.approx(100 * results["test"]["main_miou"], abs=0.01)
    assert math.isfinite(results["test"]["loss"])


def test_the_adversary_does_not_see_ignored_pixels():
    """Ignored pixels are zero in what the discriminator sees (maps and label), so no adversarial
    gradient reaches them: like every other loss, the adversary leaves them out."""
    model = tiny_segmenter()
    images, labels = tiny_maps()
    logits = model.network(images, training=False)["main_logits"]
    with __import__("tensorflow").GradientTape() as tape:
        tape.watch(logits)
        view = model._discriminator_view(logits, labels)
        adv = losses.adversarial(model.discriminator(view))
    ignored = labels == IGNORE
    assert np.all(np.asarray(view)[ignored] == 0.0) and np.any(np.asarray(view)[~ignored] != 0.0)
    gradient = np.asarray(tape.gradient(adv, logits))
    assert np.all(gradient[ignored] == 0.0) and np.any(gradient[~ignored] != 0.0)


@pytest.mark.slow
def test_keras_cv_segmenter_is_not_erased_by_the_adversary(caplog):
    """The collapse case of issue 12 (README "Segmentation"): a keras-cv ResNet segmenter on shapes
    with ignored outlines, 8 epochs. The default config keeps its objects (test mIoU >= 0.85; plain
    reaches 0.94); the old design without the gradient cap erases them, and the guard says so."""
    import logging
    import runpy

    # The same run as the README's table: experiments/keras_cv_segmenter_collapse.py.
    experiment = runpy.run_path(os.path.join(ROOT, "experiments", "keras_cv_segmenter_collapse.py"))

    def run(config):
        miou, _, events = experiment["run"](config)
        return miou, events

    miou, events = run(mbakt_tf.MBAKTConfig(mode="mbakt"))
    assert miou >= 0.85 and events == []
    old_design = mbakt_tf.MBAKTConfig(**experiment["CONFIGS"]["old_design_uncapped"])  # exit heads on steps 1, 2
    with caplog.at_level(logging.WARNING, logger="mbakt_tf.guards"):
        miou, events = run(old_design)
    assert miou < 0.5 and len(events) == 1 and "adversarial takeover" in caplog.text
