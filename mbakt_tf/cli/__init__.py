"""absl entry points: each module defines its flags and a `main`; `run()` is the console script.

The helpers here stay light (absl only) so that a usage error comes before TensorFlow loads.
"""

import ast
import importlib.util
import sys
import time

from absl import app, logging
from absl import flags as absl_flags  # `flags` is this package's module of flag groups

from mbakt_tf.cli.quiet_start import start_tensorflow

FLAGS = absl_flags.FLAGS


def backbone_names():
    """`mbakt_tf.backbones.available_backbones()`, read from that module's source without importing Keras.

    backbones.py imports Keras at the top, but its name tables (`SMALL_RESNETS`,
    `KERAS_CV_BACKBONES`) are dict literals: their keys are the `--backbone`
    choices. If the source ever stops looking like that, this imports the module.
    """
    tables = ("SMALL_RESNETS", "KERAS_CV_BACKBONES")
    source_file = importlib.util.find_spec("mbakt_tf.backbones").origin
    with open(source_file) as f:
        module = ast.parse(f.read())
    names = {}
    for node in module.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id in tables for t in node.targets)):
            target = next(t.id for t in node.targets if isinstance(t, ast.Name) and t.id in tables)
            try:
                names[target] = [ast.literal_eval(key) for key in node.value.keys]
            except ValueError:
                break
    if set(names) != set(tables):
        from mbakt_tf import backbones

        return backbones.available_backbones()
    return sorted(name for table in tables for name in names[table])


def run_app(main):
    """Runs an absl `main` with TensorFlow's and absl's chatter limited to warnings."""
    logging.set_verbosity(logging.WARNING)
    app.run(main)


def print_class_counts(info):
    """Prints where a dataset's images come from and its images per class and split, when the loader counted them.

    Datasets read from a folder of your own images do (see `mbakt_tf.data.folder`):
    the table shows, before training starts, what each class folder gave.
    """
    if not getattr(info, "class_counts", None):
        return
    print(f"Dataset {info.name}: {info.source}")
    print(info.counts_table())
    print(flush=True)


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


def define_saved_run_flags():
    """`--model` (required) and the overrides of the run's recorded data: `--dataset`, `--data_dir`, `--image_size`."""
    absl_flags.DEFINE_string("model", None, "A saved MBAKT model (.keras) or its run folder.")
    absl_flags.DEFINE_string("dataset", None, "Dataset name (default: the one in the run's results.json).")
    absl_flags.DEFINE_string("data_dir", None, "Dataset folder (see train.py --data_dir).")
    absl_flags.DEFINE_integer("image_size", None, "Resize images (default: as in the run's results.json).")
    absl_flags.mark_flag_as_required("model")


def run_checked_tool(argv, make_config, load_tool, checks_file, check_saved_model=None):
    """The `main` of the export and optimize scripts, which share their flags' meaning and exit codes.

    `make_config()` turns the flags into a config (a `ValueError` is a usage
    error). `--model` must hold an MBAKT model, checked before TensorFlow
    starts, as is `check_saved_model(model_path, config)` when given (a
    `ValueError` is a model the tool refuses). Then `load_tool()` (after
    TensorFlow's start) gives `(from_file, errors, report_text)`:
    `from_file(--model, output_dir=, config=, dataset=, data_dir=,
    image_size=, progress=)` does the work; `report_text(result)`
    is printed, then the files written. Returns the exit status: 2 after
    `error: ...` for a model that is not an MBAKT one or an exception in
    `errors` (a model or environment the tool cannot handle), 1 when
    `--strict` and a check failed (the files are written), else 0.
    """
    from mbakt_tf import saved_runs

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags(make_config)
    model_path = model_path_flag(FLAGS.model)
    try:
        saved_runs.check_mbakt_model_file(model_path)
        if check_saved_model is not None:
            check_saved_model(model_path, config)
    except ValueError as error:  # saved_runs.NotMBAKTModelError is one
        print(f"error: {error}", file=sys.stderr)
        return 2
    start_tensorflow()
    from_file, errors, report_text = load_tool()
    progress = timed_progress()
    try:
        result = from_file(
            model_path,
            output_dir=FLAGS.output_dir,
            config=config,
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            image_size=FLAGS.image_size,
            progress=progress,
        )
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    print(report_text(result))
    print()
    print(f"Wrote {result.output_dir}/ in {progress.elapsed():.0f} s:")
    width = max(len(name) for name in result.files) + 2
    for name, path in result.files.items():
        print(f"  {name:<{width}} {path}")
    if FLAGS.strict and not result.ok:
        print(f"error: some checks failed (see above and {checks_file})", file=sys.stderr)
        return 1
    return 0


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
