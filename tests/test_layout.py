"""The package's shape: no import cycle, tasks are siblings, no library file over 600 lines."""

import ast
import os

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


def test_no_library_file_is_over_600_lines():
    long = {name: n for name, path in package_modules() if (n := len(open(path).read().splitlines())) > 600}
    assert long == {}
