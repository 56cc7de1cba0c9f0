"""The deploy wing: a trained model's main branch (or one early exit) as SavedModel and TFLite, checked.

`export_model` / `export_from_file` write everything a phone needs into one
folder (SavedModel, TFLite files, labels, manifest.json) and check it:
parity with Keras, accuracy, structure, latency, MediaPipe Tasks (see
`exporter` for the folder, the input contract and the checks). The modules:

  exporter.py          `export_model`, `export_from_file`: the steps, the checks, the manifest
  config.py            `ExportConfig` and the parity tolerances (light: no TensorFlow)
  serving.py           the `serving_default` contract and the SavedModel (Keras 3 or tf_keras)
  tflite.py            TFLite conversion, LiteRT runs, the structure checks
  rgb_input.py         the in-graph RGB to the model's channels, for MediaPipe
  mediapipe_steps.py   the export's TFLite Metadata / MediaPipe Tasks steps
  mediapipe_tasks.py   what runs in `.venv-mediapipe` (as a script, `python -I mediapipe_tasks.py job.json`)
  report.py            `format_report`, the summary `scripts/export.py` prints

`mbakt_tf.optimize` and the tfmot process (`mbakt_tf.tfmot.worker`) use
`serving` and `tflite` too. So, as `mbakt_tf`'s own, this `__init__` imports
nothing until a name is used: `mbakt_tf.export.tflite` loads no Keras 3,
and `mbakt_tf.export.ExportConfig` no TensorFlow.

Example:
```python
from mbakt_tf import export
result = export.export_from_file("saved_models/quickstart", config=export.ExportConfig(test_limit=2000))
print(export.format_report(result.manifest))
```
"""

from mbakt_tf import lazy_names

# The public names of `mbakt_tf.export` and the module that defines each.
_DEFINED_IN = {
    "mbakt_tf.export.exporter": (
        "ExportCheckError", "ExportResult", "LABELS", "MANIFEST", "MANIFEST_VERSION", "SAVED_MODEL_DIR",
        "default_output_dir", "deployable_model", "export_from_file", "export_model", "foreign_names",
        "parity", "resolve_branch",
    ),
    "mbakt_tf.export.config": (
        "ExportConfig", "PARITY_TOLERANCES", "SEGMENTATION_TEST_LIMIT", "TFLITE_METADATA_MODES",
    ),
    "mbakt_tf.export.report": ("format_report",),
    "mbakt_tf.export.serving": (
        "INPUT_NAME", "SIGNATURE_KEY", "check_images", "probe_saved_model", "write_saved_model",
    ),
    "mbakt_tf.export.tflite": (
        "INT8_IO_TYPES", "TFLITE_FORMATS", "LiteRTModel", "convert_tflite", "expected_weight_ops",
        "non_builtin_ops", "structure_checks", "tflite_structure", "write_tflite",
    ),
    # The errors callers of `export_from_file` catch, and the loader it uses.
    "mbakt_tf.saved_runs": (
        "ModelFileNotFoundError", "NotMBAKTModelError", "load_mbakt_model", "resolve_model_path",
    ),
}
_NAMES = {name: module for module, names in _DEFINED_IN.items() for name in names}
__getattr__, __dir__, __all__ = lazy_names.lazy_package(__name__, __path__, _NAMES, globals())
