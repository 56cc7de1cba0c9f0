import functools

import keras
import numpy as np
import pytest
from absl.testing import parameterized

import mbakt_tf
from mbakt_tf import backbones, losses
from tests.helpers import run_mbakt_model_test, tiny_batch, tiny_cspdarknet, tiny_model


@functools.lru_cache(maxsize=None)
def _plain_main_branch(backbone, input_shape):
    """(parameters, FLOPs, weight count) of the plain model's main branch, built once per backbone."""
    from mbakt_tf import flops

    plain = tiny_model(backbone, input_shape=input_shape, mode="plain").main_model()
    return plain.count_params(), flops.count_flops(plain), len(plain.weights)


class MBAKTModelTest(parameterized.TestCase):
    def setUp(self):
        keras.utils.set_random_seed(0)
        self.images, self.labels = tiny_batch(input_shape=(16, 16, 1), num_classes=4)

    @parameterized.named_parameters(
        ("plain", "plain", 0), ("byot", "byot", 2), ("mbakt", "mbakt", 2),
        ("mbakt_features", "mbakt", 2, {"adversarial_input": "features"}),
        ("mbakt_probabilities_mean", "mbakt", 2, {"adversarial_input": "probabilities", "ensemble": "mean"}),
        ("mbakt_exit_one_branch", "mbakt", 1, {"branch_design": "exit", "branch_stages": (2,)}),
        ("mbakt_exit_gated", "mbakt", 2, {"branch_design": "exit", "ensemble": "gated"}),
        ("mbakt_three_peers_two_stages", "mbakt", 3, {"num_peers": 3, "peer_stages": 2}),
        ("mbakt_deep", "mbakt", 2, {"branch_design": "deep", "discriminator_condition": "none"}),
        ("one_style", "mbakt", 2, {"gamma": 0.0, "beta": 0.0}),
    )
    def test_modes(self, mode, expected_branches, extra=None):
        model = tiny_model(mode=mode, **(extra or {}))
        # A saved-file round trip per design and mode here; every variant's in `make test-slow`.
        round_trip = not extra or (extra.get("branch_design") in ("exit", "deep") and "branch_stages" not in extra)
        loaded = run_mbakt_model_test(
            model, self.images, self.labels, self.create_tempdir().full_path, expected_branches, round_trip
        )
        assert (loaded.discriminator is None) == (not model.config.uses_adversary)
        if model.config.uses_adversary:
            assert loaded.d_optimizer is not None

    @parameterized.product(
        name=("small_resnet8", "mobilenet_v3_small", "resnet18"), design=("exit", "peer", "deep"),
    )
    def test_main_branch_has_the_plain_models_parameters_and_flops(self, name, design):
        from mbakt_tf import flops

        shape = (16, 16, 1) if name.startswith("small") else (32, 32, 3)
        plain_params, plain_flops, plain_weights = _plain_main_branch(name, shape)
        mbakt = tiny_model(name, input_shape=shape, mode="mbakt", branch_design=design, ensemble="gated")
        main = mbakt.main_model()
        assert main.count_params() == plain_params
        assert flops.count_flops(main) == plain_flops
        assert mbakt.network.count_params() > plain_params
        main_layers = {layer.name for layer in main.layers}
        assert not any(n.startswith(("branch_", "gate")) for n in main_layers)
        assert len(main.weights) == plain_weights
        # Every auxiliary branch is a standalone model (an early exit for "exit").
        for branch in mbakt.branch_names[1:]:
            assert tuple(mbakt.branch_model(branch).output.shape) == (None, 4)

    def test_peers_copy_the_last_stages_with_fresh_weights(self):
        model = tiny_model(mode="mbakt", branch_design="peer", num_peers=2, peer_stages=1)
        main_stage = model.network.get_layer("stage3_block1_1_conv")
        peer = model.network.get_layer("branch_1_stages").get_layer("stage3_block1_1_conv")
        assert peer is not main_stage
        assert peer.kernel.shape == main_stage.kernel.shape
        assert not np.allclose(np.array(peer.kernel), np.array(main_stage.kernel))
        # The trunk (stages 1-2) is shared: one copy of its weights.
        names = [w.path for w in model.network.weights]
        assert sum("stage2_block1_1_conv/kernel" in n for n in names) == 1
        assert sum("stage3_block1_1_conv/kernel" in n for n in names) == 3
        with self.assertRaisesRegex(ValueError, "peer_stages=3: this backbone has 3 stages"):
            tiny_model(mode="mbakt", branch_design="peer", peer_stages=3)

    def test_gate_weights_sum_to_one_and_make_the_ensemble(self):
        model = tiny_model(mode="mbakt", ensemble="gated", num_peers=2)
        outputs = model.network(self.images, training=False)
        gate = np.array(outputs["gate"])
        assert gate.shape == (len(self.images), 3)
        np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-5)
        assert (gate > 0).all()
        stacked = np.stack([np.array(outputs[f"{b}_logits"]) for b in model.branch_names], -1)
        expected = (stacked * gate[:, None, :]).sum(-1)
        ensemble = model.branch_logits(self.images)["ensemble"]
        np.testing.assert_allclose(np.array(ensemble), expected, rtol=1e-5, atol=1e-5)

    def test_gated_objective_adds_the_ensembles_cross_entropy(self):
        model = tiny_model(mode="mbakt", ensemble="gated", alpha=0.3, beta=0.0, gamma=0.0)
        model.compile(g_optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
        outputs = model.network(self.images, training=True)
        logits = [outputs[f"{b}_logits"] for b in model.branch_names]
        gate = np.array(outputs["gate"])
        ensemble = (np.stack([np.array(z) for z in logits], -1) * gate[:, None, :]).sum(-1)
        ce = sum(float(losses.cross_entropy(self.labels, z)) for z in logits)
        kd = sum(float(losses.distillation(ensemble, z, 3.0)) for z in logits)
        ensemble_ce = float(losses.cross_entropy(self.labels, ensemble))
        logs = model.train_on_batch(self.images, self.labels, return_dict=True)
        np.testing.assert_allclose(logs["ensemble_ce"], ensemble_ce, rtol=1e-4)
        np.testing.assert_allclose(logs["loss"], 0.7 * ce + 0.3 * kd + ensemble_ce, rtol=1e-4)

    @parameterized.parameters(("gated", False), ("gated_detached", True))
    def test_gate_cross_entropy_reaches_the_branches_only_in_one_style(self, ensemble, gate_only):
        import tensorflow as tf

        model = tiny_model(mode="mbakt", ensemble=ensemble, alpha=0.0, beta=0.0, gamma=0.0)
        head = model.network.get_layer("branch_1_logits").kernel
        gate = model.network.get_layer("gate").kernel
        with tf.GradientTape(persistent=True) as tape:
            outputs = model.network(self.images, training=True)
            logits = [outputs[f"{b}_logits"] for b in model.branch_names]
            ensemble_logits = model._ensemble(logits, outputs)
            terms, _ = model._generator_terms(self.labels, outputs, logits, ensemble_logits, ensemble_logits)
        head_gradient = tape.gradient(terms["ensemble_ce"], head)
        assert tape.gradient(terms["ensemble_ce"], gate) is not None
        assert (head_gradient is None) == gate_only

    def test_gate_can_start_on_the_main_branch(self):
        model = tiny_model(mode="mbakt", ensemble="gated", gate_main_weight=0.8)
        gate = np.array(model.network(self.images, training=False)["gate"])
        np.testing.assert_allclose(gate, np.tile([0.8, 0.1, 0.1], (len(gate), 1)), rtol=1e-5)
        restored = mbakt_tf.MBAKT.from_config(model.get_config())
        assert restored.config.gate_main_weight == 0.8
        with self.assertRaisesRegex(ValueError, "gate_main_weight must be in \\(0, 1\\)"):
            mbakt_tf.MBAKTConfig(gate_main_weight=1.0)

    @parameterized.parameters("logits", "probabilities", "features")
    def test_label_discriminator_view_discriminator_sees_outputs_and_one_hot_label(self, adversarial_input):
        model = tiny_model(mode="mbakt", adversarial_input=adversarial_input, discriminator_condition="label")
        width = 4 if adversarial_input != "features" else int(model.network.output["main_features"].shape[-1])
        assert model.discriminator.input.shape[-1] == width + 4
        seen = []
        original = model._discriminator_view
        model._discriminator_view = lambda x, y: seen.append(original(x, y)) or seen[-1]
        model.train_step((self.images, self.labels))
        real, fakes = np.array(seen[0]), np.array(seen[1])
        np.testing.assert_array_equal(real[:, width:], np.eye(4)[self.labels])
        assert fakes.shape[:2] == (len(model.branch_names), len(self.labels))  # every branch's, stacked
        for branch_fakes in fakes:
            np.testing.assert_array_equal(branch_fakes[:, width:], np.eye(4)[self.labels])
        unconditioned = tiny_model(mode="mbakt", adversarial_input=adversarial_input, discriminator_condition="none")
        assert unconditioned.discriminator.input.shape[-1] == width

    def test_logit_discriminator_learns_and_its_gradient_is_reported(self):
        model = tiny_model(mode="mbakt", adversarial_input="logits", gamma=1.0)
        model.compile(g_optimizer=keras.optimizers.SGD(0.0), d_optimizer=keras.optimizers.Adam(1e-2))
        for _ in range(30):
            logs = model.train_on_batch(self.images, self.labels, return_dict=True)
        # The teacher's (gated) logits differ from each branch's: D tells them apart.
        assert logs["d_balanced_accuracy"] > 0.75
        assert logs["adv_grad_ratio"] > 0.0

    def test_train_step_updates_each_network_with_its_own_optimizer(self):
        def snapshot(variables):
            return [np.array(v) for v in variables]

        def changed(before, variables):
            return [not np.allclose(b, np.array(v)) for b, v in zip(before, variables)]

        for frozen in ("generator", "discriminator"):
            model = tiny_model(mode="mbakt")
            g_lr, d_lr = (0.0, 1e-2) if frozen == "generator" else (0.1, 0.0)
            model.compile(
                g_optimizer=keras.optimizers.SGD(g_lr), d_optimizer=keras.optimizers.SGD(d_lr), run_eagerly=True
            )
            network_before = snapshot(model.network.trainable_variables)
            d_before = snapshot(model.discriminator.trainable_variables)
            model.train_on_batch(self.images, self.labels)
            network_changed = changed(network_before, model.network.trainable_variables)
            d_changed = changed(d_before, model.discriminator.trainable_variables)
            if frozen == "generator":
                assert not any(network_changed)
                assert all(d_changed)
            else:
                assert sum(network_changed) >= len(network_changed) - 2
                assert not any(d_changed)
            assert int(model.optimizer.iterations) == 1
            assert int(model.d_optimizer.iterations) == 1

    def test_train_step_is_the_same_traced_and_eager(self):
        # The arithmetic tests here run the step eagerly (`tiny_model(run_eagerly=True)`): this holds
        # them to the traced step, with every loss, the ramps, the cap and both optimizers in play.
        logs, weights = {}, {}
        for eager in (False, True):
            keras.utils.set_random_seed(0)
            model = tiny_model(mode="mbakt", distillation_warmup_steps=3, adversarial_warmup_steps=3,
                               max_adversarial_grad_ratio=1e-3, run_eagerly=eager)
            for _ in range(2):
                logs[eager] = model.train_on_batch(self.images, self.labels, return_dict=True)
            weights[eager] = [np.array(w) for w in model.weights + model.discriminator.weights]
        assert set(logs[True]) == set(logs[False]) and "adv_scale" in logs[True]
        for key, value in logs[False].items():
            np.testing.assert_allclose(logs[True][key], value, rtol=1e-4, atol=1e-6, err_msg=key)
        for traced, eager in zip(weights[False], weights[True]):
            np.testing.assert_allclose(eager, traced, rtol=1e-4, atol=1e-5)

    def test_discriminator_steps_run_that_many_updates(self):
        model = tiny_model(mode="mbakt", discriminator_steps=3, run_eagerly=True)
        model.train_on_batch(self.images, self.labels)
        assert int(model.d_optimizer.iterations) == 3

    @parameterized.parameters("plain", "byot", "mbakt")
    def test_reported_loss_is_the_configured_objective(self, mode):
        model = tiny_model(
            mode=mode, alpha=0.3, beta=0.2, gamma=0.5, branch_design="exit", ensemble="mean",
            adversarial_input="probabilities", discriminator_condition="none",
        )
        model.compile(g_optimizer=keras.optimizers.SGD(0.0), d_optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
        outputs = model.network(self.images, training=True)
        logits = [outputs[f"{b}_logits"] for b in model.branch_names]
        ce = [float(losses.cross_entropy(self.labels, z)) for z in logits]
        logs = model.train_on_batch(self.images, self.labels, return_dict=True)
        if mode == "plain":
            assert set(logs) == {"loss", "ce", "main_accuracy"}
            np.testing.assert_allclose(logs["loss"], ce[0], rtol=1e-4)
            return
        teacher = logits[0] if mode == "byot" else np.mean(np.stack(logits), 0)
        students = logits[1:] if mode == "byot" else logits
        kd = sum(float(losses.distillation(teacher, z, 3.0)) for z in students)
        hint = sum(
            float(losses.hint(outputs[f"{b}_features"], outputs["main_features"]))
            for b in model.branch_names[1:]
        )
        if mode == "byot":  # the teacher (main) keeps its full cross-entropy
            expected = ce[0] + 0.7 * sum(ce[1:]) + 0.3 * kd + 0.2 * hint
        else:
            expected = 0.7 * sum(ce) + 0.3 * kd + 0.2 * hint
        np.testing.assert_allclose(logs["kd"], kd, rtol=1e-4)
        np.testing.assert_allclose(logs["hint"], hint, rtol=1e-4)
        if mode == "byot":
            assert "adv" not in logs and "d_loss" not in logs
            np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)
        else:
            fakes = [keras.ops.softmax(z) for z in logits]  # adversarial_temperature = 1
            adv = sum(float(losses.adversarial(model.discriminator(f))) for f in fakes)
            np.testing.assert_allclose(logs["adv"], adv, rtol=1e-4)
            np.testing.assert_allclose(logs["loss"], expected + 0.5 * adv, rtol=1e-4)

    @parameterized.parameters(
        ("adversarial_weight", {"gamma": 0.4, "adversarial_warmup_steps": 4}),
        ("distillation_weight", {"alpha": 0.4, "distillation_warmup_steps": 4}),
    )
    def test_loss_weight_ramps_up(self, weight, config):
        model = tiny_model(mode="mbakt", run_eagerly=True, **config)
        weights = []
        for _ in range(5):
            weights.append(float(getattr(model, weight)()))
            model.train_on_batch(self.images, self.labels)
        np.testing.assert_allclose(weights, [0.1, 0.2, 0.3, 0.4, 0.4], rtol=1e-6)

    def test_fit_with_callbacks_and_validation(self):
        model = tiny_model(mode="mbakt")
        seen = []
        counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(logs))
        csv_path = self.create_tempdir().full_path + "/log.csv"
        history = model.fit(
            self.images, self.labels, batch_size=4, epochs=3, verbose=0,
            validation_data=(self.images, self.labels),
            callbacks=[
                counter,
                keras.callbacks.CSVLogger(csv_path),
                keras.callbacks.EarlyStopping(monitor="val_main_accuracy", mode="max", patience=100),
                keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=0, factor=0.5, min_lr=1e-5),
            ],
        )
        assert len(seen) == 6 and "d_loss" in seen[0] and "branch_1_accuracy" in seen[0]
        assert len(history.history["val_ensemble_accuracy"]) == 3
        with open(csv_path) as f:
            header = f.readline()
        assert "val_branch_2_accuracy" in header and "d_balanced_accuracy" in header




@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    {"adversarial_input": "features"}, {"adversarial_input": "probabilities", "ensemble": "mean"},
    {"branch_design": "exit", "branch_stages": (2,)}, {"num_peers": 3, "peer_stages": 2}, {"gamma": 0.0, "beta": 0.0},
])
def test_every_variant_survives_a_saved_file_round_trip(extra, tmp_path):
    model = tiny_model(mode="mbakt", **extra)
    images, labels = tiny_batch()
    expected_branches = 1 if "branch_stages" in extra else extra.get("num_peers", 2)
    loaded = run_mbakt_model_test(model, images, labels, str(tmp_path), expected_branches)
    assert (loaded.discriminator is None) == (not model.config.uses_adversary)

@pytest.mark.slow  # fast twins: test_named_backbones_build_and_expose_stages[cspdarknet_tiny], tests/test_keras_hub.py
@pytest.mark.parametrize("design, expected_branches", [("peer", 2), ("exit", 3), ("deep", 3)])
def test_keras_cv_backbone_object_every_design(design, expected_branches, tmp_path):
    # 64x64: a 2x2 last stage (peers on a 1x1 one are refused, tests/test_no_harm.py)
    model = mbakt_tf.MBAKT.from_backbone(
        tiny_cspdarknet((64, 64, 3)), num_classes=3, config=mbakt_tf.MBAKTConfig(branch_design=design)
    )
    model.compile()
    images, labels = tiny_batch((64, 64, 3), num_classes=3)
    run_mbakt_model_test(model, images, labels, str(tmp_path), expected_branches)


class BadInputTest(parameterized.TestCase):
    def test_unknown_backbone(self):
        with self.assertRaisesRegex(ValueError, "Unknown backbone 'resnet1000'.*small_resnet8"):
            mbakt_tf.MBAKT.from_backbone("resnet1000", 10, (28, 28, 1))

    def test_wrong_input_shape_rank(self):
        with self.assertRaisesRegex(ValueError, "input_shape must be .height, width, channels"):
            mbakt_tf.MBAKT.from_backbone("small_resnet8", 10, (28, 28))

    def test_wrong_image_rank_in_fit(self):
        model = tiny_model()
        images, labels = tiny_batch()
        with self.assertRaisesRegex(ValueError, "rank 4"):
            model.fit(images[..., 0], labels, batch_size=4, verbose=0)

    def test_labels_out_of_range(self):
        model = tiny_model(num_classes=4)
        images, labels = tiny_batch(num_classes=4)
        labels[0] = 4
        with self.assertRaisesRegex(Exception, "label values must be in \\[0, 4\\)"):
            model.fit(images, labels, batch_size=8, verbose=0)

    def test_unknown_branch_stage(self):
        for design in ("exit", "deep"):
            with self.assertRaisesRegex(ValueError, "branch_stages .*5.*stages \\[1, 2\\]"):
                tiny_model(branch_stages=(5,), branch_design=design)

    def test_compile_rejects_loss(self):
        model = tiny_model()
        with self.assertRaisesRegex(ValueError, "takes no 'loss'"):
            model.compile(loss="mse")

    @parameterized.parameters(
        ({"alpha": 1.5}, "alpha must be in \\[0, 1\\]"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"gamma": -0.1}, "gamma must be >= 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"mode": "fancy"}, "mode must be one of"),
        ({"discriminator_steps": 0}, "discriminator_steps must be >= 1"),
        ({"discriminator_label_smoothing": 0.7}, "label_smoothing must be < 0.5"),
        ({"teacher": "oracle"}, "teacher must be one of"),
        ({"branch_stages": ()}, "branch_stages must be stage indices"),
        ({"branch_design": "tree"}, "branch_design must be one of"),
        ({"ensemble": "vote"}, "ensemble must be one of"),
        ({"num_peers": 0}, "num_peers must be >= 1"),
        ({"distillation_warmup_steps": -1}, "distillation_warmup_steps must be >= 0"),
        ({"discriminator_condition": "class"}, "discriminator_condition must be one of"),
    )
    def test_config_rejects_nonsense(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            mbakt_tf.MBAKTConfig(**kwargs)

    def test_config_round_trip_and_unknown_field(self):
        config = mbakt_tf.MBAKTConfig(mode="byot", branch_stages=(1, 2), discriminator_units=(8,))
        assert mbakt_tf.MBAKTConfig.from_dict(config.to_dict()) == config
        with self.assertRaisesRegex(ValueError, "Unknown MBAKTConfig fields: \\['gama'\\]"):
            mbakt_tf.MBAKTConfig.from_dict({"gama": 1.0})


@pytest.mark.parametrize("name", ["small_resnet8", "resnet18", "mobilenet_v3_small", "cspdarknet_tiny"])
def test_named_backbones_build_and_expose_stages(name):
    shape = (16, 16, 1) if name.startswith("small") else (32, 32, 3)
    backbone = backbones.build_backbone(name, shape)
    stages = backbones.stage_outputs(backbone)
    assert len(stages) >= 3
    assert stages[-1] is backbone.output
    heights = [s.shape[1] for s in stages]
    assert heights == sorted(heights, reverse=True)
    network = mbakt_tf.branches.build_multi_branch_network(backbone, num_classes=5)
    outputs = network(np.zeros((1,) + shape, "float32"))
    assert len([k for k in outputs if k.endswith("_logits")]) == 1 + min(3, len(stages) - 1)


def test_lambda_activations_are_replaced_without_changing_outputs():
    backbone = tiny_cspdarknet()
    cleaned = backbones.without_lambda_activations(backbone)
    assert cleaned is not backbone
    assert not [layer for layer in cleaned.layers if isinstance(layer, keras.layers.Lambda)]
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(cleaned(images), backbone(images), atol=1e-5)
    assert cleaned.pyramid_level_inputs == backbone.pyramid_level_inputs
    plain = backbones.build_backbone("small_resnet8", (16, 16, 1))
    assert backbones.without_lambda_activations(plain) is plain


@pytest.mark.parametrize("cap", [1e-4, None])
def test_adversarial_gradient_is_capped_relative_to_cross_entropy(cap):
    images, labels = tiny_batch()
    model = tiny_model(gamma=10.0, max_adversarial_grad_ratio=cap, run_eagerly=True)
    logs = model.train_on_batch(images, labels, return_dict=True)
    if cap is None:
        assert logs["adv_scale"] == pytest.approx(1.0) and logs["adv_grad_ratio"] > 1e-3
    else:  # gamma=10 pushes far harder than 1e-4 of ce: scaled down to exactly the cap
        assert logs["adv_scale"] < 1.0 and logs["adv_grad_ratio"] == pytest.approx(cap, rel=1e-3)


def test_keras_then_mbakt_tf_is_enough_to_load_a_saved_model(tmp_path):
    """`import keras, mbakt_tf` registers the model classes although the package imports lazily."""
    import subprocess
    import sys

    path = str(tmp_path / "m.keras")
    tiny_model(mode="plain").save(path)
    code = f"import keras, mbakt_tf; print(type(keras.models.load_model({path!r})).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "MBAKT"


def test_every_method_the_train_step_calls_converts_with_autograph():
    # A method whose body is only a docstring fails AutoGraph's conversion; tracing then warns and
    # runs it unconverted (seen under `scripts/benchmark.py --jit_compile`).
    import tensorflow as tf

    from mbakt_tf.multi_branch_model import MultiBranchModel
    from mbakt_tf.segmentation_model import MBAKTSegmenter

    for method in (MultiBranchModel._check_label_shape, MBAKTSegmenter._check_label_shape):
        tf.autograph.to_graph(method)
