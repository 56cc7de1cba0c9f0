"""`tf.distribute` strategies from a name, logical CPU devices, and local multi-worker launches.

Names (`STRATEGIES`):

* `"default"`: no strategy (TensorFlow's default: one device, GPU:0 if any).
* `"one_device"`: `OneDeviceStrategy` on GPU:0, else CPU:0.
* `"mirrored"`: `MirroredStrategy` over every local GPU; without GPUs, over
  every logical CPU device (see `cpu_devices`), so data parallelism can be
  exercised on a laptop.
* `"multi_worker"`: `MultiWorkerMirroredStrategy`, cluster from the
  `TF_CONFIG` environment variable (one replica per worker on CPU, one per GPU
  otherwise). Without `TF_CONFIG` it runs as a single local worker.

`cpu_devices=N` splits the physical CPU into N logical devices. TensorFlow
accepts that only before it initialises its devices (before the first op),
so call `make_strategy` (or `configure_cpu_devices`) at program start.

Example:
>>> strategy = make_strategy("default")
>>> strategy.num_replicas_in_sync
1

Launching two local workers of a script (each gets its own `TF_CONFIG`):
```python
exit_codes = launch_local_workers(
    [sys.executable, "scripts/train.py", "--strategy=multi_worker", "--dataset=synthetic"],
    num_workers=2)
```
or from a shell: `python scripts/launch_workers.py --num_workers=2 -- scripts/train.py ...`.
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import tensorflow as tf

from mbakt_tf.train_config import STRATEGIES  # noqa: F401 - the names make_strategy accepts


# ------------------------------------------------------------------ devices


def configure_cpu_devices(count):
    """Splits the first physical CPU into `count` logical devices.

    Must run before TensorFlow initialises its devices (before any op runs).
    Calling it again with the same count is a no-op.

    Raises:
        ValueError: `count` < 1.
        RuntimeError: TensorFlow is already initialised with another device
            layout (the message says to call this at program start).
    """
    count = int(count)
    if count < 1:
        raise ValueError(f"cpu_devices must be >= 1, got {count}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if (len(current) if current else 1) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        have = len(tf.config.list_logical_devices("CPU"))
        raise RuntimeError(
            f"cannot split the CPU into {count} logical devices: TensorFlow is already "
            f"initialised with {have}. Set cpu_devices before any TensorFlow op runs "
            "(e.g. first thing in the script, or in a fresh process)."
        ) from error


def cpu_device_names():
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def gpu_device_names():
    return [device.name for device in tf.config.list_logical_devices("GPU")]


# --------------------------------------------------------------- strategies


def make_strategy(name="default", cpu_devices=None):
    """A `tf.distribute.Strategy` from one of `STRATEGIES`.

    Args:
        name: strategy name, see the module docstring.
        cpu_devices: if set, first split the CPU into that many logical
            devices (`configure_cpu_devices`); `mirrored` without GPUs then
            has one replica per logical CPU. Not for `multi_worker` (one
            replica per worker on CPU).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")
    if cpu_devices is not None and cpu_devices > 1 and name == "multi_worker":
        raise ValueError(
            "cpu_devices > 1 does not apply to strategy='multi_worker': "
            "MultiWorkerMirroredStrategy runs one replica per worker on CPU (start more workers)."
        )
    if cpu_devices is not None:
        configure_cpu_devices(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = gpu_device_names()
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else cpu_device_names()[0])
    if name == "mirrored":
        devices = gpu_device_names() or cpu_device_names()
        if len(devices) > 1 and not gpu_device_names():
            # Reduce on the host: NCCL is for GPUs only.
            return tf.distribute.MirroredStrategy(
                devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
            )
        return tf.distribute.MirroredStrategy(devices)
    # Collectives over gRPC; RING works on CPU and GPU alike (NCCL is GPU-only).
    # Physical devices only: listing logical ones would initialise TensorFlow,
    # and collectives must be configured before that.
    implementation = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation.AUTO
        if tf.config.list_physical_devices("GPU")
        else implementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def task_info(strategy):
    """(task_type, task_id) of this process; ("worker", 0) outside multi-worker."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "worker", 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy):
    """True for the one process that writes files (task "chief", or worker 0 without one)."""
    if not is_multi_worker(strategy):
        return True
    task_type, task_id = task_info(strategy)
    if task_type == "chief":
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return "chief" not in cluster and task_type == "worker" and task_id == 0


def check_batch_size(batch_size, strategy):
    """Raises `ValueError` unless the global batch splits evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {replicas} replicas of the "
            f"strategy: use a multiple of {replicas} (it is the global batch, split evenly)."
        )


def synchronize_batchnorm(model):
    """Makes every BatchNormalization layer of `model` use global batch statistics.

    By default Keras BN normalises with per-replica statistics under a
    strategy; `synchronized=True` all-reduces mean and variance, so N replicas
    compute exactly what one device computes on the global batch (at the cost
    of one all-reduce per BN layer). Returns the number of layers changed.
    """
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            count += 1
    return count


def replica_local_variables(model):
    """Variables each replica updates on its own: BatchNorm moving statistics.

    Keras 3 creates them with `aggregation="none"`, so under a strategy every
    replica's copy follows its own slice of the batch (tensorflow#46488): the
    saved model holds replica 0's copy while an evaluation under the strategy
    mixes all copies.
    """
    return [
        v for v in model.non_trainable_variables
        if v.aggregation == "none" and "float" in str(v.dtype)
    ]


def average_replica_variables(model, strategy):
    """Sets every replica's copy of `replica_local_variables(model)` to their mean.

    The moving averages are linear in the batch statistics, so averaging them
    at any time gives exactly what averaging at every step would (the
    `aggregation="mean"` of tf.keras): training is unchanged, and evaluation
    under the strategy, the saved model and a backup agree. One all-reduce per
    variable (a collective: every worker must call it). No-op on one replica.
    """
    if strategy.num_replicas_in_sync == 1:
        return
    variables = [getattr(v, "value", v) for v in replica_local_variables(model)]
    if not variables:
        return
    function = getattr(model, "_mbakt_average_replicas", None)
    if function is None or function[0] is not strategy:

        def replica_fn():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [v.read_value() for v in variables])
            for variable, mean in zip(variables, means):
                variable.assign(mean)  # aggregation NONE: each replica sets its own copy

        function = (strategy, tf.function(lambda: strategy.run(replica_fn)))
        model._mbakt_average_replicas = function
    function[1]()


class AverageReplicaStatistics(keras.callbacks.Callback):
    """Averages BatchNorm moving statistics over replicas before every evaluation and at the end.

    `fit` validates (and `evaluate` tests) with each replica's own copy; with
    this callback they use the replicas' mean, which is also what gets saved.
    """

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_test_begin(self, logs=None):
        average_replica_variables(self.model, self.strategy)

    def on_train_end(self, logs=None):
        average_replica_variables(self.model, self.strategy)


# ----------------------------------------------------- local multi-worker


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports that are free on `host` right now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def tf_config(workers, index, task_type="worker"):
    """The `TF_CONFIG` dict of task `index` in a cluster of `workers` ("host:port" strings).

    Example:
    >>> tf_config(["127.0.0.1:2222", "127.0.0.1:2223"], 1)
    {'cluster': {'worker': ['127.0.0.1:2222', '127.0.0.1:2223']}, 'task': {'type': 'worker', 'index': 1}}
    """
    return {"cluster": {"worker": list(workers)}, "task": {"type": task_type, "index": int(index)}}


def launch_local_workers(command, num_workers=2, host="127.0.0.1", env=None, timeout=None,
                         log_dir=None):
    """Runs `command` as `num_workers` local processes of one multi-worker cluster.

    Each process gets `TF_CONFIG` for its index (free ports on `host`). If one
    worker fails, the others are terminated (a collective would wait for it
    forever). Worker 0 is the chief: it writes the outputs.

    Args:
        command: argv list, e.g. `[sys.executable, "scripts/train.py", ...]`;
            it should pass `--strategy=multi_worker`.
        num_workers: number of processes.
        env: base environment (default: `os.environ`).
        timeout: seconds before every worker is killed (None: no limit).
        log_dir: if set, worker i writes stdout and stderr to
            `log_dir/worker_i.log`; otherwise they inherit this process's.

    Returns:
        The list of exit codes, worker 0 first.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
    workers = [f"{host}:{port}" for port in free_ports(num_workers, host)]
    processes, logs = [], []
    for index in range(num_workers):
        worker_env = dict(os.environ if env is None else env)
        worker_env["TF_CONFIG"] = json.dumps(tf_config(workers, index))
        stdout = None
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            stdout = open(os.path.join(log_dir, f"worker_{index}.log"), "w")
            logs.append(stdout)
        processes.append(subprocess.Popen(
            list(command), env=worker_env, stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
        ))
    deadline = None if timeout is None else time.time() + timeout
    try:
        while True:
            codes = [p.poll() for p in processes]
            if all(code is not None for code in codes):
                return codes
            if any(code not in (None, 0) for code in codes) or (
                deadline is not None and time.time() > deadline
            ):
                for process, code in zip(processes, codes):
                    if code is None:
                        process.kill()
                return [p.wait() for p in processes]
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
