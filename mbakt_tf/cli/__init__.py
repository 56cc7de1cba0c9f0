"""absl entry points: each module defines its flags and a `main`; `run()` is the console script."""

import time

from absl import app, logging


def run_app(main):
    """Runs an absl `main` with TensorFlow's and absl's chatter limited to warnings."""
    logging.set_verbosity(logging.WARNING)
    app.run(main)


def timed_progress():
    """A `progress(message)` callback that prints each message with the seconds since it was made.

    `progress.elapsed()` gives those seconds.
    """
    start = time.time()

    def elapsed():
        return time.time() - start

    def progress(message):
        print(f"[{elapsed():6.1f} s] {message}", flush=True)

    progress.elapsed = elapsed
    return progress
