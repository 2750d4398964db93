"""An experiment assembled: the schema (mtl/config.py) checked (mtl/experiment_parse.py), then each task's
family and each dataset's reader consulted for their options, then the checks across sections
(mtl/experiment_checks.py) and the regime's, with the same file:line errors.

This sits above `tasks/`, so that checking an experiment file's schema needs no family, and the
families' typed options built here travel on the TaskConfig and DatasetConfig objects themselves.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from mtl.config import DatasetConfig, Experiment
from mtl.experiment_checks import check_experiment
from mtl.experiment_parse import parse_experiment, resolve_path
from mtl.regimes.checks import check_names, check_regime
from mtl.typed_yaml import Context, load_yaml
from tasks import get_family
from tasks.base import DataError
from tasks.formats import reader_for


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
    exp = parse_experiment(data, ctx, overrides, base_dir, check_files)
    check_names(exp, ctx)  # where the schema's own check of a regime name once stood
    _family_checks(exp, ctx, check_files, use_local=exp.data_root is not None)
    check_experiment(exp, ctx)
    check_regime(exp, ctx)  # the regime keys, then what each chosen regime needs of the tasks
    return exp


def experiment_from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> Experiment:
    """Validate an in-memory experiment (tests, notebooks); relative paths resolve against base_dir."""
    return validate(data, source="<dict>", base_dir=Path(base_dir).resolve())


def _family_checks(exp: Experiment, ctx: Context, check_files: bool, use_local: bool) -> None:
    for task_name, task in exp.tasks.items():
        path = ("tasks", task_name)
        try:
            family = get_family(task.family)
        except KeyError as err:
            raise ctx.error(path + ("family",), str(err.args[0])) from None
        task.options = ctx.build(family.Options, task.options, path + ("options",))
        if not task.datasets:
            raise ctx.error(path + ("datasets",), "a task needs at least one dataset")
        for i, ds in enumerate(task.datasets):
            dpath = path + ("datasets", str(i))
            if ds.local is not None and use_local and ds.hub is not None:
                _use_local(ds, dpath, ctx)
            ds.name = ds.name or ds.language
            try:
                reader = reader_for(family, ds)
            except DataError as err:
                if not (ds.train or ds.dev or ds.test):  # no file to tell the format by
                    raise ctx.error(dpath, "a dataset needs at least one of train, dev, test") from None
                raise ctx.error(dpath + ("format",), str(err)) from None
            if reader.Options is not None:  # typed once here, with the line number; the reader uses them as they are
                ds.options = ctx.build(reader.Options, {**reader.presets, **ds.options}, dpath + ("options",))
            if not (ds.train or ds.dev or ds.test):
                raise ctx.error(dpath, "a dataset needs at least one of train, dev, test")
            if ds.hub is None:  # resolved even when files are not checked, so the cwd never matters
                for role in ("train", "dev", "test"):
                    rel = ds.split(role)
                    if rel is None:
                        continue
                    resolved = resolve_path(rel, exp)
                    if check_files and not resolved.exists():
                        raise ctx.error(dpath + (role,), f"file not found: {resolved}")
                    ds._given[role] = rel
                    setattr(ds, role, str(resolved))
        names = [ds.name for ds in task.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ctx.error(
                path + ("datasets",), f"two datasets share the name {dupes[0]!r}; give each a distinct `name`"
            )


def _use_local(ds: DatasetConfig, path: tuple[str, ...], ctx: Context) -> None:
    allowed = {"train", "dev", "test", "format", "fields", "options"}
    local = ds.local or {}
    for key, value in local.items():
        if key not in allowed:
            raise ctx.error(path + ("local", key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        hint = typing.get_type_hints(DatasetConfig)[key]
        setattr(ds, key, ctx.convert(value, hint, path + ("local", key)))
    for role in ("train", "dev", "test"):
        if role not in local:
            setattr(ds, role, None)
    ds.hub = None
    ds.hub_config = None
