"""One live run per output folder.

A training stage holds an exclusive `flock` on `<output_dir>/.mtl-lock` for as long as it runs, and
writes who holds it (host, pid, start time, command) into the file. A second run that finds the lock
held is refused with that description; the lock of a run that died goes with its process, so a stale
lock is taken over without any clean-up. Creating the lock is also the first write into the folder, so
a folder that cannot be written is found before the first step, not after the last.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mtl.core.errors import ConfigError

LOCK = ".mtl-lock"


class RunLock:
    """The lock on one output folder, held from `acquire` to `release` (or the end of the process)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._fh: Any = None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("a+", encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"train.output_dir {self.folder}: cannot be written ({err.strerror or err}); "
                              "choose a folder this user can write to") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = _describe(fh.read())
            fh.close()
            raise ConfigError(f"train.output_dir {self.folder} is in use by another run ({owner}); wait for it to "
                              "end, or give this run another train.output_dir") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(info))
            fh.flush()
        except OSError as err:
            fh.close()
            raise ConfigError(f"train.output_dir {self.folder}: cannot be written ({err.strerror or err})") from None
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "its owner did not say who it is"
