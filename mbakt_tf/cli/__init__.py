"""absl entry points: each module defines its flags and a `main`; `run()` is the console script."""

import sys
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


def model_path_flag(path):
    """`--model` (a .keras file or its run folder) as a .keras path; a usage error when nothing is there."""
    from mbakt_tf import saved_runs

    try:
        return saved_runs.resolve_model_path(path)
    except saved_runs.ModelFileNotFoundError as error:
        raise app.UsageError(f"--model: {error}") from error


def config_from_flags(make_config):
    """`make_config()`, its `ValueError` for a flag value that makes no sense as a usage error."""
    try:
        return make_config()
    except ValueError as error:
        raise app.UsageError(str(error)) from error


def exit_status_of_checked_run(result, seconds, strict, checks_file):
    """Lists the files of an export or optimize `result`; 1 when `strict` and a check failed, else 0."""
    print()
    print(f"Wrote {result.output_dir}/ in {seconds:.0f} s:")
    width = max(len(name) for name in result.files) + 2
    for name, path in result.files.items():
        print(f"  {name:<{width}} {path}")
    if strict and not result.ok:
        print(f"error: some checks failed (see above and {checks_file})", file=sys.stderr)
        return 1
    return 0
