import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

# Under pytest-xdist every worker is its own TensorFlow runtime, and each would start thread pools as
# wide as the machine: on 2 cores, 2 workers then spend time switching and spinning (`make test` took
# 7 min 51 s that way, 6 min 58 s with shares). Each worker gets its share of the cores; scripts that
# the tests start keep TensorFlow's defaults (MirroredStrategy on logical CPUs needs them).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    tf.config.threading.set_intra_op_parallelism_threads(_threads)
    tf.config.threading.set_inter_op_parallelism_threads(_threads)

# Grappler rewrites every traced graph so that it runs faster, which the tests' tiny graphs, each run a
# few times, do not repay. Measured here, one process each: test_model.py's ten test_modes cases took
# 95-98 s without it against 116-121 s with it; test_resume.py + test_distribute.py (many steps) took
# 110.6 against 110.4 s. The scripts the tests start (train, export, compare, ...) are separate
# processes with Grappler on, so the optimized graphs stay tested end to end.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

# absl's parameterized.TestCase.create_tempdir reads --test_tmpdir; under pytest
# nobody parses absl flags, so take the defaults.
flags.FLAGS.mark_as_parsed()


# pytest-xdist hands out test files in collection order: the heaviest first, so that no worker is
# left with a long file while the other idles (`make test`, docs/contributing.md).
HEAVIEST_FIRST = (
    "test_export.py", "test_optimize.py", "test_model.py", "test_segmentation.py", "test_distribute.py",
    "test_keras_hub.py", "test_guards.py", "test_mediapipe.py", "test_resume.py", "test_tensorboard.py",
)


# The files that read the shared trained run (`trained_run` below) go to one worker together, so that it
# is trained once per `make test` rather than once per worker.
TRAINED_RUN_FILES = ("test_export.py", "test_tensorboard.py", "test_curves.py", "test_guards.py")


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TrainedRunFilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            if os.path.basename(nodeid.split("::", 1)[0]) in TRAINED_RUN_FILES:
                return "trained_run"
            return super()._split_scope(nodeid)

    return TrainedRunFilesTogether(config, log)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """helpers.TinyRun (config, result, warnings) of one tiny MBAKT run (its readers share a worker).

    Read-only: tests that change a model train their own.
    """
    from tests import helpers

    return helpers.train_tiny_run(tmp_path_factory.mktemp("trained_run"))
