"""Readers for tabular and JSON-lines files and for Hugging Face Hub datasets.

Families map their own field names (text, label, …) to columns with a `fields:` block:
a column name (the file needs a header) or a 0-based column index (GLUE's CoLA has no
header: `{text: 3, label: 1}`). Each row comes back as a dict of field → value plus
`_line` (1-based line in the file, row number on the hub, row index in memory) and `_where`
("file:line"), so every later error can point at its source.

Rows held in memory (a served model's input, `tasks.formats.InMemory`) are mappings of column to
value, read by key and checked as JSON lines are; their errors name the row index.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl.core.config import DatasetConfig
from mtl.core.errors import DataError
from tasks._input import load_json, read_text
from tasks.formats import ROWS, InMemory, Reader, in_memory, register_reader
from tasks.hub import hub_source, load_hub

FORMATS = ("tsv", "csv", "jsonl")
_SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}

Row = dict[str, Any]


def infer_format(path: str | Path, fmt: str | None = None) -> str:
    """The reader format: the declared one, else the file suffix."""
    if fmt is not None:
        fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(fmt.lower(), fmt.lower())
        if fmt not in FORMATS:
            raise DataError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(f"{path}: cannot tell the format from the suffix {suffix!r}; set `format:` to one of {FORMATS}")
    return _SUFFIXES[suffix]


def table_format(dataset: DatasetConfig) -> str:
    """The format of a dataset of rows: the declared one, else the hub's tables, else the suffix of its first
    split (what every family that reads rows uses)."""
    if dataset.hub and dataset.format is None:
        return "hub"
    path = next((p for p in (dataset.train, dataset.dev, dataset.test) if p), "")
    return infer_format(path, dataset.format)


def cell_text(value: Any, name: str, where: str) -> str:
    """A row's text field, checked: present, a string, not blank (a DataError naming the place otherwise)."""
    if value is None:
        raise DataError(f"{where}: missing {name}")
    if not isinstance(value, str):
        raise DataError(f"{where}: {name} must be text, found {type(value).__name__} {value!r}")
    if not value.strip():
        raise DataError(f"{where}: empty {name}")
    return value


def one_line(value: str) -> str:
    """A value written as one TSV cell: no tabs, no line breaks."""
    return " ".join(value.replace("\t", " ").splitlines())


def read_table(
    path: str | Path,
    fields: Mapping[str, str | int],
    fmt: str | None = None,
    *,
    header: bool | None = None,
    optional: Collection[str] = (),
) -> list[Row]:
    """Read a TSV, CSV or JSON-lines file into rows of the requested fields.

    `header`: None means "a header exactly when some field names a column"; true or false
    overrides that for index-only fields. A field in `optional` that the file lacks reads
    as None (e.g. the label column of an unlabelled test file).
    """
    path = Path(path)
    fmt = infer_format(path, fmt)
    text = _read_text(path)
    if fmt == "jsonl":
        rows = _read_jsonl(path, text, fields, optional)
    else:
        delimiter = "\t" if fmt == "tsv" else ","
        # GLUE's TSVs hold bare quote characters that are text, not CSV quoting.
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        rows = _read_delimited(path, text, fields, delimiter, quoting, header, optional)
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def _read_text(path: Path) -> str:
    return read_text(path)


def _records(text: str, delimiter: str, quoting: int):
    """(first line number, cells) for each non-blank record; quoted CSV cells may span lines."""
    csv.field_size_limit(sys.maxsize)  # a cell may hold a whole document (the default limit is 128 KiB)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    previous_end = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise _CsvError(reader.line_num, str(err)) from None
        start, previous_end = previous_end + 1, reader.line_num
        if cells and any(c.strip() for c in cells):
            yield start, cells


class _CsvError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def _read_delimited(
    path: Path,
    text: str,
    fields: Mapping[str, str | int],
    delimiter: str,
    quoting: int,
    header: bool | None,
    optional: Collection[str],
) -> list[Row]:
    named = [k for k, v in fields.items() if isinstance(v, str)]
    _check_indices(path, fields)
    if header is None:
        header = bool(named)
    elif not header and named:
        raise DataError(f"{path}: fields {named} name columns, which needs a header row (header: false was set)")
    try:
        records = iter(_records(text, delimiter, quoting))
        columns: list[str] | None = None
        if header:
            first = next(records, None)
            if first is None:
                raise DataError(f"{path}: empty file (a header row was expected)")
            header_line, columns = first[0], [c.strip() for c in first[1]]
        rows: list[Row] = []
        width = len(columns) if columns is not None else None
        positions: dict[str, int | None] | None = None
        for line, cells in records:
            if width is None:
                width = len(cells)
            if len(cells) != width:
                raise DataError(f"{path}:{line}: expected {width} columns, found {len(cells)}")
            if positions is None:
                where = f"{path}:{header_line}" if columns is not None else f"{path}:{line}"
                positions = _positions(where, fields, columns, width, optional)
            row: Row = {k: (cells[i] if i is not None else None) for k, i in positions.items()}
            row["_line"], row["_where"] = line, f"{path}:{line}"
            rows.append(row)
    except _CsvError as err:
        raise DataError(f"{path}:{err.line}: {err}") from None
    return rows


def _check_indices(path: str | Path, fields: Mapping[str, Any]) -> None:
    for key, col in fields.items():
        if isinstance(col, bool) or not isinstance(col, (str, int)) or (isinstance(col, int) and col < 0):
            raise DataError(f"{path}: field {key}: {col!r} is neither a column name nor a column index ≥ 0")


def _positions(
    where: str, fields: Mapping[str, str | int], columns: list[str] | None, width: int, optional: Collection[str]
) -> dict[str, int | None]:
    """Column position of each field (None: an optional field the file lacks)."""
    out: dict[str, int | None] = {}
    for key, col in fields.items():
        if isinstance(col, str):
            assert columns is not None
            if col in columns:
                out[key] = columns.index(col)
            elif key in optional:
                out[key] = None
            else:
                raise DataError(f"{where}: no column {col!r} for field {key} (columns: {', '.join(columns)})")
        elif col < width:
            out[key] = col
        elif key in optional:
            out[key] = None
        else:
            raise DataError(f"{where}: field {key} is column {col}, but rows have only {width} columns (0-based)")
    return out


def _check_keys(source: str | Path, fields: Mapping[str, Any], what: str) -> None:
    """Fields of records read by key (JSON lines, rows in memory) must name keys, not column indices."""
    _check_indices(source, fields)
    for key, col in fields.items():
        if not isinstance(col, str):
            raise DataError(f"{source}: field {key}: {what} are read by key, not by column index ({col})")


def _read_jsonl(path: Path, text: str, fields: Mapping[str, str | int], optional: Collection[str]) -> list[Row]:
    _check_keys(path, fields, "JSON lines")
    rows: list[Row] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = load_json(line, str(path), line_no)
        except DataError as err:
            hint = " (a .json file must hold one JSON object per line)" if line_no == 1 and "JSON:" in str(err) else ""
            raise DataError(f"{err}{hint}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, found {type(record).__name__}")
        rows.append(_pick(record, fields, optional, f"{path}:{line_no}", line_no))
    return rows


def _pick(
    record: Mapping[str, Any], fields: Mapping[str, Any], optional: Collection[str], where: str, line: int
) -> Row:
    row: Row = {}
    for key, col in fields.items():
        if col in record:
            row[key] = record[col]
        elif key in optional:
            row[key] = None
        else:
            raise DataError(f"{where}: no key {col!r} for field {key} (keys: {', '.join(map(str, record))})")
    row["_line"], row["_where"] = line, where
    return row


def read_memory_rows(split: InMemory, fields: Mapping[str, Any], optional: Collection[str] = ()) -> list[Row]:
    """Rows of records held in memory, mappings of column → value, checked as JSON lines are (by key, each a
    mapping, every field present unless optional, at least one row); errors name the row index."""
    _check_keys(split, fields, "records in memory")
    rows: list[Row] = []
    for i, record in enumerate(split.items):
        where = f"{split} row {i}"
        if not isinstance(record, Mapping):
            raise DataError(f"{where}: expected a mapping of column to value, found {type(record).__name__}")
        rows.append(_pick(record, fields, optional, where, i))
    if not rows:
        raise DataError(f"{split}: no data rows")
    return rows


# --------------------------------------------------------------------------- hub


def read_hub(dataset: DatasetConfig, split_name: str) -> list[Row]:
    """All columns of one hub split as rows; class-label ids become their names (-1 → None)."""
    source = hub_source(dataset)
    ds = load_hub(dataset, split_name)
    names = {col: _label_names(feature) for col, feature in ds.features.items()}
    names = {col: n for col, n in names.items() if n is not None}
    rows: list[Row] = []
    for i, record in enumerate(ds.to_list(), start=1):
        for col, labels in names.items():
            record[col] = _to_names(record[col], labels)
        record["_line"], record["_where"] = i, f"{source} [{split_name}] row {i}"
        rows.append(record)
    if not rows:
        raise DataError(f"{source} [{split_name}]: no rows")
    return rows


def _label_names(feature: Any) -> list[str] | None:
    """Names of a ClassLabel feature, or of the ClassLabel inside a sequence feature."""
    if hasattr(feature, "int2str") and getattr(feature, "names", None):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    return _label_names(inner) if inner is not None else None


def _to_names(value: Any, names: list[str]) -> Any:
    if isinstance(value, list):
        return [_to_names(v, names) for v in value]
    return None if value is None or value < 0 else names[value]


def select_fields(rows: Sequence[Row], fields: Mapping[str, Any], optional: Collection[str] = ()) -> list[Row]:
    """Map hub rows (all columns) to the requested fields, like read_table does for files."""
    if rows and any(not isinstance(c, str) for c in fields.values()):
        raise DataError(f"{rows[0]['_where']}: hub datasets are read by column name, not index ({dict(fields)})")
    return [_pick(row, fields, optional, row["_where"], row["_line"]) for row in rows]


@dataclass
class TableOptions:
    """A dataset's `options:` for the table readers."""

    header: bool | None = None  # default: a header exactly when `fields` names columns
    # Raw label → label name, so local copies and hub versions of a dataset share one label set
    # (GLUE TSVs write SST-2 as 0/1 where the hub has negative/positive).
    label_map: dict[str, str] | None = None


def _split(dataset: DatasetConfig, role: str) -> str:
    split = dataset.split(role)
    if split is None:
        raise DataError(f"dataset {dataset.name or dataset.language}: no {role} split is configured")
    return split


def _read_rows(dataset: DatasetConfig, role: str, opts: TableOptions, skip_invalid: bool = False) -> list[Row]:
    """Rows of the fields the dataset's `fields:` names, from its local file; a test split may lack the label."""
    optional = ("label",) if role == "test" else ()
    return read_table(_split(dataset, role), dataset.fields, dataset.format, header=opts.header, optional=optional)


def _read_hub_rows(dataset: DatasetConfig, role: str, opts: TableOptions, skip_invalid: bool = False) -> list[Row]:
    """The same rows from the dataset's hub tables (every table format reads the hub alike)."""
    optional = ("label",) if role == "test" else ()
    return select_fields(read_hub(dataset, _split(dataset, role)), dataset.fields, optional)


def _read_memory_rows(dataset: DatasetConfig, role: str, opts: TableOptions, skip_invalid: bool = False
                      ) -> list[Row]:
    """The same rows from records held in memory (every table format takes them alike)."""
    optional = ("label",) if role == "test" else ()
    return read_memory_rows(in_memory(dataset, role), dataset.fields, optional)


for _name in (*FORMATS, "hub"):  # "hub": a table on the Hugging Face Hub (hub:, hub_config:)
    register_reader(Reader(_name, ROWS, _read_rows, TableOptions, hub=_read_hub_rows, memory=_read_memory_rows))
