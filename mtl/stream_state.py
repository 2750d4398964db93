"""Where each process stands in each streamed text, as a checkpoint keeps it.

A streamed group (tasks/_text_stream.py) is read by every rank from its own blocks, so its position is one
per rank: a checkpoint holds the list of them in rank order, and a resume gives each rank back its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtl.core.errors import ConfigError
from mtl.runtime import Runtime


def _key(group: tuple[str, str]) -> str:
    return "/".join(group)


def gather(cursors: dict[tuple[str, str], Any], runtime: Runtime) -> list[dict[str, Any]]:
    """Every rank's stream positions, in rank order, for the checkpoint (every rank must call it)."""
    return runtime.gather({_key(g): c.state_dict() for g, c in cursors.items()})


def restore(cursors: dict[tuple[str, str], Any], saved: list[dict[str, Any]] | None, runtime: Runtime,
            where: Path) -> None:
    """Put this rank's cursors where the checkpoint in `where` left them; a ConfigError where it cannot."""
    if not cursors:
        return
    if not saved or len(saved) != runtime.world:
        raise ConfigError(f"{where}: the checkpoint holds stream positions of "
                          f"{len(saved or [])} process(es), this run has {runtime.world}; a run that streams "
                          "text resumes with the same number of processes")
    mine = saved[runtime.rank]
    for group, cursor in cursors.items():
        key = _key(group)
        if key not in mine:
            raise ConfigError(f"{where}: no stream position for {key} (was it streamed then?)")
        cursor.load_state_dict(mine[key])
