"""What runs in the tfmot process: rebuild the main branch, QAT, pruning, TFLite files.

Started by `launch.run_worker` with the Python of `launch.tfmot_python()`
(`.venv-optimize`), as `python -m mbakt_tf.tfmot.worker <job.json>`. It
imports tensorflow-model-optimization (which switches TensorFlow to tf_keras)
and never Keras 3 code: only `handoff`, `rebuild`, `export.serving`, `export.tflite` and
`atomic` of this package. It rebuilds the main branch in tf_keras (checking
parity with the Keras 3 model), then for each run of the job fine-tunes a copy
with cross-entropy on the labels plus, with KD, `alpha * T^2 *
KL(softmax(teacher / T) || softmax(student / T))`:

* `qat`: `tfmot.quantization.keras.quantize_apply` on an annotated copy (layers
  the default 8-bit registry lacks, e.g. `Rescaling`, `Multiply`, get an
  output-only quantize config), then a full-int8 TFLite file;
* `prune`: `prune_low_magnitude` with a `PolynomialDecay` schedule from 0 to the
  target sparsity over the first `end_fraction` of the steps, `strip_pruning`,
  then float32 and post-training int8 TFLite files.

It writes the TFLite files into the job's `output_dir` and `worker_result.json`
(`handoff.write_result`); progress lines start with `PROGRESS `.

Example:
```
.venv-optimize/bin/python -m mbakt_tf.tfmot.worker saved_models/quickstart_optimize/work/job.json
```
"""

import os
import sys
import time

import numpy as np

from mbakt_tf.export import serving, tflite
from mbakt_tf.tfmot import handoff, rebuild

def _tfmot():
    import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1

    return tfmot


def _output_quantize_config():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs,
    )

    return default_8bit_quantize_configs.Default8BitOutputQuantizeConfig


def quantize_model(model):
    """A QAT copy of a tf_keras functional `model` (tfmot's default 8-bit scheme).

    Layers in tfmot's default registry (and BatchNormalization, which its
    transforms fold into the preceding convolution) are annotated as tfmot
    would; the rest (`Rescaling`, `Multiply`, the bridge's slice layer ...)
    get an output-only quantize config, so every tensor has a range and the
    TFLite file can be fully int8.
    """
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    tfmot = _tfmot()
    q = tfmot.quantization.keras
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    output_config = _output_quantize_config()

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        if registry.supports(layer) or isinstance(layer, tf_keras.layers.BatchNormalization):
            return q.quantize_annotate_layer(layer)
        return q.quantize_annotate_layer(layer, output_config())

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    scope = {**rebuild.custom_objects(), output_config.__name__: output_config}
    with q.quantize_scope(scope):
        return q.quantize_apply(annotated)


def pruning_schedule(total_steps, target_sparsity, end_fraction):
    """`PolynomialDecay` from 0 to `target_sparsity`, reaching it exactly on an update step.

    Masks update every `frequency` steps (about 10 updates) from step 0; the
    last update, at `end_step`, applies the full target.
    """
    tfmot = _tfmot()
    wanted_end = max(1, int(round(total_steps * end_fraction)) - 1)
    frequency = max(1, wanted_end // 10)
    end_step = max(frequency, frequency * (wanted_end // frequency))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(target_sparsity), begin_step=0,
        end_step=end_step, frequency=frequency)
    return schedule, {"begin_step": 0, "end_step": end_step, "frequency": frequency,
                      "total_steps": total_steps, "target_sparsity": float(target_sparsity)}


def prune_model(model, schedule):
    """A copy of a tf_keras `model` whose prunable layers are wrapped by `prune_low_magnitude`.

    Layers with weights tfmot's prune registry knows how to prune (Conv2D,
    DepthwiseConv2D, Dense, ...) are wrapped; the rest stay as they are
    (`prune_low_magnitude` on the whole model would refuse e.g. `Rescaling`).
    """
    import tf_keras
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    tfmot = _tfmot()
    registry = prune_registry.PruneRegistry

    def wrap(layer):
        if registry.supports(layer) and registry._weight_names(layer):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return tf_keras.models.clone_model(model, clone_function=wrap)


def sparsity_of(pruned_model):
    """Fraction of zeros in the weights the pruning wrappers of `pruned_model` prune.

    Returns overall and per-layer figures, and how many weights that is.
    """
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    wrapper = pruning_wrapper.PruneLowMagnitude
    per_layer, zeros, total = {}, 0, 0
    for layer in pruned_model.layers:
        if not isinstance(layer, wrapper):
            continue
        values = np.concatenate([np.asarray(weight).reshape(-1) for weight, _, _ in layer.pruning_vars])
        per_layer[layer.layer.name] = float(np.mean(values == 0))
        zeros += int(np.sum(values == 0))
        total += int(values.size)
    return {"overall": zeros / max(total, 1), "pruned_weights": total, "zero_weights": zeros,
            "layers": per_layer}


def kd_loss(alpha, temperature, num_classes):
    """tf_keras loss on `y = [label, teacher logits...]`: (1 - alpha) CE + alpha T^2 KL."""
    import tensorflow as tf

    def loss(y, logits):
        labels = tf.cast(y[:, 0], tf.int32)
        logits = tf.cast(logits, tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        if y.shape[-1] == 1 or alpha == 0:
            return ce
        teacher = tf.stop_gradient(y[:, 1:])
        t_log = tf.nn.log_softmax(teacher / temperature, axis=-1)
        s_log = tf.nn.log_softmax(logits / temperature, axis=-1)
        kl = tf.reduce_sum(tf.exp(t_log) * (t_log - s_log), axis=-1)
        return (1.0 - alpha) * ce + alpha * temperature**2 * kl

    return loss


def packed_accuracy(y, logits):
    """Top-1 accuracy against the label in column 0 of a packed target."""
    import tensorflow as tf

    labels = tf.cast(y[:, 0], tf.int64)
    return tf.cast(tf.equal(labels, tf.argmax(logits, axis=-1)), tf.float32)


def _epoch_dataset(path, batch_size, with_teacher):
    import tensorflow as tf

    images, target = handoff.read_epoch_file(path, with_teacher)
    dataset = tf.data.Dataset.from_tensor_slices((images, target)).batch(batch_size, drop_remainder=True)
    return dataset.prefetch(2), len(images) // batch_size


def fine_tune(model, train_files, training, kd, callbacks=(), say=print):
    """Fits a tf_keras `model` one epoch per file (the files are already shuffled and augmented)."""
    import tf_keras

    datasets = [_epoch_dataset(p, training["batch_size"], kd) for p in train_files]
    total_steps = sum(steps for _, steps in datasets)
    if total_steps < 1:
        raise ValueError(f"Fewer training images than one batch of {training['batch_size']}.")
    schedule = tf_keras.optimizers.schedules.CosineDecay(training["learning_rate"], total_steps)
    if training["optimizer"] == "adam":
        optimizer = tf_keras.optimizers.Adam(schedule)
    else:
        optimizer = tf_keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    num_classes = int(model.output_shape[-1])
    alpha = training["alpha"] if kd else 0.0
    model.compile(optimizer=optimizer, loss=kd_loss(alpha, training["temperature"], num_classes),
                  metrics=[packed_accuracy])
    history = {}
    for epoch, (dataset, steps) in enumerate(datasets):
        start = time.time()
        fit = model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, callbacks=list(callbacks), verbose=0)
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        say(f"  epoch {epoch + 1}/{len(datasets)}: {steps} steps, loss {history['loss'][-1]:.4f}, "
            f"train accuracy {history['packed_accuracy'][-1]:.4f} ({time.time() - start:.0f} s)")
    return history, total_steps


def worker_main(argv):
    """Entry point of the tfmot process: `python -m mbakt_tf.tfmot.worker job.json`; returns the exit status."""
    if len(argv) != 1:
        print("usage: python -m mbakt_tf.tfmot.worker JOB_JSON", file=sys.stderr)
        return 2
    job = handoff.read_json(argv[0])

    def say(message):
        print(f"PROGRESS {message}", flush=True)

    start = time.time()
    tfmot = _tfmot()
    import tensorflow as tf
    import tf_keras

    say(f"tfmot process: tensorflow {tf.__version__}, tf_keras {tf_keras.__version__}, "
        f"tfmot {tfmot.__version__}; rebuilding the main branch in tf_keras")
    _, parity = rebuild.load_bridge(job["bridge_dir"])  # raises on a parity failure
    say(f"tf_keras copy matches the Keras 3 model: max |logit diff| {parity['max_abs_diff']:.2g} "
        f"on {parity['images']} random images")
    result = {"bridge_parity": parity, "versions": {
        "tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tfmot": tfmot.__version__,
        "python": sys.executable}, "runs": {}, "extra_bridges": {}}
    for directory in job.get("extra_bridges", []):
        _, result["extra_bridges"][directory] = rebuild.load_bridge(directory, check=False)
    representative = None
    if job.get("representative_file"):
        with np.load(job["representative_file"]) as saved:
            representative = saved["images"]
    training = job.get("training")
    for run in job.get("runs", []):
        run_start = time.time()
        tf_keras.utils.set_random_seed(training["seed"])
        base, _ = rebuild.load_bridge(job["bridge_dir"], check=False)
        name, kd = run["name"], run["kd"]
        say(f"{name}: {'QAT' if run['method'] == 'qat' else 'pruning'} fine-tune, "
            f"{'labels + teacher KD' if kd else 'labels only'}")
        info = {"method": run["method"], "kd": kd, "files": {}}
        if run["method"] == "qat":
            model = quantize_model(base)
            history, steps = fine_tune(model, job["train_files"], training, kd, say=say)
        else:
            steps_per_epoch = [handoff.count_images(p) // training["batch_size"] for p in job["train_files"]]
            schedule, info["schedule"] = pruning_schedule(
                sum(steps_per_epoch), job["pruning"]["target_sparsity"], job["pruning"]["end_fraction"])
            model = prune_model(base, schedule)
            callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
            history, steps = fine_tune(model, job["train_files"], training, kd, callbacks, say=say)
            info["sparsity"] = sparsity_of(model)
            model = tfmot.sparsity.keras.strip_pruning(model)
            stripped_zeros = sum(int(np.sum(np.asarray(w) == 0)) for w in model.weights)
            info["sparsity"]["zero_weights_after_strip"] = stripped_zeros
            say(f"{name}: sparsity {info['sparsity']['overall']:.4f} over "
                f"{info['sparsity']['pruned_weights']:,} weights of {len(info['sparsity']['layers'])} layers")
        info.update(history=history, steps=steps, parameters=int(model.count_params()))
        saved_model = serving.write_saved_model(model, os.path.join(job["work_dir"], f"{name}_saved_model"))
        say(f"{name}: converting to TFLite")
        if run["method"] == "qat":
            path = os.path.join(job["output_dir"], f"model_{name}_int8.tflite")
            info["files"]["int8"] = tflite.write_tflite(path, tflite.convert_tflite(
                saved_model, "int8", representative, job["int8_io"]))
        else:
            for fmt in ("float32", "int8"):
                path = os.path.join(job["output_dir"], f"model_{name}_{fmt}.tflite")
                info["files"][fmt] = tflite.write_tflite(path, tflite.convert_tflite(
                    saved_model, fmt, representative, job["int8_io"]))
            weights_path = os.path.join(job["work_dir"], f"{name}.weights.h5")
            model.save_weights(weights_path)
            info["weights_h5_bytes"] = os.path.getsize(weights_path)
            info["weights_h5_gzip_bytes"] = tflite.gzip_size(weights_path)
        info["seconds"] = time.time() - run_start
        result["runs"][name] = info
    result["seconds"] = time.time() - start
    handoff.write_result(job["result_file"], result)
    say(f"tfmot process done in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
