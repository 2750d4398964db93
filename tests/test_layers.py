"""The one-way flow of DESIGN.md, read off the source: every import (module level or inside a
function) points to the same layer or one below, and no module imports itself in a circle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sampling", "mtl", "tasks", "launch")

# Bottom to top: a folder is a layer, and a module belongs to the deepest folder of the list that holds it.
LAYERS: list[tuple[str, ...]] = [
    ("mtl/core",),  # the words every layer speaks: error types, the experiment schema and its checks, metric keys
    ("sampling", "tasks"),  # the sampler and the task families: peers, each on mtl/core alone
    ("mtl",),  # the engine: model, data, trainer, evaluation, regimes, tracking, inference
    ("launch",),  # the command line and the launch profiles
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Project modules `path` imports, resolved to the longest name that is a module of the project."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in _imports(path, module):
            while name and name not in files:  # `from pkg.mod import func` → pkg.mod
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _layer(module: str) -> int:
    """The layer of the deepest listed folder holding `module` (mtl/core before mtl)."""
    path = module.replace(".", "/")
    best: tuple[int, int] | None = None  # (depth of the folder, layer)
    for i, folders in enumerate(LAYERS):
        for folder in folders:
            if (path == folder or path.startswith(folder + "/")) and (best is None or folder.count("/") > best[0]):
                best = (folder.count("/"), i)
    if best is None:
        raise AssertionError(f"{module}: in no folder of the test's map")
    return best[1]


GRAPH = _graph()


def test_the_walk_sees_the_imports():
    assert "mtl.core.config" in GRAPH["tasks.base"]
    assert "tasks" in GRAPH["mtl.data"] and "tasks.base" in GRAPH["mtl.data"]
    assert "mtl.trainer" in GRAPH["launch.cli"]  # imported inside a function


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    upward = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports from a layer above: {upward}"


def test_sampling_and_tasks_stand_on_mtl_core_alone():
    """The two peers of the middle layer import neither each other nor the engine above them."""
    for module, targets in GRAPH.items():
        top = module.split(".")[0]
        if top in ("sampling", "tasks"):
            other = "tasks" if top == "sampling" else "sampling"
            wrong = [t for t in targets if t.split(".")[0] == other or (t.startswith("mtl") and _layer(t) != 0)]
            assert not wrong, f"{module} imports {wrong}"


def test_schema_imports_nothing_of_the_project_but_the_sampler_config():
    assert GRAPH["mtl.core.config"] <= {"mtl.core.sampling_config"}, GRAPH["mtl.core.config"]


def test_no_import_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import circle: " + " → ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def _modules_after(statement: str) -> set[str]:
    """Modules a fresh interpreter holds after `statement`."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_the_schema_loads_no_family_and_no_torch():
    loaded = _modules_after("import mtl.core.config, mtl.core.typed_yaml, mtl.core.overrides, "
                            "mtl.core.experiment_parse, mtl.core.experiment_checks, mtl.core.launch_rules")
    assert not {m for m in loaded if m.split(".")[0] in ("tasks", "torch", "transformers")}


def _reachable(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_regime_planner_needs_no_training_loop():
    """`plan()` is pure: the dry run prints a regime's stages without loading the trainer or MLflow."""
    loaded = _modules_after("import mtl.regimes")
    assert "mtl.regimes" in loaded
    assert not loaded & {"mtl.trainer", "accelerate", "mlflow", "matplotlib"}


def test_prediction_and_the_dry_run_need_no_training_loop():
    assert "mtl.trainer" not in _reachable("mtl.inference")  # building a model is not training
    assert "mtl.trainer" not in _reachable("mtl.extra_eval")  # nor is scoring a run on more data
    assert "mtl.trainer" not in _reachable("mtl.data")  # where the CLI's dry run finds resolve_steps
    loaded = _modules_after("import mtl.inference, mtl.model")
    assert "mtl.inference" in loaded and "mtl.model" in loaded
    assert not loaded & {"mtl.trainer", "mtl.tracking", "accelerate", "mlflow"}
