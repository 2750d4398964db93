"""Per-dataset reader options (`options:` under a dataset), checked like the rest of the config."""

from __future__ import annotations

from typing import Any, TypeVar

from mtl.config import ConfigError, DatasetConfig, build_dataclass
from tasks.base import DataError

T = TypeVar("T")


def reader_options(cls: type[T], dataset: DatasetConfig, presets: dict[str, Any] | None = None) -> T:
    """Build `cls` from a format's presets overridden by the dataset's own options; unknown keys
    and values of the wrong kind are DataErrors that name the dataset."""
    where = f"dataset {dataset.name or dataset.language!r} options"
    try:
        return build_dataclass(cls, {**(presets or {}), **dataset.options}, where)
    except ConfigError as err:
        raise DataError(str(err)) from None
