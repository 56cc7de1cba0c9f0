"""The package's shape: no import cycle, tasks are siblings, the deploy wing, no library file over 600 lines."""

import ast
import os
import subprocess
import sys

import mbakt_tf
from mbakt_tf import tasks

PACKAGE = os.path.dirname(mbakt_tf.__file__)


def module_name(path):
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def package_modules():
    for root, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                yield module_name(os.path.join(root, file)), os.path.join(root, file)


def load_time_imports(path, name, known):
    """The package modules `path` imports when it is imported: module-level statements, not
    imports inside functions. `from a import b` counts a.b when that is a module, else a."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return {m for m in found if m in known and m != name}


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    modules = dict(package_modules())
    graph = {name: load_time_imports(path, name, modules) for name, path in modules.items()}
    assert graph["mbakt_tf.segmentation_model"] >= {"mbakt_tf.multi_branch_model"}  # the walk sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # and would see a cycle


def test_tasks_are_siblings_over_one_training_step():
    from mbakt_tf.multi_branch_model import MultiBranchModel

    classifier = tasks.get_task("classification").model_class()
    segmenter = tasks.get_task("segmentation").model_class()
    assert classifier.__bases__ == (MultiBranchModel,) and segmenter.__bases__ == (MultiBranchModel,)
    assert "train_step" not in vars(classifier) and "train_step" not in vars(segmenter)
    # The classifier's module never imports the segmenter's, not even inside a function: it reaches
    # the other tasks through `tasks`.
    tree = ast.parse(open(os.path.join(PACKAGE, "model.py")).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "mbakt_tf.tasks" in imported
    assert not [m for m in imported if "segmentation" in m]


def test_segmenter_built_through_the_classifier_is_named_as_a_segmenter():
    model = mbakt_tf.MBAKT.from_backbone(
        "small_resnet8", 4, (16, 16, 1), task="segmentation", config=mbakt_tf.MBAKTConfig(mode="plain"))
    assert type(model).__name__ == "MBAKTSegmenter" and model.name == "mbakt_segmenter"
    assert not isinstance(model, mbakt_tf.MBAKT)


# The public names of `mbakt_tf.export` when it was one module (`mbakt_tf/export.py`).
EXPORT_NAMES = (
    "ExportCheckError", "ExportConfig", "ExportResult", "INPUT_NAME", "INT8_IO_TYPES", "LABELS", "LiteRTModel",
    "MANIFEST", "MANIFEST_VERSION", "ModelFileNotFoundError", "NotMBAKTModelError", "PARITY_TOLERANCES",
    "SAVED_MODEL_DIR", "SEGMENTATION_TEST_LIMIT", "SIGNATURE_KEY", "TFLITE_FORMATS", "TFLITE_METADATA_MODES",
    "check_images", "convert_tflite", "default_output_dir", "deployable_model", "expected_weight_ops",
    "export_from_file", "export_model", "foreign_names", "format_report", "load_mbakt_model", "mediapipe_tasks",
    "non_builtin_ops", "parity", "probe_saved_model", "resolve_branch", "resolve_model_path", "rgb_input",
    "structure_checks", "tflite_structure", "write_saved_model", "write_tflite",
)


def test_the_deploy_wing_is_a_package_with_the_names_of_the_old_module():
    from mbakt_tf import export

    assert not [f for f in os.listdir(PACKAGE) if f.startswith("export") and f.endswith(".py")]
    assert {"exporter", "config", "serving", "tflite", "rgb_input", "mediapipe_steps", "mediapipe_tasks",
            "report"} <= set(export.__all__)
    assert [name for name in EXPORT_NAMES if not hasattr(export, name)] == []
    assert export.export_model is export.exporter.export_model and export.ExportConfig is export.config.ExportConfig
    # Saved .keras files name the in-graph RGB layer by its registered name, which the move kept.
    assert export.rgb_input.RGBToModelChannels.__module__ == "mbakt_tf.export.rgb_input"
    import keras

    assert keras.saving.get_registered_name(export.rgb_input.RGBToModelChannels) == "mbakt_tf>RGBToModelChannels"


def test_the_deploy_wing_loads_a_module_only_when_asked():
    """The tfmot process takes `serving` and `tflite` from the wing, the export flags take `ExportConfig`:
    none of them loads Keras or TensorFlow."""
    code = ("import sys; import mbakt_tf.export.serving, mbakt_tf.export.tflite; "
            "from mbakt_tf.export import ExportConfig, mediapipe_tasks; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'mbakt_tf.export.exporter') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(PACKAGE))
    assert result.stdout.strip().splitlines()[-1:] == ["[]"], result.stderr[-2000:]


def test_no_library_file_is_over_600_lines():
    long = {name: n for name, path in package_modules() if (n := len(open(path).read().splitlines())) > 600}
    assert long == {}
