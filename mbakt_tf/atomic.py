"""Atomic file writes: write a temporary file next to the target, then `os.replace` it.

A crash (even SIGKILL) while saving leaves either the previous complete file or
the new complete file in place, never a half-written one; at worst a stray
`.tmp-*` file remains next to it. `os.replace` is atomic on POSIX and Windows
when source and target are on the same file system, which holds because the
temporary file is created in the target's directory.

Example:
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "results.json")
>>> write_json(path, {"accuracy": 0.9})
>>> open(path).read()
'{\\n  "accuracy": 0.9\\n}'
"""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path that becomes `path` when the block exits without error.

    The temporary name keeps the target's file extension (Keras checks it:
    `.keras`, `.weights.h5`). On an exception the temporary file is removed and
    the target is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    suffix = ".weights.h5" if base.endswith(".weights.h5") else os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    os.remove(tmp)  # writers (h5py, zipfile) create it themselves
    try:
        yield tmp
        if os.path.isdir(tmp):
            raise IsADirectoryError(f"{tmp} is a directory; use atomic_directory for folders.")
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path, value, indent=2, sort_keys=False):
    """Writes `value` as JSON to `path` atomically."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys))


def save_model(model, path, **kwargs):
    """`model.save(path)` atomically (`path` ends with `.keras`)."""
    with atomic_path(path) as tmp:
        model.save(tmp, **kwargs)


def save_weights(model, path):
    """`model.save_weights(path)` atomically (`path` ends with `.weights.h5`)."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary directory that is renamed to `path` when the block succeeds.

    `path` must not exist yet (a directory rename cannot replace a non-empty
    directory atomically); on failure the temporary directory is deleted.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        for name in os.listdir(tmp):
            _fsync_file(os.path.join(tmp, name))
        _fsync_dir(tmp)
        os.rename(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(directory, names=None):
    """Deletes `.*.tmp-*` leftovers of interrupted atomic writes in `directory`.

    With `names` (target file names), only the leftovers of those targets.
    """
    if not os.path.isdir(directory):
        return
    prefixes = None if names is None else tuple(f".{n}.tmp-" for n in names)
    for name in os.listdir(directory):
        stale = name.startswith(prefixes) if prefixes else name.startswith(".") and ".tmp-" in name
        if stale:
            target = os.path.join(directory, name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(target)


def _fsync_file(path):
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(path):
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
