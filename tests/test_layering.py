"""The dependency rule of vfscreen's stages, checked on the import statements of every module (parsed with ``ast``).

    core (vfscreen.core, paths, errors, labels, genant, dataset, segmentation_source, utils)  <- every stage
    experiment_planning <- preprocessing <- training
    inference: core + preprocessing (the crop function prediction shares with training), never training/evaluation
    evaluation: core + preprocessing + inference (it evaluates what inference writes)
    phantom, conversion: data producers (core; conversion also writes preprocessed crops)
    orchestrators (the demo, the plan-and-preprocess command, the benchmark): anything

Also: no import cycle among vfscreen modules; vfscreen imports sit at module top (only the package root imports the
pipeline on call, to keep ``import vfscreen`` light); nnunetv2 is imported only after ``paths.export_for_nnunet()``
(nnunetv2 reads its folders once, at import); nobody keeps a frozen copy of a folder (``from vfscreen.paths import``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vfscreen"
CORE = {"vfscreen", "vfscreen.core", "vfscreen.paths", "vfscreen.errors", "vfscreen.labels", "vfscreen.genant",
        "vfscreen.segmentation_source",
        "vfscreen.dataset", "vfscreen.utils"}
ORCHESTRATORS = {"vfscreen.demo", "vfscreen.experiment_planning.cli", "vfscreen.evaluation.benchmark",
                 "vfscreen.evaluation.untrained"}
ALLOWED = {  # layer -> the layers its modules may import (besides their own)
    "core": set(),
    "phantom": {"core"},
    "conversion": {"core", "preprocessing"},
    "experiment_planning": {"core"},
    "preprocessing": {"core", "experiment_planning"},
    "training": {"core", "experiment_planning", "preprocessing"},
    "inference": {"core", "preprocessing"},
    "evaluation": {"core", "preprocessing", "inference"},
}
LAZY_IMPORTS_ALLOWED = {("vfscreen", "vfscreen.inference.predict")}  # vfscreen.predict(): the pipeline on call


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in ORCHESTRATORS:
        return "orchestrator"
    if module in CORE or module.startswith(("vfscreen.core.", "vfscreen.utils.")):
        return "core"
    return module.split(".")[1]


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def collect() -> dict[str, dict]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        top = {id(node) for node in tree.body}
        imports = []  # (imported vfscreen module, line, at module top)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, path.name == "__init__.py", node)
                # "from vfscreen.x import y" may import the submodule vfscreen.x.y
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            for target in targets:
                imports.append((target, node.lineno, id(node) in top))
        modules[name] = {"path": path, "tree": tree, "imports": imports}
    names = set(modules)
    for info in modules.values():
        info["vfscreen_imports"] = sorted({(t, line, at_top) for t, line, at_top in info["imports"]
                                           if t in names and t != "vfscreen"})
    return modules


MODULES = collect()


def _edges(at_top_only: bool = True) -> dict[str, set[str]]:
    return {name: {target for target, _, at_top in info["vfscreen_imports"] if at_top or not at_top_only}
            for name, info in MODULES.items()}


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted(name for name in MODULES if layer_of(name) not in ALLOWED and layer_of(name) != "orchestrator")
    assert not unknown, f"modules outside the layer table of tests/test_layering.py: {unknown}"


def test_no_stage_imports_upward_or_sideways():
    violations = []
    for name, info in MODULES.items():
        layer = layer_of(name)
        if layer == "orchestrator":
            continue
        for target, line, _ in info["vfscreen_imports"]:
            target_layer = layer_of(target)
            if (name, target) in LAZY_IMPORTS_ALLOWED:
                continue
            if target_layer != layer and target_layer not in ALLOWED[layer]:
                violations.append(f"{info['path'].relative_to(PACKAGE.parent)}:{line}: {name} ({layer}) imports "
                                  f"{target} ({target_layer})")
    assert not violations, "imports against the dependency rule:\n" + "\n".join(violations)


def test_no_import_cycles():
    edges = _edges(at_top_only=False)
    for name in edges:  # a package's __init__ importing its own submodules is not a cycle of modules
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".") and t != name}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_vfscreen_imports_are_at_module_top():
    inside = [f"{info['path'].relative_to(PACKAGE.parent)}:{line}: {target}"
              for name, info in MODULES.items() for target, line, at_top in info["vfscreen_imports"]
              if not at_top and (name, target) not in LAZY_IMPORTS_ALLOWED]
    assert not inside, "vfscreen imports inside functions (move them to the module top):\n" + "\n".join(inside)


def test_nnunetv2_is_imported_after_the_folders_are_exported():
    late = []
    for name, info in MODULES.items():
        nnunet_lines = [line for target, line, _ in info["imports"] if target.split(".")[0] == "nnunetv2"]
        if not nnunet_lines:
            continue
        exports = [node.lineno for node in info["tree"].body if isinstance(node, ast.Expr)
                   and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "paths.export_for_nnunet"]
        if not exports or min(exports) > min(nnunet_lines):
            late.append(f"{info['path'].relative_to(PACKAGE.parent)}:{min(nnunet_lines)}")
    assert not late, ("modules importing nnunetv2 without calling paths.export_for_nnunet() before:\n"
                      + "\n".join(late))


def test_no_frozen_copies_of_the_data_folders():
    frozen = [f"{info['path'].relative_to(PACKAGE.parent)}:{node.lineno}" for info in MODULES.values()
              for node in ast.walk(info["tree"]) if isinstance(node, ast.ImportFrom) and node.module == "vfscreen.paths"
              and any(alias.name.startswith("nnUNet_") for alias in node.names)]
    assert not frozen, "use paths.nnUNet_raw etc. (read at each access), not a copy taken at import:\n" + \
        "\n".join(frozen)


@pytest.mark.parametrize("source, expected", [
    ("from vfscreen.training.grader.trainer import x", "inference imports vfscreen.training.grader.trainer"),
])
def test_the_checker_sees_an_upward_import(source, expected, monkeypatch):
    """The rule test is not vacuous: an inference module importing training code is reported."""
    name = "vfscreen.inference.predict"
    tree = ast.parse(source)
    node = tree.body[0]
    fake = dict(MODULES[name], vfscreen_imports=MODULES[name]["vfscreen_imports"] + [(node.module, 1, True)])
    monkeypatch.setitem(MODULES, name, fake)
    with pytest.raises(AssertionError, match=r"\(inference\) imports vfscreen\.training\.grader\.trainer"):
        test_no_stage_imports_upward_or_sideways()
