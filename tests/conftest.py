import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import flags  # noqa: E402

# absl's parameterized.TestCase.create_tempdir reads --test_tmpdir; under pytest
# nobody parses absl flags, so take the defaults.
flags.FLAGS.mark_as_parsed()
