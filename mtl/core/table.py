"""The one fixed-width table printer (sampling rates, evaluation results, benchmark reports).

It sits in the bottom layer (mtl/core) with no project imports, so every layer above can print with it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1, rules_before: Collection[int] = ()
) -> str:
    """Columns two spaces apart under a dashed rule: the first `left` columns left-aligned, the rest
    right-aligned; another rule before each row index in `rules_before` (e.g. a closing mean row)."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    if any(len(row) != len(header) for row in cells):
        raise ValueError(f"every row needs {len(header)} cells")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [line(cells[0]), rule]
    for i, row in enumerate(cells[1:]):
        if i in rules_before:
            lines.append(rule)
        lines.append(line(row))
    return "\n".join(lines)
