"""Task families. Each module in this package registers its family with `@register`;
the registry imports them all on first use, so a new family needs no edit here."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.base import TaskFamily

_FAMILIES: dict[str, type[TaskFamily]] = {}
_loaded = False


def register(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: make a family available under `family: <cls.name>` in experiment files."""
    if cls.name in _FAMILIES and _FAMILIES[cls.name] is not cls:
        raise ValueError(f"two task families are registered as {cls.name!r}")
    _FAMILIES[cls.name] = cls
    return cls


def _discover() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def get_family(name: str) -> type[TaskFamily]:
    _discover()
    if name not in _FAMILIES:
        from mtl.core.config import did_you_mean

        raise KeyError(f"unknown task family {name!r}{did_you_mean(name, _FAMILIES)} "
                       f"(known: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def family_names() -> list[str]:
    _discover()
    return sorted(_FAMILIES)
