"""Finds the Python that has tfmot and runs the worker there (the Keras 3 side of the boundary).

tfmot pins `absl-py~=1.2` and switches TensorFlow to tf_keras on import, so it
lives in its own virtualenv (`make setup-optimize` creates `.venv-optimize/`)
and `worker.py` runs there as a separate process. This module finds that
interpreter (`tfmot_python`), writes the job, starts the process, relays its
`PROGRESS` lines and reads its result (`run_worker`).

Example:
```python
from mbakt_tf.tfmot import describe, launch
describe.write_bridge(model.main_model(), "/tmp/work/bridge")
(parity,) = launch.check_bridges(["/tmp/work/bridge"], "/tmp/work")   # rebuilt in tf_keras there
parity["passed"], parity["max_abs_diff"]                               # True, e.g. 3e-06
```
"""

import importlib.util
import os
import subprocess
import sys
import tempfile

from mbakt_tf.tfmot import handoff

TFMOT_PYTHON_ENV = "MBAKT_TFMOT_PYTHON"
OPTIMIZE_VENV = ".venv-optimize"
WORKER_MODULE = "mbakt_tf.tfmot.worker"
WORKER_LOG = "worker.log"


class TfmotUnavailableError(RuntimeError):
    """No Python interpreter with tensorflow-model-optimization and tf_keras was found."""


def _package_parent():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _package_dir():
    """The `mbakt_tf` package folder this module belongs to."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _package_parent():
    return os.path.dirname(_package_dir())


def _has_tfmot(python):
    """True when `python` can import tfmot and tf_keras (checked without importing them here)."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return all(importlib.util.find_spec(m) is not None for m in ("tensorflow_model_optimization", "tf_keras"))
    probe = ("import importlib.util as u, sys; "
             "sys.exit(0 if all(u.find_spec(m) for m in ('tensorflow_model_optimization', 'tf_keras')) else 1)")
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def tfmot_python(explicit=None):
    """The Python interpreter that runs the tfmot process.

    In this order: `explicit`; `$MBAKT_TFMOT_PYTHON`; `.venv-optimize/bin/python`
    in the repository holding this package or in the working directory (`make
    setup-optimize` creates it); this interpreter when it has tfmot and
    tf_keras (`pip install 'mbakt_tf[optimize]'`).

    Raises:
        TfmotUnavailableError: none of them has tfmot and tf_keras.
    """
    for python in (explicit, os.environ.get(TFMOT_PYTHON_ENV)):
        if python:
            if not _has_tfmot(python):
                raise TfmotUnavailableError(
                    f"{python} cannot import tensorflow_model_optimization and tf_keras.")
            return python
    candidates = [os.path.join(root, OPTIMIZE_VENV, "bin", "python")
                  for root in (_package_parent(), os.getcwd())]
    for python in candidates + [sys.executable]:
        if os.path.exists(python) and _has_tfmot(python):
            return python
    raise TfmotUnavailableError(
        "QAT and pruning need tensorflow-model-optimization and tf_keras in a separate "
        f"virtualenv: run `make setup-optimize` (creates {OPTIMIZE_VENV}/), or point "
        f"${TFMOT_PYTHON_ENV} at a Python that has them (pip install 'mbakt_tf[optimize]'). "
        f"Looked at: {', '.join(candidates + [sys.executable])}."
    )


def _worker_path(path_dir):
    """`path_dir` holding one link, `mbakt_tf` -> this package: the tfmot process's PYTHONPATH.

    Only this package is on the path, not the folder it sits in (which may be
    this environment's site-packages), so the other interpreter's own packages
    (e.g. its absl-py 1.x) are never shadowed by this environment's. The
    package's `__init__` is light (it imports nothing until a name is used), so
    `python -m mbakt_tf.tfmot.worker` loads no Keras 3 code.
    """
    os.symlink(_package_dir(), os.path.join(path_dir, "mbakt_tf"))
    return path_dir


def run_worker(job, work_dir, python=None, timeout=None, progress=None):
    """Runs `worker.worker_main` on `job` in a tfmot process; returns its result dict.

    The job goes to `work_dir/job.json`, the process's output to
    `work_dir/worker.log`; lines starting with `PROGRESS ` go to `progress`.
    Raises `RuntimeError` with the log's tail when the process fails.
    """
    python = tfmot_python(python)
    work_dir = os.path.abspath(work_dir)  # the process runs in it: relative paths would not resolve
    os.makedirs(work_dir, exist_ok=True)
    job_path, result_path = handoff.write_job(work_dir, job)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               PYTHONUNBUFFERED="1")
    env.pop("PYTHONSTARTUP", None)
    log_path = os.path.join(work_dir, WORKER_LOG)
    with tempfile.TemporaryDirectory(prefix="mbakt_tfmot_path_") as path_dir:
        env["PYTHONPATH"] = _worker_path(path_dir)
        command = [python, "-m", WORKER_MODULE, job_path]
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, cwd=work_dir, env=env)
            tail = []
            for line in process.stdout:
                log.write(line)
                tail = (tail + [line])[-40:]
                if line.startswith("PROGRESS ") and progress is not None:
                    progress(line[len("PROGRESS "):].rstrip())
            returncode = process.wait(timeout=timeout)
    if returncode != 0 or not os.path.exists(result_path):
        raise RuntimeError(
            f"The tfmot process ({python}) failed with status {returncode}; log {log_path}:\n"
            + "".join(tail)[-4000:]
        )
    return handoff.read_json(result_path)


def check_bridges(directories, work_dir, python=None):
    """Rebuilds each bridge folder in tf_keras in one tfmot process; returns their parity dicts.

    Nothing is trained: this checks the conversion alone (the tests use it on
    every backbone family).
    """
    directories = [os.path.abspath(d) for d in directories]
    job = {"bridge_dir": directories[0], "extra_bridges": directories, "runs": []}
    result = run_worker(job, work_dir, python=python)
    return [result["extra_bridges"][d] for d in directories]

