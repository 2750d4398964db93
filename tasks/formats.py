"""Readers by file format, chosen per dataset (`format:`); families by the record shape they need.

A reader turns one split of a dataset into records of one shape; a family lists the shapes it
accepts. So one new reader serves every family of its shape, and a family reads every format of
its shape: UPOS from a plain CoNLL column file, or NER tags from a CoNLL-U MISC column, need no
new family (MaChAmp's split of dataset readers from task types).

Shapes, each with the module that owns its readers:
- WORDS: a sentence of words with per-word columns (tags, lemmas, heads …); see `WordRecord`; here.
- ROWS: table rows, field → value (a text or a pair, and a label); tasks/readers.py.
- QA: a context, a question and its answers; tasks/qa_format.py.
- TEXT: one line of plain text; tasks/text_format.py (which also streams large text for masked LM).

The source is the reader's business too: a reader reads a local file (`read`) and, where its format
has a hub layout, a Hugging Face Hub dataset (`hub`), and records held in memory (`memory`: a split
given as `InMemory`, a served model's input, checked as its file would be). `read_records` is the one
way a family gets a split: the family turns the records into its examples and never opens a file or
calls the hub.
Readers register with `register_reader` in these modules, never in a family's.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mtl.core.config import DatasetConfig
from mtl.core.errors import ConfigError, DataError
from mtl.core.typed_yaml import build_dataclass
from tasks._conll import column, read_blocks
from tasks._conllu_io import read_conllu, sentences_from_hub, sentences_from_records
from tasks.base import TaskFamily
from tasks.hub import load_hub

log = logging.getLogger(__name__)

WORDS = "words"
ROWS = "rows"
QA = "qa"
TEXT = "text"


class WordRecord(Protocol):
    """A sentence as the WORDS shape: its words and named per-word columns."""

    source: str

    @property
    def words(self) -> list[str]: ...

    def has(self, name: str) -> bool: ...

    def column(self, name: str) -> list[str]: ...

    def locations(self) -> list[str]: ...


# Reads one split: (dataset, role, the reader's options, skip_invalid) → records of the reader's shape.
ReadFn = Callable[[DatasetConfig, str, Any, bool], list[Any]]


@dataclass(frozen=True)
class Reader:
    """One input format: the record shape it yields, its per-dataset options and their presets."""

    name: str
    shape: str
    read: ReadFn
    Options: type | None = None  # dataclass for the dataset's `options:` (checked when the experiment loads)
    presets: Mapping[str, Any] = field(default_factory=dict)  # option values this format implies
    hub: ReadFn | None = None  # reads the same records from a hub dataset (`hub:`); None: local files only
    memory: ReadFn | None = None  # reads them from a split held in memory (`InMemory`); None: files, hub only


@dataclass
class Records:
    """One split as its reader gave it, with the reader, its typed options, and where the records came from
    (the file, `hub:split`, or the name of records in memory) for the family's messages."""

    items: list[Any]
    reader: Reader
    options: Any
    source: str


class InMemory(str):
    """A split held in memory instead of a file or a hub split (the input of a served model), set as the
    dataset's split: the string is the name messages give the source, `items` its records, of the kind the
    format's `memory` reader takes (rows as mappings, texts, questions, sentences). A str, so that every
    message and key that shows a dataset's split still reads it as one."""

    items: list[Any]

    def __new__(cls, items: Iterable[Any], name: str = "records") -> InMemory:
        split = super().__new__(cls, name)
        split.items = list(items)
        return split

    def __getnewargs__(self) -> tuple[Any, ...]:  # copies and pickles keep the records
        return (self.items, str(self))


def in_memory(dataset: DatasetConfig, role: str) -> InMemory:
    """The split a `memory` reader reads (read_records calls one only for a split held in memory)."""
    split = dataset.split(role)
    if not isinstance(split, InMemory):
        raise DataError(f"dataset {dataset.name!r}: the {role} split {split!r} is not held in memory")
    return split


_READERS: dict[str, Reader] = {}


def register_reader(reader: Reader) -> Reader:
    if reader.name in _READERS and _READERS[reader.name] != reader:
        raise ValueError(f"two readers are registered as format {reader.name!r}")
    _READERS[reader.name] = reader
    return reader


def get_reader(name: str) -> Reader:
    if name not in _READERS:
        raise KeyError(f"unknown format {name!r} (known: {', '.join(sorted(_READERS))})")
    return _READERS[name]


def formats_of(shapes: Sequence[str]) -> list[str]:
    """Names of the formats whose records have one of `shapes`."""
    return sorted(name for name, r in _READERS.items() if r.shape in shapes)


def reader_options(reader: Reader, dataset: DatasetConfig) -> Any:
    """The dataset's typed reader options (None for a reader that takes none): typed when the experiment was
    assembled (mtl/experiment.py), or by `resolve_dataset` for a dataset built in code."""
    return dataset.options if reader.Options is not None else None


def resolve_dataset(family: type[TaskFamily] | TaskFamily, dataset: DatasetConfig) -> DatasetConfig:
    """A dataset built in code (a file to predict on, a test's dataset) as an assembled experiment holds it:
    a copy whose `options` mapping is its reader's typed options, from the format's presets and the mapping
    (unknown keys are DataErrors that name the dataset). An experiment file's datasets are resolved with
    their lines when it is assembled; the given dataset is left as it is."""
    reader = reader_for(family, dataset)
    if reader.Options is None:
        return dataset
    where = f"dataset {dataset.name or dataset.language!r} options"
    try:
        options = build_dataclass(reader.Options, {**reader.presets, **dataset.options}, where)
    except ConfigError as err:
        raise DataError(str(err)) from None
    return dataclasses.replace(dataset, options=options)


def reader_for(family: type[TaskFamily] | TaskFamily, dataset: DatasetConfig) -> Reader:
    """The reader a dataset names, if its records have a shape the family accepts (else a DataError)."""
    name = family.format_name(dataset)
    known = ", ".join(formats_of(family.accepts))
    if name is None or name not in _READERS:
        raise DataError(f"dataset {dataset.name!r}: unknown {family.name} format {name!r} (known: {known})")
    reader = _READERS[name]
    if reader.shape not in family.accepts:
        raise DataError(f"dataset {dataset.name!r}: format {name!r} gives {reader.shape} records, and the "
                        f"{family.name} family reads {' or '.join(family.accepts)} (formats: {known})")
    return reader


def read_records(family: TaskFamily, dataset: DatasetConfig, role: str, skip_invalid: bool = False) -> Records:
    """One split ("train", "dev", "test") of a dataset, the one way every family reads: the reader the dataset
    names (checked against the family's shapes), its typed options, and the source: records in memory when the
    split is `InMemory`, else the dataset's hub when it names one, else its local file. `skip_invalid` lets a
    reader skip (and count) records it cannot use."""
    reader = reader_for(type(family), dataset)
    opts = reader_options(reader, dataset)
    split = dataset.split(role)
    if isinstance(split, InMemory):
        if reader.memory is None:
            able = ", ".join(name for name in formats_of(family.accepts) if _READERS[name].memory is not None)
            raise DataError(f"dataset {dataset.name!r}: format {reader.name!r} reads files, not records in memory "
                            f"(formats that take records: {able})")
        return Records(reader.memory(dataset, role, opts, skip_invalid), reader, opts, str(split))
    if not dataset.hub:
        return Records(reader.read(dataset, role, opts, skip_invalid), reader, opts, str(dataset.split(role)))
    if reader.hub is None:
        hub = ", ".join(name for name in formats_of(family.accepts) if _READERS[name].hub is not None)
        raise DataError(f"dataset {dataset.name!r}: format {reader.name!r} reads local files, not a hub dataset "
                        f"(formats that read the hub: {hub})")
    items = reader.hub(dataset, role, opts, skip_invalid)
    return Records(items, reader, opts, f"{dataset.hub}:{dataset.split(role)}")


def split_name(dataset: DatasetConfig, role: str) -> str:
    """The file or hub split a role reads (a DataError when the dataset has none)."""
    split = dataset.split(role)
    if split is None:
        raise DataError(f"dataset {dataset.name!r} has no {role} split")
    return split


def split_path(dataset: DatasetConfig, role: str) -> Path:
    return Path(split_name(dataset, role))


# --------------------------------------------------------------------------- column files (CoNLL style)


@dataclass
class ColumnOptions:
    """The `options:` of a dataset in a CoNLL-style column file (or a token-tagged hub dataset)."""

    token_column: int = 0
    tag_column: int = -1  # read as the column named `tag`; `fields:` names more ({upos: 1})
    separator: str | None = None  # None: any run of whitespace
    strip_prefix: bool | None = None  # 'en:word' → 'word'; None: strip when every token has the same prefix
    strip_segment_digits: bool = False  # Weibo '科0' → '科' (the digits give the character's place in its word)
    input_scheme: Literal["auto", "IOB1", "IOB2", "BIOES"] = "auto"  # how the tags are written
    docstart: str | None = "-DOCSTART-"  # token of document-marker lines, which are not sentences
    tokens_field: str = "tokens"  # hub datasets: the column of words
    tags_field: str = "ner_tags"  # hub datasets: the column of tags (ints with feature names, or strings)


@dataclass
class ColumnSentence:
    """One sentence of a column file: its words, named columns, and every input column for writing back."""

    words: list[str]
    columns: dict[str, list[str]]
    source: str  # the file
    lines: list[int]  # 1-based line of each word
    rows: list[list[str]]
    preamble: list[str] = field(default_factory=list)  # document-marker lines just before it
    separator: str = " "

    def has(self, name: str) -> bool:
        return name in self.columns

    def column(self, name: str) -> list[str]:
        if name not in self.columns:
            raise DataError(f"{self.source}:{self.lines[0]}: no column {name!r} (columns: {', '.join(self.columns)})")
        return self.columns[name]

    def locations(self) -> list[str]:
        return [f"{self.source}:{n}" for n in self.lines]


LANG_PREFIX = re.compile(r"^([a-z]{2,3}(?:[-_][A-Za-z0-9]+)?):(?=.)")
SEGMENT_DIGITS = re.compile(r"^(.+?)(\d+)$")


def read_columns(dataset: DatasetConfig, role: str, opts: ColumnOptions, skip_invalid: bool = False) -> list[Any]:
    """Sentences of a column file: words from `token_column`, the column `tag` from `tag_column`, and
    any column `fields:` names by index."""
    path = split_path(dataset, role)
    named = {"tag": opts.tag_column}
    for name, index in dataset.fields.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise DataError(f"{path}: field {name}: a column file is read by column index (0-based), got {index!r}")
        named[name] = index
    try:
        blocks = read_blocks(path, opts.separator, opts.docstart, opts.token_column)
    except DataError as err:
        raise DataError(f"{err}; {_read_as(path, dataset)}") from None
    out = []
    for block in blocks:
        columns = {name: column(block, index, path, name) for name, index in named.items()}
        out.append(ColumnSentence(column(block, opts.token_column, path, "token"), columns, str(path), block.lines,
                                  block.rows, block.preamble, opts.separator if opts.separator is not None else " "))
    _strip_prefixes(out, opts, path, dataset.language)
    if opts.strip_segment_digits:
        for sent in out:
            sent.words = [_strip_digits(tok, w) for tok, w in zip(sent.words, sent.locations(), strict=True)]
    return out


def _read_as(path: Path, dataset: DatasetConfig) -> str:
    """How a column file was read, for an error in it: a table given to a word-level family is a common slip."""
    how = f"it was read as a CoNLL-style column file (format {dataset.format or 'conll'}: one token per line, blank " \
          "lines between sentences)"
    if path.suffix.lower() in (".tsv", ".csv", ".jsonl", ".json"):
        how += f"; a {path.suffix} table of one example per row is for families that read rows, e.g. classification"
    return how


def _strip_prefixes(sents: list[ColumnSentence], opts: ColumnOptions, path: Path, language: str) -> None:
    """Remove WikiANN-style 'xx:' language prefixes when asked, or when every token has the same one."""
    if opts.strip_prefix is False:
        return
    found = {m.group(1) if m else None for s in sents for tok in s.words for m in [LANG_PREFIX.match(tok)]}
    if opts.strip_prefix is None:
        if len(found) != 1 or None in found:
            return
        log.info("%s: every token starts with %r: stripping it (set strip_prefix: false to keep it)",
                 path, f"{next(iter(found))}:")
    prefixes = found - {None}
    if prefixes and language and not any(p.split("-")[0].split("_")[0] == language.split("-")[0] for p in prefixes):
        log.warning("%s: token prefixes %s do not match the dataset language %r", path, sorted(prefixes), language)
    for s in sents:
        s.words = [_strip_prefix(tok, w) for tok, w in zip(s.words, s.locations(), strict=True)]


def _strip_prefix(token: str, where: str) -> str:
    head, sep, rest = token.partition(":")
    if not sep or not head or not rest:
        raise DataError(f"{where}: token {token!r} has no 'xx:' language prefix (strip_prefix is on)")
    return rest


def _strip_digits(token: str, where: str) -> str:
    m = SEGMENT_DIGITS.match(token)
    if not m:
        raise DataError(f"{where}: token {token!r} does not end in segment digits (strip_segment_digits is on)")
    return m.group(1)


COLUMN_FORMATS: dict[str, dict[str, Any]] = {
    "conll": {},
    "conll2003": {},
    "wikiann": {"separator": "\t", "strip_prefix": True},
    "weibo": {"separator": "\t", "strip_segment_digits": True},
    "msra": {"separator": "\t"},
}


@dataclass
class HubWords:
    """One sentence of a token-tagged hub dataset (WikiANN, CoNLL-2003), or one laid out alike in memory, as the
    WORDS shape: its tags are the column `tag`; `fields:` naming more columns ({upos: pos_tags}) read them too."""

    words: list[str]
    columns: dict[str, list[str]]
    source: str  # hub:split[index], or `records row i` in memory

    def has(self, name: str) -> bool:
        return name in self.columns

    def column(self, name: str) -> list[str]:
        if name not in self.columns:
            raise DataError(f"{self.source}: no column {name!r} (columns: {', '.join(self.columns)})")
        return self.columns[name]

    def locations(self) -> list[str]:
        return [f"{self.source} token {j}" for j in range(len(self.words))]


def read_hub_columns(dataset: DatasetConfig, role: str, opts: ColumnOptions, skip_invalid: bool = False
                     ) -> list[HubWords]:
    """Sentences of a hub dataset with a column of words and columns of per-word tags (ints named by the
    feature's ClassLabel, or strings)."""
    split = split_name(dataset, role)
    ds = load_hub(dataset, split)
    named = _tag_columns(dataset, opts, f"{dataset.hub}:{split}", "a hub dataset is")
    for name in (opts.tokens_field, *named.values()):
        if name not in ds.column_names:
            raise DataError(f"{dataset.hub}:{split}: no column {name!r} (columns: {', '.join(ds.column_names)})")
    names = {col: getattr(getattr(ds.features[col], "feature", None), "names", None) for col in named.values()}
    return [_row_words(row, opts.tokens_field, named, names, f"{dataset.hub}:{split}[{i}]") for i, row in enumerate(ds)]


def read_memory_columns(dataset: DatasetConfig, role: str, opts: ColumnOptions, skip_invalid: bool = False
                        ) -> list[HubWords]:
    """Sentences held in memory, each a mapping laid out like a row of a token-tagged hub dataset: its words
    under `tokens_field`, its tags under `tags_field`, and the columns `fields:` names; errors name the row."""
    split = in_memory(dataset, role)
    named = _tag_columns(dataset, opts, split, "records in memory are")
    out = []
    for i, row in enumerate(split.items):
        where = f"{split} row {i}"
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected a mapping of column to values, found {type(row).__name__}")
        for name in (opts.tokens_field, *named.values()):
            if name not in row:
                raise DataError(f"{where}: no column {name!r} (columns: {', '.join(map(str, row))})")
            if isinstance(row[name], str) or not isinstance(row[name], Sequence):
                raise DataError(f"{where}: column {name!r} must be a list of one value per word")
        for j, token in enumerate(row[opts.tokens_field]):
            if not isinstance(token, str) or not token.strip():
                raise DataError(f"{where} token {j}: a word must be a non-blank string, got {token!r}")
        out.append(_row_words(row, opts.tokens_field, named, {}, where))
    return out


def _tag_columns(dataset: DatasetConfig, opts: ColumnOptions, source: str, read_as: str) -> dict[str, str]:
    """The per-word columns a row holds, by name: `tag` from `tags_field`, and those `fields:` names."""
    named = {"tag": opts.tags_field}
    for name, col in dataset.fields.items():
        if not isinstance(col, str):
            raise DataError(f"{source}: field {name}: {read_as} read by column name, got {col!r}")
        named[name] = col
    return named


def _row_words(row: Mapping[str, Any], tokens_field: str, named: Mapping[str, str],
               names: Mapping[str, Sequence[str] | None], where: str) -> HubWords:
    """One row as a sentence: tags that are ints read as the names of their ClassLabel (`names`), else as text."""
    tokens = list(row[tokens_field])
    columns = {}
    for name, col in named.items():
        tags = row[col]
        if len(tokens) != len(tags):
            raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
        labels = names.get(col)
        columns[name] = [labels[t] if labels is not None else str(t) for t in tags]
    if not tokens:
        raise DataError(f"{where}: empty sentence")
    return HubWords(tokens, columns, where)


for _name, _presets in COLUMN_FORMATS.items():
    register_reader(Reader(_name, WORDS, read_columns, ColumnOptions, _presets, read_hub_columns,
                           read_memory_columns))


# --------------------------------------------------------------------------- CoNLL-U


def _read_conllu(dataset: DatasetConfig, role: str, opts: Any, skip_invalid: bool = False) -> list[Any]:
    """CoNLL-U sentences; besides the ten columns, a MISC key (NE=B-PER, Entity=…) reads as a column."""
    return read_conllu(split_path(dataset, role), dataset.name or dataset.language, skip_invalid)


def _read_conllu_hub(dataset: DatasetConfig, role: str, opts: Any, skip_invalid: bool = False) -> list[Any]:
    """Sentences of a hub treebank in the layout of `universal_dependencies` (same checks as files)."""
    split = split_name(dataset, role)
    rows = load_hub(dataset, split)
    names = getattr(getattr(rows.features.get("upos"), "feature", None), "names", None)
    source = f"{dataset.hub}/{dataset.hub_config}[{split}]"
    return sentences_from_hub(rows, source, names, dataset.name or dataset.language, skip_invalid)


def _read_conllu_memory(dataset: DatasetConfig, role: str, opts: Any, skip_invalid: bool = False) -> list[Any]:
    """Sentences held in memory, each a mapping of CoNLL-U column → its values (same checks as files)."""
    split = in_memory(dataset, role)
    return sentences_from_records(split.items, str(split), dataset.name or dataset.language, skip_invalid)


register_reader(Reader("conllu", WORDS, _read_conllu, hub=_read_conllu_hub, memory=_read_conllu_memory))
