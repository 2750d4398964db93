"""Raw experiment data read into the schema's typed objects, before any family is consulted.

The `--set` overrides are applied first, so they are checked like written values; then the data is checked
against the schema (mtl/core/config.py) by mtl/core/typed_yaml.py, and data_root settles where relative paths resolve.
mtl/experiment.py assembles the result with its families' checks.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from mtl.core.config import Experiment
from mtl.core.overrides import set_override
from mtl.core.typed_yaml import Context


def _regime_shorthand(data: dict[str, Any]) -> None:
    """`regime: single` (or `--set regime=single`) stands for `regime: {name: single}`."""
    if isinstance(data.get("regime"), str):
        data["regime"] = {"name": data["regime"]}


def resolve_path(rel: str, exp: Experiment) -> Path:
    """Resolve a dataset path against the experiment's data_root."""
    p = Path(rel).expanduser()
    return p if p.is_absolute() else (Path(exp.data_root or exp._base_dir or ".") / p).resolve()


def parse_experiment(
    data: Any, ctx: Context, overrides: list[str] | None, base_dir: Path | None, check_files: bool
) -> Experiment:
    """Check raw experiment data from `ctx.source` against the schema (no family is consulted); relative
    paths will resolve against `base_dir` (default: the source's folder). mtl/experiment.py assembles the
    result with its families' checks."""
    if not isinstance(data, dict):
        raise ctx.error((), "an experiment file must be a mapping with at least `name` and `tasks`")
    data = copy.deepcopy(data)
    _regime_shorthand(data)
    for assignment in overrides or []:
        set_override(data, assignment)
        _regime_shorthand(data)
    tasks_raw = data.get("tasks")
    if isinstance(tasks_raw, dict):
        for task_name in tasks_raw:
            if "/" in str(task_name):
                raise ctx.error(("tasks", str(task_name)), "task names may not contain '/'")
    exp = ctx.build(Experiment, data, ())
    base = base_dir or Path(ctx.source).parent
    if not exp.tasks:
        raise ctx.error(("tasks",), "at least one task is needed")
    data_root_given = exp.data_root is not None
    root = Path(exp.data_root).expanduser() if data_root_given else base
    if not root.is_absolute():
        # A relative data_root is read from the file's folder, else from the working directory
        # (the usual case for `--set data_root=../shared/data` typed on the command line).
        from_file = (base / root).resolve()
        root = from_file if from_file.is_dir() else (Path.cwd() / root).resolve()
    if check_files and not root.is_dir():
        raise ctx.error(("data_root",), f"folder not found: {root}")
    return dataclasses.replace(
        exp, tasks={name: dataclasses.replace(task, name=name) for name, task in exp.tasks.items()},
        source=ctx.source, overrides=list(overrides or []), data_root=str(root) if data_root_given else None,
        _base_dir=str(root),
    )
