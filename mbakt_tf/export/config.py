"""What an export writes and how hard it checks: `ExportConfig` and the parity tolerances.

Light to import (no TensorFlow): the export script's flags and
`saved_runs`/`export` share it.

Example:
>>> ExportConfig(formats=["float32", "int8"], int8_io="uint8").formats
('float32', 'int8')
>>> PARITY_TOLERANCES["int8"]["min_top1"]
0.95
"""

import dataclasses
import re
from typing import Optional, Tuple

from mbakt_tf.config import dataclass_from_dict
from mbakt_tf.export.tflite import INT8_IO_TYPES, TFLITE_FORMATS

# Segmentation outputs are maps (H x W x classes per image): parity runs on at
# most this many test images unless ExportConfig.test_limit says otherwise.
SEGMENTATION_TEST_LIMIT = 1000
# ExportConfig.tflite_metadata: "auto" writes it when a MediaPipe Python is found
# (else the manifest says why not), "require" fails without one, "off" never.
TFLITE_METADATA_MODES = ("auto", "require", "off")

# Parity with the Keras model. Float formats: max |logit difference| at most
# `atol + rtol * max|keras logit|`; every format: top-1 agreement at least
# `min_top1`. Quantized formats are judged by top-1 agreement (and int8 by its
# accuracy drop, `ExportConfig.max_int8_accuracy_drop`); their logit difference
# is reported only.
PARITY_TOLERANCES = {
    "saved_model": {"atol": 1e-4, "rtol": 1e-5, "min_top1": 0.999},
    "float32": {"atol": 1e-3, "rtol": 1e-4, "min_top1": 0.999},
    "float16": {"atol": 2e-2, "rtol": 5e-3, "min_top1": 0.99},
    "dynamic_range": {"atol": None, "rtol": None, "min_top1": 0.95},
    "int8": {"atol": None, "rtol": None, "min_top1": 0.95},
}




@dataclasses.dataclass
class ExportConfig:
    """What to export and how hard to check it.

    Args:
        branch: `None` or `"main"`: the main branch; `"branch_k"` or `k`: the
            early exit on auxiliary branch k (1 = shallowest).
        formats: TFLite variants to write, from `TFLITE_FORMATS`. The
            SavedModel is always written (the TFLite files come from it).
        int8_io: dtype of the full-integer file's input and output, `"int8"`
            (pixel - 128) or `"uint8"` (the pixel bytes).
        representative_samples: training images that calibrate int8 ranges.
        test_limit: evaluate on at most this many test images (None: all).
        max_int8_accuracy_drop: largest accepted test-accuracy drop of the int8
            file against the Keras model, as a fraction (0.01 = 1 point).
        benchmark_runs: timed LiteRT invocations per file (0 skips the benchmark).
        benchmark_warmup: untimed invocations before them.
        num_threads: LiteRT threads for evaluation and benchmark.
        strict: raise `ExportCheckError` (after writing every file and the
            manifest) when a check fails.
        fresh_process_check: reload the SavedModel in a fresh Python process
            that never imports mbakt_tf (the deployment's view); False
            reloads it in this process, which saves a TensorFlow start (about
            7 s) when exporting many models, and the manifest says so.
        rgb_input: the files take RGB (H, W, 3) in [0, 255], as MediaPipe Tasks
            feed them; a 1-channel model converts in the graph (BT.601 luma,
            builtin MUL and SUM ops; `rgb_input.py`). Images passed to the
            exporter stay in the model's own channels.
        tflite_metadata: one of `TFLITE_METADATA_MODES`: write TFLite Metadata
            into every TFLite file and check it with MediaPipe Tasks.
        mediapipe_python: the Python with MediaPipe (default: see
            `mediapipe_tasks.mediapipe_python`).
        min_mediapipe_agreement: least accepted fraction of test images (of
            pixels, for a segmenter) where MediaPipe's class agrees with LiteRT's.

    Example:
    >>> ExportConfig(branch=1).resolved_branch_request
    'branch_1'
    >>> ExportConfig.from_dict(ExportConfig(formats=["int8"]).to_dict()).formats
    ('int8',)
    """

    branch: Optional[str] = None
    formats: Tuple[str, ...] = TFLITE_FORMATS
    int8_io: str = "int8"
    representative_samples: int = 300
    test_limit: Optional[int] = None
    max_int8_accuracy_drop: float = 0.01
    benchmark_runs: int = 200
    benchmark_warmup: int = 20
    num_threads: int = 1
    strict: bool = True
    fresh_process_check: bool = True
    rgb_input: bool = False
    tflite_metadata: str = "auto"
    mediapipe_python: Optional[str] = None
    min_mediapipe_agreement: float = 0.99

    def __post_init__(self):
        if self.branch is not None:
            self.branch = str(self.branch)
        self.formats = tuple(self.formats)
        self.validate()

    def validate(self):
        """Raises `ValueError` naming the first field that makes no sense."""
        unknown = [f for f in self.formats if f not in TFLITE_FORMATS]
        if unknown:
            raise ValueError(f"Unknown TFLite formats {unknown}; choose from {list(TFLITE_FORMATS)}.")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"formats lists a format twice: {list(self.formats)}.")
        if self.int8_io not in INT8_IO_TYPES:
            raise ValueError(f"int8_io must be one of {INT8_IO_TYPES}, got {self.int8_io!r}.")
        if self.branch is not None and not re.fullmatch(r"main|(branch_)?\d+", self.branch):
            raise ValueError(
                f"branch must be 'main', k or 'branch_k' (k = 1 is the shallowest early exit), "
                f"got {self.branch!r}."
            )
        if self.representative_samples < 1:
            raise ValueError(
                f"representative_samples must be >= 1, got {self.representative_samples}."
            )
        if self.test_limit is not None and self.test_limit < 1:
            raise ValueError(f"test_limit must be None or >= 1, got {self.test_limit}.")
        if not 0.0 <= self.max_int8_accuracy_drop <= 1.0:
            raise ValueError(
                f"max_int8_accuracy_drop must be in [0, 1], got {self.max_int8_accuracy_drop}."
            )
        if self.benchmark_runs < 0 or self.benchmark_warmup < 0:
            raise ValueError("benchmark_runs and benchmark_warmup must be >= 0.")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}.")
        if self.tflite_metadata not in TFLITE_METADATA_MODES:
            raise ValueError(f"tflite_metadata must be one of {TFLITE_METADATA_MODES}, "
                             f"got {self.tflite_metadata!r}.")
        if not 0.0 <= self.min_mediapipe_agreement <= 1.0:
            raise ValueError(
                f"min_mediapipe_agreement must be in [0, 1], got {self.min_mediapipe_agreement}.")

    @property
    def resolved_branch_request(self):
        """`"main"` or `"branch_k"`, before checking that the model has it."""
        if self.branch in (None, "main"):
            return "main"
        return self.branch if self.branch.startswith("branch_") else f"branch_{self.branch}"

    def branch_of(self, branch_names):
        """The `"main"` or `"branch_k"` that `self.branch` names among a model's `branch_names`.

        >>> ExportConfig(branch="2").branch_of(["main", "branch_1", "branch_2"])
        'branch_2'

        Raises:
            ValueError: the model has no such branch (the message lists the ones it has).
        """
        request = self.resolved_branch_request
        if request not in branch_names:
            exits = list(branch_names)[1:]
            available = (
                f"its early exits are {', '.join(exits)} (1 = shallowest)"
                if exits
                else "it has no early exits (trained in mode 'plain')"
            )
            raise ValueError(f"Unknown branch {self.branch!r}: this model has 'main' and {available}.")
        return request

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["formats"] = list(self.formats)
        return values

    @classmethod
    def from_dict(cls, values):
        return dataclass_from_dict(cls, values)
