"""Reading input files safely: UTF-8 with an optional byte-order mark, JSON without silent losses.

Every failure is a DataError naming the file and the line, never a raw UnicodeDecodeError,
RecursionError or a JSON object whose repeated key quietly replaced the first one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtl.core.errors import DataError


def read_text(path: str | Path) -> str:
    """The whole file as text; a UTF-8 byte-order mark is dropped, invalid bytes are named by line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return decode(data, str(path))


def decode(data: bytes, where: str, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + first_line
        raise DataError(f"{where}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_json(text: str, where: str, first_line: int = 1) -> Any:
    """Parse JSON; a key given twice in one object is a DataError naming both lines (JSON keeps the last)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}:{err.lineno + first_line - 1}: not valid JSON: {err.msg}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None
    except _DuplicateKey as dup:
        lines = duplicate_lines(text, dup.key)
        at = f"lines {lines[0] + first_line - 1} and {lines[1] + first_line - 1}" if lines else "one object"
        line = lines[1] + first_line - 1 if lines else first_line
        raise DataError(f"{where}:{line}: key {dup.key!r} given twice in one object ({at}); "
                        "JSON readers keep only the last one, so the first would be lost") from None


def duplicate_lines(text: str, key: str) -> tuple[int, int] | None:
    """Lines of the first and second occurrence of `key` in one JSON object (text known to be valid)."""
    stack: list[dict[str, int] | None] = []  # per open container: keys seen (objects) or None (arrays)
    line = 1
    i, n = 0, len(text)
    expect_key = False
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "{":
            stack.append({})
            expect_key = True
        elif c == "[":
            stack.append(None)
        elif c in "}]":
            stack.pop()
        elif c == ",":
            expect_key = bool(stack) and stack[-1] is not None
        elif c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if expect_key and stack and stack[-1] is not None:
                name = json.loads(text[i : j + 1])
                seen = stack[-1]
                if name == key and name in seen:
                    return seen[name], line
                seen.setdefault(name, line)
            line += text.count("\n", i, j)
            expect_key = False
            i = j
        i += 1
    return None
