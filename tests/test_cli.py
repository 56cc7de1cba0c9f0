"""The scripts' flags: light to import, derived from (or checked against) the config dataclasses.

Every test runs the scripts' modules in fresh processes: each module defines
its flags on absl's global FLAGS, and the point is what a new process imports.
"""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import zipfile

import pytest

from mbakt_tf import backbones
from mbakt_tf.cli import backbone_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Config fields that intentionally have no flag.
WITHOUT_FLAGS = {
    # Arguments of the synthetic dataset (a dict): tests and Python callers set it, not a command line.
    "TrainConfig": {"synthetic_kwargs"},
}


def run_python(code, *args):
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )


RUN_SCRIPT_THEN_LIST_HEAVY_MODULES = """
import runpy, sys
script, *args = sys.argv[1:]
sys.argv = [script, *args]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit:
    print("EXIT", exit.code)
print("HEAVY", sorted(m for m in ("tensorflow", "keras", "numpy") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("train.py", ["--helpfull"], "--max_adversarial_grad_ratio"),
        ("compare.py", ["--helpfull"], "--variants"),
        ("evaluate.py", ["--helpfull"], "--model"),
        ("export.py", ["--helpfull"], "--int8_io"),
        ("optimize.py", ["--helpfull"], "--target_sparsity"),
        ("benchmark.py", ["--helpfull"], "--backbone"),
        ("gain_plot.py", ["--helpfull"], "--compare_dirs"),
        ("launch_workers.py", ["--help"], "--num_workers"),
        ("train.py", ["--alpha=2"], "alpha must be in [0, 1]"),  # a config check
        ("train.py", ["--mode=fancy"], "value should be one of"),  # a flag parser check
        ("compare.py", ["--seeds=a"], "expected a comma-separated list of integers"),
        ("export.py", [], "--model"),  # required flag
    ],
)
def test_help_and_usage_errors_come_before_tensorflow(script, args, expected):
    result = run_python(RUN_SCRIPT_THEN_LIST_HEAVY_MODULES, os.path.join("scripts", script), *args)
    assert expected in result.stdout + result.stderr, (result.stdout[-2000:], result.stderr[-2000:])
    assert "HEAVY []" in result.stdout, result.stdout[-2000:]


def _keras_archive_of(path, class_name):
    """A .keras archive whose config names `class_name` (what the scripts read before loading a model)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": class_name, "config": {"name": "net"}}))
    return str(path)


@pytest.mark.parametrize("script", ["evaluate.py", "export.py", "optimize.py"])
def test_a_wrong_model_is_refused_before_tensorflow(script, tmp_path):
    missing = run_python(RUN_SCRIPT_THEN_LIST_HEAVY_MODULES, os.path.join("scripts", script),
                         f"--model={tmp_path}/nothing.keras")
    assert "--model: No saved model at" in missing.stderr, missing.stderr[-2000:]
    assert "EXIT 1" in missing.stdout and "tensorflow" not in missing.stdout, missing.stdout[-2000:]
    plain = _keras_archive_of(tmp_path / "main_branch.keras", "Functional")
    other = run_python(RUN_SCRIPT_THEN_LIST_HEAVY_MODULES, os.path.join("scripts", script), f"--model={plain}")
    assert "holds a Functional model ('net'), not an MBAKT model" in other.stderr, other.stderr[-2000:]
    assert "main_branch.keras is the main branch alone" in other.stderr
    assert "tensorflow" not in other.stdout, other.stdout[-2000:]
    assert f"EXIT {1 if script == 'evaluate.py' else 2}" in other.stdout  # export/optimize: 2 for a model they refuse


def _mbakt_archive_of(path, class_name="MBAKT"):
    """A .keras archive of an MBAKT model with two peers, as far as its config tells (no weights)."""
    network = {"class_name": "Functional", "config": {"name": "mbakt_network", "output_layers": {
        "main_logits": ["main_logits", 0, 0], "branch_1_logits": ["branch_1_logits", 0, 0],
        "branch_2_logits": ["branch_2_logits", 0, 0], "gate": ["gate", 0, 0]}}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": class_name, "config": {"network": network}}))
    return str(path)


@pytest.mark.parametrize("script, class_name, args, expected", [
    ("export.py", "MBAKT", ["--branch=3"],
     "Unknown branch '3': this model has 'main' and its early exits are branch_1, branch_2"),
    ("optimize.py", "MBAKTSegmenter", [], "MBAKTSegmenter: QAT and pruning support MBAKT classification models"),
])
def test_a_model_the_script_cannot_take_is_refused_from_its_config_before_tensorflow(
        script, class_name, args, expected, tmp_path):
    _mbakt_archive_of(tmp_path / "model.keras", class_name)
    result = run_python(RUN_SCRIPT_THEN_LIST_HEAVY_MODULES, os.path.join("scripts", script),
                        f"--model={tmp_path}", f"--output_dir={tmp_path / 'out'}", *args)
    assert expected in result.stderr, result.stderr[-2000:]
    assert "EXIT 2" in result.stdout and "tensorflow" not in result.stdout, result.stdout[-2000:]
    assert not (tmp_path / "out").exists()


DESCRIBE_FLAGS = """
import dataclasses, importlib, json, sys
from absl import flags
cli_module, *config_classes = sys.argv[1:]
importlib.import_module(cli_module)
described = {}
for path in config_classes:
    module, name = path.rsplit(".", 1)
    config_class = getattr(importlib.import_module(module), name)
    described[name] = {
        field.name: {
            "default": list(field.default) if isinstance(field.default, tuple) else field.default,
            "choices": field.metadata.get("choices"),
            "flag": field.name in flags.FLAGS,
            "flag_default": flags.FLAGS[field.name].default if field.name in flags.FLAGS else None,
            "flag_choices": getattr(flags.FLAGS[field.name].parser, "enum_values", None)
                            if field.name in flags.FLAGS else None,
        }
        for field in dataclasses.fields(config_class)
    }
print(json.dumps(described))
"""


def describe_flags(cli_module, *config_classes):
    """`{class name: {field: its default and choices, and its flag's}}` as `cli_module` defines them."""
    result = run_python(DESCRIBE_FLAGS, cli_module, *config_classes)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def flag_default(value):
    """A field default as its flag's default: tuples are lists of strings (comma-separated flags)."""
    return [str(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize(
    "cli_module, config_classes, choices",
    [
        # Flags derived from the fields: this catches a new field no flag group names.
        ("mbakt_tf.cli.train", ["mbakt_tf.config.MBAKTConfig", "mbakt_tf.train_config.TrainConfig"], {}),
        # Flags written out in the script (ExportConfig and OptimizeConfig live in modules that load
        # TensorFlow or are being reworked): the same names, defaults and choices as the fields.
        ("mbakt_tf.cli.optimize", ["mbakt_tf.optimize.OptimizeConfig"],
         {"teacher": ("auto", "ensemble", "main", "none"), "optimizer": ("sgd", "adam"),
          "int8_io": ("int8", "uint8")}),
        ("mbakt_tf.cli.export", ["mbakt_tf.export.ExportConfig"],
         {"int8_io": ("int8", "uint8"), "tflite_metadata": ("auto", "require", "off")}),
    ],
)
def test_every_config_field_has_a_flag_with_its_default(cli_module, config_classes, choices):
    for class_name, fields in describe_flags(cli_module, *config_classes).items():
        allowed = WITHOUT_FLAGS.get(class_name, set())
        missing = sorted(name for name, field in fields.items() if not field["flag"] and name not in allowed)
        assert not missing, f"{class_name} fields without a flag in {cli_module}: {missing}"
        for name, field in fields.items():
            if name in allowed:
                assert not field["flag"], f"{class_name}.{name} has a flag now: drop it from WITHOUT_FLAGS"
                continue
            assert field["flag_default"] == flag_default(field["default"]), (class_name, name, field)
            expected_choices = choices.get(name, field["choices"])
            if expected_choices is not None:
                assert field["flag_choices"] == list(expected_choices), (class_name, name, field)


def test_checked_choices_are_the_modules_own():
    """The choices the test above expects for export and optimize are those the configs validate."""
    from mbakt_tf import export, optimize
    from mbakt_tf.export import tflite

    assert optimize.TEACHERS == ("auto", "ensemble", "main", "none")
    assert optimize.OPTIMIZERS == ("sgd", "adam")
    assert tflite.INT8_IO_TYPES == ("int8", "uint8")
    assert export.TFLITE_METADATA_MODES == ("auto", "require", "off")


def test_backbone_flag_choices_are_the_available_backbones():
    assert backbone_names() == backbones.available_backbones()


def test_zero_means_none_for_the_optional_weights():
    code = """
from absl import flags
import mbakt_tf.cli.train
from mbakt_tf.cli import flags as cli_flags
flags.FLAGS(["train", "--gate_main_weight=0", "--max_adversarial_grad_ratio=0", "--branch_stages=1,2"])
config = cli_flags.mbakt_config_from_flags()
print(config.gate_main_weight, config.max_adversarial_grad_ratio, config.branch_stages)
"""
    result = run_python(code)
    assert result.stdout.strip().splitlines()[-1] == "None None (1, 2)", result.stderr[-2000:]


PARSE_FLAGFILES = """
import importlib, sys
from absl import flags
script, *paths = sys.argv[1:]
importlib.import_module("mbakt_tf.cli." + script)
from mbakt_tf.cli import flags as cli_flags
for path in paths:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", "--flagfile=" + path])
    mbakt_config, train_config = cli_flags.mbakt_config_from_flags(), cli_flags.train_config_from_flags()
    if script == "compare":
        from mbakt_tf import comparison
        for variant in flags.FLAGS.variants:
            comparison.variant_config(mbakt_config, variant)
    print("parsed", path, mbakt_config.mode, train_config.dataset)
"""


@pytest.mark.parametrize("script", ["train", "compare"])
def test_every_flagfile_parses_for_its_script(script):
    paths = sorted(glob.glob(os.path.join(ROOT, "flags", "*.cfg")))
    mine = [p for p in paths if os.path.basename(p).startswith("compare_") == (script == "compare")]
    assert mine
    result = run_python(PARSE_FLAGFILES, script, *mine)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("parsed ")] == mine


def test_package_import_is_light():
    code = """
import sys
import mbakt_tf
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
print(mbakt_tf.MBAKTConfig().mode, "keras" in sys.modules)
"""
    result = run_python(code)
    assert result.stdout.splitlines()[-2:] == ["[]", "mbakt False"], result.stderr[-3000:]


def test_package_names_load_on_first_use():
    import mbakt_tf
    from mbakt_tf import model, segmentation_model

    assert mbakt_tf.MBAKT is model.MBAKT and mbakt_tf.MBAKTSegmenter is segmentation_model.MBAKTSegmenter
    assert mbakt_tf.export.__name__ == "mbakt_tf.export" and mbakt_tf.data.__name__ == "mbakt_tf.data"
    assert {"MBAKT", "MBAKTConfig", "data", "export", "optimize"} <= set(mbakt_tf.__all__) <= set(dir(mbakt_tf))
    assert {"ExportConfig", "serving", "tflite"} <= set(mbakt_tf.export.__all__) <= set(dir(mbakt_tf.export))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        mbakt_tf.no_such_name


def test_config_flags_kinds():
    """Each field type becomes its flag kind (in a fresh FlagValues, not the scripts' FLAGS)."""
    from typing import Optional, Tuple

    from mbakt_tf.cli import config_flags
    from mbakt_tf.config import config_field

    @dataclasses.dataclass
    class Config:
        name: Optional[str] = config_field(None, "A name.")
        mode: str = config_field("a", "A mode.", ("a", "b"))
        count: int = config_field(3, "A count.")
        rate: Optional[float] = config_field(0.5, "A rate.")
        on: bool = config_field(True, "A switch.")
        widths: Tuple[int, ...] = config_field((4, 8), "Widths.")

    kinds = {
        field.name: config_flags.value_type(field) for field in dataclasses.fields(Config)
    }
    assert kinds == {"name": str, "mode": str, "count": int, "rate": float, "on": bool, "widths": tuple}
