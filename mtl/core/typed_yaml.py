"""YAML read with the line of every key, and checked against type hints and dataclasses.

Knows no experiment: the schema (mtl/core/config.py), the families' and readers' Options and the sampler's config
are all checked here the same way, so every error names the file, the line and the key path, and a typo in a
200-line experiment file is found in seconds rather than after an hour of training.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from mtl.core.config import did_you_mean
from mtl.core.errors import ConfigError

# --------------------------------------------------------------------------- YAML with line numbers


def _compose_lines(
    node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int], source: str = "<yaml>"
) -> None:
    """Record the line of every key path; a key written twice in one mapping is an error, since
    YAML would keep the last one silently (a task block pasted twice, a lost `- language:` line)."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                where = ".".join((*path, key))
                raise ConfigError(
                    f"{source}:{line}: {where}: key {key!r} given twice in one mapping (lines {seen[key]} and "
                    f"{line}); YAML would keep only the last one"
                )
            seen[key] = line
            out[path + (key,)] = line
            _compose_lines(value_node, path + (key,), out, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (str(i),)] = item.start_mark.line + 1
            _compose_lines(item, path + (str(i),), out, source)


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text (a byte-order mark is accepted and dropped); bad bytes are named by line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


def load_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The file's data and the line of each key path; unreadable files and bad YAML are a ConfigError by line."""
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the experiment file ({err.strerror or err})") from None
    text = _decode(path, raw)
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        if node is not None:
            _compose_lines(node, (), lines, str(path))
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (e.g. NUL)
        line = text[: err.position].count("\n") + 1
        raise ConfigError(f"{path}:{line}: not valid YAML: character {err.character!r} is not allowed") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be an experiment file") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


# --------------------------------------------------------------------------- checking against type hints


class Context:
    """Where an experiment came from, so that every error names its file, line and key path."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int], overrides: list[str] | None = None):
        self.source = source
        self.lines = lines
        # key path -> the `--set KEY=VALUE` argument that gave it: an error there names what was typed
        self.overrides = {tuple(a.split("=", 1)[0].strip().split(".")): a for a in overrides or [] if "=" in a}

    def build(self, cls: type, data: Any, path: tuple[str, ...]) -> Any:
        """Check a mapping found at `path` against a dataclass (unknown keys, types, choices)."""
        return _build(cls, data, path, self)

    def convert(self, value: Any, tp: Any, path: tuple[str, ...]) -> Any:
        """Check one value found at `path` against a type hint."""
        return _convert(value, tp, path, self)

    def error(self, path: tuple[str, ...], message: str) -> ConfigError:
        """'file:line: key.path: message', or '--set ARG: key.path: message' where the value was typed there."""
        key = ".".join(path) or "<top level>"
        given = [p for p in self.overrides if path[: len(p)] == p]
        if given:  # the value came from the command line: point there, not at a line of the file
            return ConfigError(f"--set {self.overrides[max(given, key=len)]}: {key}: {message}")
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {key}: {message}" if where else f"{key}: {message}")


def _type_name(tp: Any) -> str:
    """A type hint as an error message writes it: 'int or null', "'max' | 'min'"."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: tuple[str, ...], ctx: Context) -> Any:
    """`value` checked against the hint `tp` (unions, Literal, list, dict, dataclasses, scalars)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, ctx)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ctx.error(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ctx.error(path, f"must be one of {_type_name(tp)}, got {value!r}{did_you_mean(value, get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ctx.error(path, f"expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, path + (str(i),), ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        _, val_tp = get_args(tp)
        return {str(k): _convert(v, val_tp, path + (str(k),), ctx) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, ctx)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "2e-5" as a string; accept any number written as text.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ctx.error(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(path, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(path, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ctx.error(path, f"expected a string, got {value!r}")
        return str(value)
    raise ctx.error(path, f"unsupported type {tp}")


def _build(cls: type, data: Any, path: tuple[str, ...], ctx: Context) -> Any:
    """A dataclass from a mapping. Fields with metadata {"yaml": False} (mtl.core.config.NOT_A_KEY) or a leading _
    are filled in code, never written; a key in the class's REFUSED_KEYS (key → reason) was once accepted and
    now does nothing, so it is refused with its reason rather than ignored."""
    if not isinstance(data, dict):
        raise ctx.error(path, f"expected a mapping of {cls.__name__} settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True) and not f.name.startswith("_")}
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        refused = getattr(cls, "REFUSED_KEYS", {}).get(key)
        if refused is not None:
            raise ctx.error(path + (key,), refused)
        if key not in known:
            options = ", ".join(sorted(known))
            raise ctx.error(path + (key,), f"unknown key{did_you_mean(key, known)} (allowed: {options})")
        kwargs[key] = _convert(value, hints[key], path + (key,), ctx)
    for name, f in known.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ctx.error(path, f"missing required key '{name}'")
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as err:  # checks in a dataclass's __post_init__
        raise ctx.error(path, str(err)) from None


def build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    """Check `data` against a dataclass (unknown keys, types, choices) outside a YAML file."""
    return _build(cls, data, (), Context(where, {}))


def error_at(
    source: str | None, path: tuple[str, ...], message: str, overrides: list[str] | None = None
) -> ConfigError:
    """A ConfigError for a key of an experiment file found after validation, with the key's line when the
    file is still there (as `Context.error` gives during validation), or the `--set` argument that gave it."""
    file = Path(source) if source else None
    lines: dict[tuple[str, ...], int] = {}
    if file is not None and file.is_file():
        try:
            lines = load_yaml(file)[1]
        except ConfigError:
            pass
    return Context(str(source or ""), lines, overrides).error(path, message)
