"""An experiment assembled: the schema (mtl/core/config.py) checked (mtl/core/experiment_parse.py), then each task's
family and each dataset's reader consulted for their options, then the checks across sections
(mtl/core/experiment_checks.py) and the regime's, with the same file:line errors.

This sits above `tasks/`, so that checking an experiment file's schema needs no family. Assembly builds a new
Experiment from the parsed one and edits nothing of it: the families' and readers' typed options and the
resolved dataset paths travel on new TaskConfig and DatasetConfig objects, so a family is always handed typed
options, and the parsed experiment stays what the file said.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from mtl.core.config import DatasetConfig, Experiment, TaskConfig
from mtl.core.errors import DataError
from mtl.core.experiment_checks import check_experiment
from mtl.core.experiment_parse import parse_experiment, resolve_path
from mtl.core.launch_rules import read_launch_files
from mtl.core.typed_yaml import Context, load_yaml
from mtl.regimes.checks import check_names, check_regime
from tasks import get_family
from tasks.base import TaskFamily
from tasks.formats import reader_for

ROLES = ("train", "dev", "test")


def load_experiment(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> Experiment:
    """Read, override, and validate an experiment file."""
    path = Path(path)
    data, lines = load_yaml(path)
    return validate(data, source=str(path), lines=lines, overrides=overrides, check_files=check_files)


def validate(
    data: Any,
    source: str,
    lines: dict[tuple[str, ...], int] | None = None,
    overrides: list[str] | None = None,
    base_dir: Path | None = None,
    check_files: bool = True,
) -> Experiment:
    """Validate raw experiment data; relative paths resolve against `base_dir` (default: the source's folder)."""
    ctx = Context(source, lines or {}, overrides)
    parsed = parse_experiment(data, ctx, overrides, base_dir, check_files)
    check_names(parsed, ctx)  # where the schema's own check of a regime name once stood
    return assemble(parsed, ctx, check_files)


def experiment_from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> Experiment:
    """Validate an in-memory experiment (tests, notebooks); relative paths resolve against base_dir."""
    return validate(data, source="<dict>", base_dir=Path(base_dir).resolve())


def assemble(parsed: Experiment, ctx: Context, check_files: bool = True) -> Experiment:
    """The experiment that runs, built anew from a parsed one (which is left as it was): each task's typed
    options, each dataset's typed reader options, name and resolved paths (its local copy in place of the hub
    once data_root is set), a deepspeed_config file's content; then the checks across sections and the regime's."""
    use_local = parsed.data_root is not None
    tasks = {name: _task(name, task, parsed, ctx, check_files, use_local) for name, task in parsed.tasks.items()}
    exp = dataclasses.replace(parsed, tasks=tasks)
    check_experiment(exp, ctx)
    exp = dataclasses.replace(exp, launch=read_launch_files(exp, ctx))
    check_regime(exp, ctx)  # the regime keys, then what each chosen regime needs of the tasks
    return exp


def _task(name: str, task: TaskConfig, exp: Experiment, ctx: Context, check_files: bool,
          use_local: bool) -> TaskConfig:
    path = ("tasks", name)
    try:
        family = get_family(task.family)
    except KeyError as err:
        raise ctx.error(path + ("family",), str(err.args[0])) from None
    options = ctx.build(family.Options, task.options, path + ("options",))
    if not task.datasets:
        raise ctx.error(path + ("datasets",), "a task needs at least one dataset")
    datasets = [_dataset(family, ds, path + ("datasets", str(i)), exp, ctx, check_files, use_local)
                for i, ds in enumerate(task.datasets)]
    names = [ds.name for ds in datasets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ctx.error(
            path + ("datasets",), f"two datasets share the name {dupes[0]!r}; give each a distinct `name`"
        )
    return dataclasses.replace(task, options=options, datasets=datasets)


def _dataset(family: type[TaskFamily], ds: DatasetConfig, dpath: tuple[str, ...], exp: Experiment, ctx: Context,
             check_files: bool, use_local: bool) -> DatasetConfig:
    if ds.local is not None and use_local and ds.hub is not None:
        ds = _use_local(ds, dpath, ctx)
    ds = dataclasses.replace(ds, name=ds.name or ds.language)
    try:
        reader = reader_for(family, ds)
    except DataError as err:
        if not (ds.train or ds.dev or ds.test):  # no file to tell the format by
            raise ctx.error(dpath, "a dataset needs at least one of train, dev, test") from None
        raise ctx.error(dpath + ("format",), str(err)) from None
    options = ds.options
    if reader.Options is not None:  # typed once here, with the line number; the reader uses them as they are
        options = ctx.build(reader.Options, {**reader.presets, **ds.options}, dpath + ("options",))
    if not (ds.train or ds.dev or ds.test):
        raise ctx.error(dpath, "a dataset needs at least one of train, dev, test")
    given, paths = dict(ds._given), {}
    if ds.hub is None:  # resolved even when files are not checked, so the cwd never matters
        for role in ROLES:
            rel = ds.split(role)
            if rel is None:
                continue
            resolved = resolve_path(rel, exp)
            if check_files and not resolved.exists():
                raise ctx.error(dpath + (role,), f"file not found: {resolved}")
            given[role] = rel
            paths[role] = str(resolved)
    return dataclasses.replace(ds, options=options, _given=given, **paths)


def _use_local(ds: DatasetConfig, path: tuple[str, ...], ctx: Context) -> DatasetConfig:
    """The dataset with its `local:` copy in place of the hub (splits it does not name are dropped)."""
    allowed = {"train", "dev", "test", "format", "fields", "options"}
    local = ds.local or {}
    changes: dict[str, Any] = {}
    for key, value in local.items():
        if key not in allowed:
            raise ctx.error(path + ("local", key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        hint = typing.get_type_hints(DatasetConfig)[key]
        changes[key] = ctx.convert(value, hint, path + ("local", key))
    for role in ROLES:
        if role not in local:
            changes[role] = None
    return dataclasses.replace(ds, **changes, hub=None, hub_config=None)
