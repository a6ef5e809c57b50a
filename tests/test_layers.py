"""The package's structure: imports point one way, stages stay out of MLflow, modules stay small.

The import graph is built from the source (every ``import`` and ``from ... import``, at module
level or inside a function, since a lazy import is still a dependency). Layers, lowest first
(documentation/architecture.md):

    0  kallos_models (package), errors, config, files, urls, signals, stage_settings,
       live_settings
    1  data.*
    2  modelling.*
    3  stages.*       (a stage never imports another stage)
    4  mlops.*
    5  pipeline, demo, compare, and the seed's re-export modules tuner, datasets, architectures
    6  cli, __main__

A module may import its own layer or lower ones, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "kallos_models"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 520
SEED_REEXPORTS = {"kallos_models.tuner", "kallos_models.datasets", "kallos_models.architectures"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = all_modules()


def imported_names(path: Path) -> set[str]:
    """Every ``kallos_models`` module ``path`` imports, and ``mlflow`` if it imports that."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if candidate in MODULES:
                    found.add(candidate)
    ours = {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}
    resolved = set()
    for name in ours:
        while name not in MODULES:  # `import kallos_models.x.y` of a name inside a module
            name = name.rpartition(".")[0]
        resolved.add(name)
    if any(name == "mlflow" or name.startswith("mlflow.") for name in found):
        resolved.add("mlflow")
    return resolved


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        # a module's own package __init__ is implied by the import system, not a dependency
        graph[name] = {dep for dep in imported_names(path) if dep != name}
    return graph


def layer(module: str) -> int:
    short = module[len(PACKAGE) + 1 :] if module != PACKAGE else ""
    top = short.split(".")[0]
    if top in (
        "",
        "errors",
        "config",
        "files",
        "urls",
        "signals",
        "stage_settings",
        "live_settings",
    ):
        return 0
    if top == "data":
        return 1
    if top == "modelling":
        return 2
    if top == "stages":
        return 3
    if top == "mlops":
        return 4
    if top in ("pipeline", "demo", "compare") or module in SEED_REEXPORTS:
        return 5
    if top in ("cli", "__main__"):
        return 6
    raise AssertionError(f"{module} is in no layer; add it to tests/test_layers.py and the docs")


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stages" else None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, deps in import_graph().items():
        for dep in deps - {"mlflow"}:
            if layer(dep) > layer(module):
                wrong.append(f"{module} (layer {layer(module)}) imports {dep} (layer {layer(dep)})")
            elif dep in SEED_REEXPORTS:
                wrong.append(f"{module} imports the seed re-export {dep}; import the real module")
    assert not wrong, "\n".join(wrong)


def test_no_stage_imports_another_stage_tracking_or_mlflow() -> None:
    wrong = []
    for module, deps in import_graph().items():
        stage = stage_of(module)
        if stage is None:
            continue
        for dep in deps:
            if dep == "mlflow" or dep.startswith(f"{PACKAGE}.mlops"):
                wrong.append(f"stage module {module} imports {dep}")
            other = stage_of(dep)
            if other is not None and other != stage:
                wrong.append(f"stage {stage} ({module}) imports stage {other} ({dep})")
    assert not wrong, "\n".join(wrong)


def test_only_mlops_imports_mlflow() -> None:
    users = sorted(m for m, deps in import_graph().items() if "mlflow" in deps)
    assert users and all(m.startswith(f"{PACKAGE}.mlops") for m in users), users


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small(module: str) -> None:
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by what its parts do"


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer(module)
