"""The TEXT shape: plain text, one text per line, and the text in records of every other shape.

Masked LM trains on text from any source a dataset can name: plain text files (format `text`; one
sentence or document per line), table rows (JSONL, TSV, CSV or the hub, with `fields: {text: COLUMN}`
and optionally `text_pair: COLUMN`, each read as its own text), the words of CoNLL-U or CoNLL column
files (their surface tokens), or the contexts (and, with `fields: {text_pair: question}`, the
questions) of SQuAD-format JSON. `texts_of` turns records of any of these shapes into `Text`s.

Texts held in memory (a list of strings, `tasks.formats.InMemory`) read as the lines of a text file.
A training file too large to hold (or any with `streaming: true`) is read as a stream instead:
plain text or JSON lines in blocks, a hub dataset in `datasets`' streaming mode (tasks/_text_stream.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtl.core.config import DatasetConfig
from mtl.core.errors import ConfigError, DataError
from tasks._conllu_io import Sentence
from tasks._input import load_json, read_text
from tasks._text_stream import STREAM_FROM_BYTES, HubStream, TextStream, Windows
from tasks.base import note_read
from tasks.formats import QA, ROWS, TEXT, WORDS, InMemory, Reader, Records, in_memory, register_reader, split_path
from tasks.hub import load_hub
from tasks.qa_format import QAExample
from tasks.readers import infer_format

log = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "text_pair")  # the `fields:` keys naming texts (each its own text)
QA_PARTS = ("context", "question")  # what a SQuAD-format record offers as text
TEXT_SUFFIXES = (".txt", ".text", ".raw")


@dataclass
class Text:
    """One text (an mlm example): as written, or the dataset's own words (which then give the word boundaries)."""

    text: str
    where: str  # file:line (or question id / hub row), for messages
    words: list[str] | None = None


# --------------------------------------------------------------------------- plain-text files


@dataclass
class TextLine:
    """One non-blank line of a text file: the TEXT record."""

    text: str
    where: str


def read_lines(dataset: DatasetConfig, role: str, opts: Any = None, skip_invalid: bool = False) -> list[TextLine]:
    """One record per non-blank line of a UTF-8 text file (blank lines separate nothing and are passed over)."""
    path = split_path(dataset, role)
    lines = [TextLine(line.strip(), f"{path}:{n}")
             for n, line in enumerate(read_text(path).split("\n"), start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no text (the file is empty or has only blank lines)")
    return lines


def read_memory_lines(dataset: DatasetConfig, role: str, opts: Any = None, skip_invalid: bool = False
                      ) -> list[TextLine]:
    """One record per non-blank text held in memory, as the lines of a file are read; errors name the row."""
    split = in_memory(dataset, role)
    lines = []
    for i, text in enumerate(split.items):
        if not isinstance(text, str):
            raise DataError(f"{split} row {i}: expected a text, found {type(text).__name__} {str(text)[:40]!r}")
        if text.strip():
            lines.append(TextLine(text.strip(), f"{split} row {i}"))
    if not lines:
        raise DataError(f"{split}: no text (no records, or only blank ones)")
    return lines


register_reader(Reader("text", TEXT, read_lines, memory=read_memory_lines))


# --------------------------------------------------------------------------- words of a text
# (the units whole-word and span masking select, and where windows of a long text may be cut)

# Scripts written without spaces: every character is a word (as BERT's tokenizer splits CJK ideographs).
_CJK = ("\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
        "\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0002fa1f")
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of a text: whitespace-separated strings, each CJK character its own word."""
    return [m.span() for m in _WORD.finditer(text)]


def token_units(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """A word-unit id per token from its character offsets: the tokens of one word share an id; a token that
    covers characters of several words joins them into one unit (so no token is ever half a word). A token
    with no characters of its own joins the unit of the next token."""
    char_word = np.full(len(text) + 1, -1, dtype=np.int64)
    for w, (s, e) in enumerate(word_spans(text)):
        char_word[s:e] = w
    units: list[int] = []
    pending = 0  # tokens waiting for the next word
    unit, top = -1, -1
    for s, e in offsets:
        covered = char_word[s:e]
        covered = covered[covered >= 0]
        if not len(covered):
            pending += 1
            continue
        lo, hi = int(covered[0]), int(covered[-1])
        if lo > top:
            unit += 1
        top = max(top, hi)
        units.extend([unit] * (pending + 1))
        pending = 0
    units.extend([max(unit, 0)] * pending)
    return units


def window_bounds(units: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut a token sequence into windows of at most `budget` tokens, at word-unit boundaries (a unit longer
    than a window is cut inside)."""
    n, out, start = len(units), [], 0
    while start < n:
        end = min(start + budget, n)
        if end < n and units[end] >= 0 and units[end] == units[end - 1]:
            cut = end - 1
            while cut > start and units[cut] == units[cut - 1]:
                cut -= 1
            if cut > start:
                end = cut
        out.append((start, end))
        start = end
    return out or [(0, 0)]


# --------------------------------------------------------------------------- the text of any record


def guess_format(dataset: DatasetConfig) -> str | None:
    """The declared format, else the hub's tables, else the suffix: .txt text, .conllu CoNLL-U, tables."""
    if dataset.format is not None:
        return dataset.format
    if dataset.hub:
        return "hub"
    path = next((p for p in (dataset.train, dataset.dev, dataset.test) if p), "")
    suffix = Path(path).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix == ".conllu":
        return "conllu"
    try:
        return infer_format(path)
    except DataError:
        return None


def named_texts(dataset: DatasetConfig, default: dict[str, str]) -> dict[str, Any]:
    """The `fields:` that name texts (text, text_pair), else `default`; any other key is a DataError."""
    fields = dict(dataset.fields) if dataset.fields else dict(default)
    unknown = sorted(set(fields) - set(TEXT_FIELDS))
    if unknown:
        raise DataError(f"dataset {dataset.name!r}: unknown field(s) {unknown} for mlm "
                        f"(allowed: {', '.join(TEXT_FIELDS)}; each names a text column)")
    return fields


def text_fields(dataset: DatasetConfig, reader: Reader) -> dict[str, Any]:
    """What of a record is text, checked before reading: table columns (`fields:` text, text_pair; default the
    column `text`) or SQuAD parts (default the context); text lines and sentences are read whole."""
    if reader.shape in (TEXT, WORDS):
        if dataset.fields:
            raise DataError(f"dataset {dataset.name!r}: the mlm family reads the whole text of a {reader.name!r} "
                            f"file; `fields` does not apply (it names text columns of tables and SQuAD parts)")
        return {}
    if reader.shape == ROWS:
        return named_texts(dataset, {"text": "text"})
    fields = named_texts(dataset, {"text": "context"})
    for key, part in fields.items():
        if part not in QA_PARTS:
            raise DataError(f"dataset {dataset.name!r}: fields.{key}: {part!r} is not a part of a SQuAD "
                            f"record (one of {', '.join(QA_PARTS)})")
    return fields


def texts_of(records: Records, fields: Mapping[str, Any], source: str | None) -> list[Text]:
    """The texts of one split's records of any shape (`fields` as `text_fields` gave them)."""
    shape, items = records.reader.shape, records.items
    if shape == WORDS:
        return _word_texts(items, source)
    if shape == ROWS:
        pairs = [(row.get(key), f"{row['_where']} ({key})") for row in items for key in fields]
    elif shape == QA:
        pairs = qa_texts(items, list(fields.values()))
    else:
        pairs = [(line.text, line.where) for line in items]
    return _texts(pairs, source)


def _texts(pairs: Sequence[tuple[Any, str]], source: str | None) -> list[Text]:
    """(value, where) pairs as Texts; empty values are skipped (and counted), other non-strings refused."""
    examples, empty = [], 0
    for value, where in pairs:
        if value is None or (isinstance(value, str) and not value.strip()):
            empty += 1
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: the text is a {type(value).__name__} ({str(value)[:40]!r}), not a string")
        examples.append(Text(value.strip(), where))
    if empty:
        note_read(skipped=empty)
        log.warning("%s: skipped %d empty text(s)", source, empty)
    if not examples:
        raise DataError(f"{source}: no text (every text field is empty)")
    return examples


def _word_texts(records: Sequence[Any], source: str | None) -> list[Text]:
    """Sentences as Texts of their surface words, which give the word boundaries."""
    examples = []
    for rec in records:
        words = surface_words(rec)
        if words:
            examples.append(Text(" ".join(words), rec.locations()[0], words))
    if not examples:
        raise DataError(f"{source}: no sentences")
    return examples


def surface_words(record: Any) -> list[str]:
    """The words as written: a CoNLL-U multi-word token (`du` for `de le`) counts once, empty nodes not at all."""
    if not isinstance(record, Sentence):
        return list(record.words)
    words, inside = [], 0
    for tok in record.tokens:
        tid = tok["id"]
        if "." in tid:
            continue
        if "-" in tid:
            words.append(tok["form"])
            inside = int(tid.split("-")[1])
        elif int(tid) > inside:
            words.append(tok["form"])
    return words


def qa_texts(records: Sequence[QAExample], parts: Sequence[str]) -> list[tuple[str, str]]:
    """The contexts (each once) and/or the questions of SQuAD-format records."""
    out, seen = [], set()
    for rec in records:
        for part in parts:
            text = rec.context if part == "context" else rec.question
            if part == "context":
                if text in seen:
                    continue
                seen.add(text)
            out.append((text, f"{rec.source} ({part})"))
    return out


# --------------------------------------------------------------------------- streamed text


def streams_text(dataset: DatasetConfig, role: str, fmt: str | None) -> bool:
    """Whether a split of format `fmt` is read as a stream: plain text or JSON lines in a local training file
    when the file is large (or `streaming: true`); a hub dataset when `streaming: true`."""
    fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(fmt or "", fmt)
    held = isinstance(dataset.split(role), InMemory)  # records in memory are already held
    streamable = role == "train" and not held and (fmt == "hub" if dataset.hub else fmt in ("text", "jsonl"))
    if dataset.streaming and not streamable:
        raise ConfigError(f"dataset {dataset.name!r}: streaming: true applies to a training split of plain "
                          "text (format: text), JSON lines (format: jsonl) or a hub dataset")
    if not streamable:
        return False
    if dataset.streaming is not None or dataset.hub:
        return bool(dataset.streaming)
    path = Path(dataset.train or "")
    return path.is_file() and path.stat().st_size >= STREAM_FROM_BYTES


def text_stream(dataset: DatasetConfig, fmt: str | None, packed: Windows, name: str) -> TextStream | HubStream:
    """The training stream of a dataset for which `streams_text` is true; `packed` turns consecutive texts into
    training windows."""
    if dataset.hub:
        fields = named_texts(dataset, {"text": "text"})
        return HubStream(lambda: load_hub(dataset, dataset.train or "train", streaming=True),
                         lambda row: row_texts(row, fields, name), packed, name, dataset.size)
    if fmt != "text":  # JSON lines
        fields = named_texts(dataset, {"text": "text"})
        source = dataset.train

        def windows(lines: list[str]) -> list[dict[str, Any]]:
            return packed([t for line in lines for t in row_texts(
                load_json(line, str(source), 0), fields, str(source))])

        return TextStream(Path(dataset.train or ""), windows, name, dataset.size)
    if dataset.fields:
        raise DataError(f"dataset {dataset.name!r}: the mlm family reads the whole text of a 'text' file; "
                        "`fields` does not apply")
    return TextStream(Path(dataset.train or ""), packed, name, dataset.size)


def row_texts(row: Any, fields: dict[str, Any], where: str) -> list[str]:
    """The texts of one streamed row, each field its own text; empty ones are passed over."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    out = []
    for key, col in fields.items():
        if col not in row:
            raise DataError(f"{where}: no key {col!r} for field {key} (keys: {', '.join(map(str, row))})")
        value = row[col]
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {key} ({col!r}) is a {type(value).__name__}, not a string")
        if value and value.strip():
            out.append(value.strip())
    return out
