"""CoNLL-style column files: one token per line, columns split by a separator, blank lines between
sentences, optional document-marker lines (-DOCSTART-). Rows keep every column so predictions
can be written back beside them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtl.core.errors import DataError
from tasks._input import read_text


@dataclass
class Block:
    """One sentence as it stands in the file."""

    rows: list[list[str]]  # the columns of each token line
    lines: list[int]  # 1-based line number of each token line
    preamble: list[str] = field(default_factory=list)  # document-marker lines just before it


def split_line(line: str, separator: str | None) -> list[str]:
    return line.split() if separator is None else line.split(separator)


def read_blocks(path: Path, separator: str | None, docstart: str | None, token_column: int) -> list[Block]:
    """Sentences of a column file; every token line must have as many columns as the first one."""
    blocks: list[Block] = []
    current = Block([], [])
    width: int | None = None
    for number, raw in _lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            current = _flush(blocks, current)
            continue
        cols = split_line(line, separator)
        if docstart is not None and docstart in line and _column(cols, token_column) == docstart:
            current = _flush(blocks, current)
            current.preamble.append(line)
            continue
        if width is None:
            width = len(cols)
        elif len(cols) != width:
            raise DataError(f"{path}:{number}: {len(cols)} columns where the file's first token line has {width}")
        current.rows.append(cols)
        current.lines.append(number)
    _flush(blocks, current)
    return blocks


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs; a byte-order mark is dropped and bad UTF-8 is named by line."""
    yield from enumerate(read_text(path).split("\n"), 1)


def _column(cols: Sequence[str], index: int) -> str | None:
    return cols[index] if -len(cols) <= index < len(cols) else None


def _flush(blocks: list[Block], current: Block) -> Block:
    if current.rows:
        blocks.append(current)
        return Block([], [])
    return current  # keeps a pending preamble for the next sentence


def column(block: Block, index: int, path: Path, what: str) -> list[str]:
    """One column of a sentence, or a DataError naming the line that lacks it."""
    try:
        return [cols[index] for cols in block.rows]
    except IndexError:
        for cols, number in zip(block.rows, block.lines, strict=True):
            if _column(cols, index) is None:
                raise DataError(f"{path}:{number}: no {what} column {index} in a line of {len(cols)} columns") from None
        raise


def write_blocks(path: Path, blocks: Sequence[tuple[list[str], list[list[str]], list[str]]], separator: str) -> None:
    """Write (preamble, rows, extra column) sentences, the extra column appended to every row."""
    with open(path, "w", encoding="utf-8") as fh:
        for preamble, rows, extra in blocks:
            for line in preamble:
                fh.write(f"{line}{separator}O\n\n")
            for cols, value in zip(rows, extra, strict=True):
                fh.write(separator.join([*cols, value]) + "\n")
            fh.write("\n")
