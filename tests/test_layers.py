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

# Bottom to top. A module belongs to the first entry that is it or a package above it.
LAYERS: list[tuple[str, ...]] = [
    ("mtl.errors",),  # the error types every layer raises and catches: imports nothing
    ("mtl.metric_key",),  # metric names, formatted and parsed (the checks read select_best): imports nothing
    ("mtl.console",),  # what the console shows (log filter, closing summary): imports nothing of the project
    ("sampling.config",),  # the sampler's own config type, embedded in the schema
    ("mtl.config",),  # the experiment schema: frozen dataclasses, data only
    ("mtl.typed_yaml", "mtl.overrides"),  # YAML with lines, checked against any dataclass; `--set` overrides
    # raw data → Experiment, the checks across its sections and the launch section's rules: no family consulted
    ("mtl.experiment_parse", "mtl.experiment_checks", "mtl.launch_rules"),
    ("sampling",),
    ("tasks",),
    ("mtl.runtime",),  # the process's place in a launch (rank, world, device) and its collectives: torch only
    # mtl.regimes.base and .checks: the regime registry and the door checks mtl.experiment consults
    ("mtl.experiment", "mtl.regimes.base", "mtl.regimes.checks", "mtl.data", "mtl.feature_store", "mtl.encoder",
     "mtl.model", "mtl.checkpoint", "mtl.checkpoint_load"),
    ("mtl",),  # trainer, regimes, evaluation, tracking, inference
    ("launch",),
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
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module}: in no layer of the test's map")


GRAPH = _graph()


def test_the_walk_sees_the_imports():
    assert "mtl.config" in GRAPH["tasks.base"]
    assert "tasks" in GRAPH["mtl.data"] and "tasks.base" in GRAPH["mtl.data"]
    assert "mtl.trainer" in GRAPH["launch.cli"]  # imported inside a function


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    upward = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports from a layer above: {upward}"


def test_sampling_imports_nothing_from_mtl_or_tasks():
    for module, targets in GRAPH.items():
        if module.split(".")[0] == "sampling":
            assert not [t for t in targets if t.split(".")[0] in ("mtl", "tasks")], module


def test_schema_imports_nothing_of_the_project_but_the_sampler_config():
    assert GRAPH["mtl.config"] <= {"sampling.config"}, GRAPH["mtl.config"]


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
    loaded = _modules_after("import mtl.config, mtl.typed_yaml, mtl.overrides, mtl.experiment_parse, "
                            "mtl.experiment_checks, mtl.launch_rules")
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
