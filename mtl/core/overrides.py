"""`--set KEY=VALUE` overrides: a dotted key path and a YAML value, applied to raw experiment data.

Applied before the data is checked against the schema, so an overridden value is checked like a written
one, and an error in it names the `--set` argument (mtl.core.typed_yaml.Context) rather than a line of the file.
"""

from __future__ import annotations

from typing import Any

import yaml

from mtl.core.errors import ConfigError


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply a command-line override such as ``train.encoder_lr=3e-5`` to raw YAML data."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.encoder_lr=3e-5")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        why = getattr(err, "problem", None) or err
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({why})") from None
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {key}: no list item {part!r}") from None
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: no list item {last!r}") from None
    else:
        node[last] = value
