"""TensorFlow started without its C++ start-up lines, unless you ask for them.

Importing TensorFlow and listing its devices prints, on a machine without a
GPU, lines such as

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796592348.331463    3462 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
    E0000 00:00:1796592353.572856    3462 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

written by C++ straight to the process's stderr: `TF_CPP_MIN_LOG_LEVEL`
does not hide the first two, and the third is an "error" that is not one.
`start_tensorflow()` does those two steps with stderr (file descriptor 2)
sent to a temporary file, then writes back every captured line that is not
such a start-up line (a real error or warning still shows). It also sets
`TF_CPP_MIN_LOG_LEVEL=2` (TensorFlow's info and warning lines) unless it is
set already.

You ask for everything with `TF_CPP_MIN_LOG_LEVEL=0` (or 1) in the
environment: then nothing is captured or filtered.

The scripts call it after parsing their flags (so `--help` and usage errors
still come before TensorFlow loads) and before their first TensorFlow import.

Example:
```python
from mbakt_tf.cli.quiet_start import start_tensorflow
start_tensorflow()          # quiet, unless TF_CPP_MIN_LOG_LEVEL=0 or 1
import tensorflow as tf     # already imported: no new lines
```
"""

import contextlib
import os
import re
import sys
import tempfile

LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
# What TensorFlow's C++ start-up writes on a CPU-only machine: absl's notice, info/warning lines in
# absl's format, CUDA/TPU probing errors, and the CPU-instructions notice with its continuation.
STARTUP_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] .*(cuInit|CUDA|cuda|TPU|tpu)"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def wants_startup_logs():
    """True when the user set `TF_CPP_MIN_LOG_LEVEL` to 0 or 1: they want TensorFlow's lines."""
    return os.environ.get(LOG_LEVEL_ENV, "").strip() in ("0", "1")


def startup_noise(line):
    """True for a line of TensorFlow's C++ start-up chatter (see `STARTUP_LINE`).

    Example:
    >>> startup_noise("I0000 00:00:1796592348.331463    3462 cudart_stub.cc:31] Could not find cuda drivers")
    True
    >>> startup_noise("error: /data/cats/1.jpg cannot be read")
    False
    """
    return bool(STARTUP_LINE.match(line))


@contextlib.contextmanager
def filtered_stderr():
    """Sends file descriptor 2 to a temporary file, then writes back the lines that are not start-up noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not startup_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def start_tensorflow():
    """Imports TensorFlow and lists its devices without the C++ start-up lines (see the module doc).

    Listing physical devices does not create the runtime, so logical CPU
    devices and distribution strategies can still be set up afterwards.
    """
    if wants_startup_logs():
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault(LOG_LEVEL_ENV, "2")
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
