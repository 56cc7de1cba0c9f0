"""Strategies: mirrored on 2 logical CPUs equals one device; two local workers train; helpers.

Logical CPU devices must be configured before TensorFlow initialises, and
MultiWorkerMirroredStrategy before any op runs, so those tests run in fresh
processes.
"""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from mbakt_tf import custom_loop, distribute, resume
from tests.helpers import tiny_batch, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One training step (SGD with momentum for the network, Adam for the
# discriminator, adversarial term on from step 1) on one global batch of 8,
# under MirroredStrategy over 2 logical CPUs (4 examples per replica) and
# under OneDeviceStrategy (all 8 on one device), from the same initial weights.
#
# BatchNorm: Keras normalises with per-replica batch statistics under a
# strategy (synchronized=False), so 2 replicas do not compute what one device
# computes on the whole batch. Three cases, all in one process:
#   sync_bn:   synchronized BN (distribute.synchronize_batchnorm) on a batch of
#              8 different images: global statistics, must match one device.
#   keras_bn:  Keras's default BN on a batch whose two halves are the same 4
#              images: per-replica statistics equal the global ones, so it must
#              match too (checks the default path: loss scaling by replicas,
#              gradient all-reduce, both optimizers, BN moving statistics).
#   control:   default BN on 8 different images: must differ (the comparison
#              can fail; per-replica statistics are visible).
# sync_bn runs compiled, as training does; the other two run eagerly (same
# math, a third of the time: one step does not repay tracing under a strategy).
MIRRORED_SCRIPT = r"""
import json, sys
from mbakt_tf import distribute
mirrored = distribute.make_strategy("mirrored", cpu_devices=2)
import keras, numpy as np, tensorflow as tf
import mbakt_tf
from tests.helpers import tiny_batch

def build(sync_bn, eager, precise_bn=True):
    keras.utils.set_random_seed(0)
    model = mbakt_tf.MBAKT.from_backbone(
        "small_resnet8", num_classes=4, input_shape=(16, 16, 1),
        config=mbakt_tf.MBAKTConfig(mode="mbakt", adversarial_warmup_steps=0, gamma=0.5))
    if not precise_bn:
        model.precise_batch_norm_examples = 0
    if sync_bn:
        distribute.synchronize_batchnorm(model)
    model.compile(g_optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  d_optimizer=keras.optimizers.Adam(1e-2), run_eagerly=eager)
    return model

def one_step(strategy, sync_bn, eager, images, labels, precise_bn=True):
    with strategy.scope():
        model = build(sync_bn, eager, precise_bn)
    initial = [np.array(v.numpy()) for v in model.weights]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    state = [np.array(v.numpy()) for v in
             model.weights + model.optimizer.variables + model.d_optimizer.variables]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(initial, state))
    steps = [int(model.optimizer.iterations.value.numpy()), int(model.d_optimizer.iterations.value.numpy())]
    return state, moved, steps, model

images, labels = tiny_batch(batch=8, num_classes=4)
same_halves = (np.concatenate([images[:4]] * 2), np.concatenate([labels[:4]] * 2))
one = tf.distribute.OneDeviceStrategy("/cpu:0")
out = {"replicas": mirrored.num_replicas_in_sync}
cases = sys.argv[1].split(",")
# control without precise batch norm (MultiBranchModel.fit), which would set every replica's copy
# of the moving statistics from the same images: the per-replica copies below are what
# average_replica_variables reconciles when it is off (precise_batch_norm_examples=0, custom loops).
for case, sync_bn, eager, (x, y), precise in [("sync_bn", True, False, (images, labels), True),
                                              ("keras_bn", False, True, same_halves, True),
                                              ("control", False, True, (images, labels), False)]:
    if case not in cases:
        continue
    a, moved, steps, model = one_step(mirrored, sync_bn, eager, x, y, precise)
    b, _, _, _ = one_step(one, sync_bn, eager, x, y, precise)
    out[case] = {
        "max_abs": max(float(np.abs(p - q).max()) for p, q in zip(a, b)),
        "moved": moved,
        "steps": steps,
    }

# Default BN on different halves: each replica's moving statistics followed its
# own half; average_replica_variables must make every copy their mean.
copies = lambda: [[np.array(c.numpy()) for c in v.value.values]
                  for v in distribute.replica_local_variables(model)]
before = copies()
distribute.average_replica_variables(model, mirrored)
after = copies()
out["bn_copies"] = {
    "count": len(before),
    "spread_before": max(float(np.abs(c[0] - c[1]).max()) for c in before),
    "spread_after": max(float(np.abs(c[0] - c[1]).max()) for c in after),
    "mean_error": max(float(np.abs(a[0] - (b[0] + b[1]) / 2).max()) for a, b in zip(after, before)),
}
print("RESULT " + json.dumps(out))
"""


def run_python(code, *args, timeout=600, env=None):
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
    )


def result_line(process):
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, process.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def check_mirrored(out, cases):
    assert out["replicas"] == 2
    # float32 sums in a different order (two half-batch sums all-reduced vs one
    # sum): observed max |difference| ~1e-6 on weights that move by ~0.25.
    tolerance = 1e-5
    for case in {"sync_bn", "keras_bn"} & set(cases):
        assert out[case]["steps"] == [1, 1], out  # one generator and one discriminator update
        assert out[case]["moved"] > 0.05, out  # the step really changed the weights
        assert out[case]["max_abs"] < tolerance, (case, out)
    assert out["control"]["max_abs"] > 1e-3, out  # per-replica BN statistics differ
    # ...and so do the replicas' copies of the moving statistics, until averaged.
    copies = out["bn_copies"]
    assert copies["count"] > 10 and copies["spread_before"] > 1e-3, copies
    assert copies["spread_after"] == 0.0 and copies["mean_error"] < 1e-6, copies


def test_mirrored_on_two_cpus_matches_one_device_after_one_step_eagerly():
    """Fast twin of the slow test below: Keras's default batch norm only, run eagerly (no tracing)."""
    cases = ["keras_bn", "control"]
    check_mirrored(result_line(run_python(MIRRORED_SCRIPT, ",".join(cases))), cases)


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_one_device_after_one_step():
    """Also synchronized batch norm, compiled as training runs it."""
    cases = ["sync_bn", "keras_bn", "control"]
    check_mirrored(result_line(run_python(MIRRORED_SCRIPT, ",".join(cases))), cases)


@pytest.mark.slow
def test_two_local_workers_train_with_multi_worker_strategy(tmp_path):
    logs = tmp_path / "logs"
    command = [
        sys.executable, os.path.join(ROOT, "scripts", "launch_workers.py"), "--num_workers=2",
        f"--log_dir={logs}", "--timeout=500", "--",
        os.path.join(ROOT, "scripts", "train.py"), "--strategy=multi_worker",
        "--dataset=synthetic", "--mode=mbakt", "--epochs=2", "--batch_size=16",
        "--train_limit=48", "--test_limit=32", "--validation_fraction=0.02",
        f"--output_dir={tmp_path}/out", "--run_name=run", "--verbose=2",
        f"--backup_dir={tmp_path}/backup", "--backup_steps=2",
    ]
    process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    worker_logs = {p.name: p.read_text() for p in sorted(logs.iterdir())}
    assert process.returncode == 0, (process.stderr[-2000:], {k: v[-2000:] for k, v in worker_logs.items()})
    assert "worker 1 done" in worker_logs["worker_1.log"]
    run_dir = tmp_path / "out" / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["distribution"] == {"strategy": "multi_worker", "replicas": 2}
    assert len(results["history"]["loss"]) == 2 and np.all(np.isfinite(results["history"]["loss"]))
    assert "val_main_accuracy" in results["history"]
    assert set(results["test"]) >= {"main_accuracy", "ensemble_accuracy"}
    assert (run_dir / "model.keras").is_file() and (run_dir / "main_branch.keras").is_file()
    assert not (tmp_path / "backup").exists()  # deleted once the outputs were saved
    assert sorted(os.listdir(tmp_path / "out")) == ["run"]  # only the chief wrote


def test_custom_loop_trains_like_fit():
    """The multi-worker loop runs the model's own train_step: same weights as fit."""
    images, labels = tiny_batch(batch=24, num_classes=4)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    strategy = tf.distribute.get_strategy()
    models = []
    for use_fit in (True, False):
        keras.utils.set_random_seed(1)
        model = tiny_model(mode="mbakt")
        stream = resume.training_stream(dataset)
        if use_fit:
            history = model.fit(stream, steps_per_epoch=3, epochs=2, verbose=0,
                                validation_data=dataset, shuffle=False).history
        else:
            history = custom_loop.fit(model, stream, 2, strategy, steps_per_epoch=3,
                                      validation_data=dataset, verbose=0).history
        models.append((model, history))
    (fit_model, fit_history), (loop_model, loop_history) = models
    assert int(loop_model.optimizer.iterations) == 6 and int(loop_model.d_optimizer.iterations) == 6
    for a, b in zip(fit_model.weights, loop_model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert set(fit_history) == set(loop_history)
    for key in fit_history:
        np.testing.assert_allclose(fit_history[key], loop_history[key], rtol=1e-5, atol=1e-6)
    results = custom_loop.evaluate(loop_model, dataset, strategy)
    expected = loop_model.evaluate(dataset, return_dict=True, verbose=0)
    assert set(results) == set(expected)
    for key in results:
        np.testing.assert_allclose(results[key], expected[key], rtol=1e-5)


def test_strategy_names_and_batch_check():
    assert distribute.make_strategy("default").num_replicas_in_sync == 1
    assert distribute.make_strategy("one_device").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.make_strategy("parameter_server")
    with pytest.raises(ValueError, match="cpu_devices > 1 does not apply"):
        distribute.make_strategy("multi_worker", cpu_devices=2)
    with pytest.raises(ValueError, match="cpu_devices must be >= 1"):
        distribute.configure_cpu_devices(0)
    # This process initialised TensorFlow already: the message says what to do.
    with pytest.raises(RuntimeError, match="before any TensorFlow op runs"):
        distribute.configure_cpu_devices(3)

    class TwoReplicas:
        num_replicas_in_sync = 2

    distribute.check_batch_size(16, TwoReplicas())
    with pytest.raises(ValueError, match="batch_size=15 is not divisible by the 2 replicas"):
        distribute.check_batch_size(15, TwoReplicas())
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_tf_config_and_free_ports():
    ports = distribute.free_ports(3)
    assert len(set(ports)) == 3
    workers = [f"127.0.0.1:{p}" for p in ports[:2]]
    assert distribute.tf_config(workers, 1) == {
        "cluster": {"worker": workers}, "task": {"type": "worker", "index": 1},
    }


def test_launcher_gives_each_worker_its_index_and_stops_the_others_on_failure(tmp_path):
    ok = ("import json, os; c = json.loads(os.environ['TF_CONFIG']); "
          "open(os.path.join(%r, str(c['task']['index'])), 'w').write(','.join(c['cluster']['worker']))"
          % str(tmp_path))
    assert distribute.launch_local_workers([sys.executable, "-c", ok], num_workers=2) == [0, 0]
    assert sorted(os.listdir(tmp_path)) == ["0", "1"]
    assert (tmp_path / "0").read_text() == (tmp_path / "1").read_text()

    fail_or_hang = ("import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
                    "sys.exit(3) if i == 0 else time.sleep(120)")
    start = time.time()
    codes = distribute.launch_local_workers([sys.executable, "-c", fail_or_hang], num_workers=2)
    assert codes[0] == 3 and codes[1] != 0
    assert time.time() - start < 60
