"""CoNLL-U in and out, with line numbers for every error.

Token lines are parsed by the `conllu` library with every column kept as its raw string, so
a file written back is the file read in, apart from the columns that were predicted. Comments
are kept verbatim (conllu's metadata drops comments without `=`). Multi-word token lines
(`1-2`) and empty nodes (`8.1`) are kept for output; only syntactic words are predicted.

conllu does not report line numbers, so sentences are cut into blocks here, each line keeping
its number, and validated before they are handed to conllu. Sentences held in memory (a mapping of
column → values each) pass the same checks, their errors naming the row index.
"""

from __future__ import annotations

import ast
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import conllu
from conllu.serializer import serialize_field

from mtl.core.errors import DataError
from tasks._input import read_text
from tasks.base import note_read

log = logging.getLogger(__name__)

FIELDS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
_RAW = {name: (lambda line, i: line[i]) for name in FIELDS}
_WORD_ID = re.compile(r"[1-9][0-9]*")
_RANGE_ID = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)")
_EMPTY_ID = re.compile(r"(0|[1-9][0-9]*)\.([1-9][0-9]*)")
_INT = re.compile(r"0|[1-9][0-9]*")


@dataclass
class Sentence:
    """One CoNLL-U sentence: all its lines for output, and its syntactic words for prediction."""

    source: str  # the file (or hub split) it came from
    line: int  # line of its first line in the file (example number for the hub)
    comments: list[str]
    tokens: conllu.TokenList  # every token line as raw strings: words, ranges, empty nodes
    word_rows: list[int]  # index in `tokens` of each syntactic word
    dataset: str = ""  # name of the dataset it belongs to
    at: str = ""  # where it is, when not `source:line` (a row of records in memory)

    def column(self, name: str) -> list[str]:
        """One of the ten columns, or the values of a MISC key (`NE=B-PER` → column NE; `_` where absent)."""
        if name in FIELDS:
            return [self.tokens[i][name] for i in self.word_rows]
        return [_misc(self.tokens[i]["misc"]).get(name, "_") for i in self.word_rows]

    def has(self, name: str) -> bool:
        return name in FIELDS or any(name in _misc(self.tokens[i]["misc"]) for i in self.word_rows)

    @property
    def forms(self) -> list[str]:
        return self.column("form")

    @property
    def words(self) -> list[str]:
        return self.forms

    def locations(self) -> list[str]:
        return [f"{self.where} word {k + 1}" for k in range(len(self.word_rows))]

    @property
    def heads(self) -> list[int] | None:
        """Gold heads (0 = ROOT), or None when the sentence is not parsed (HEAD all `_`)."""
        col = self.column("head")
        return None if col[0] == "_" else [int(h) for h in col]

    @property
    def where(self) -> str:
        return self.at or f"{self.source}:{self.line}"

    def __len__(self) -> int:
        return len(self.word_rows)


def _misc(value: str) -> dict[str, str]:
    """MISC `A=1|B=2` as a mapping (`_` and keys without a value give nothing)."""
    if value in ("", "_"):
        return {}
    return dict(item.split("=", 1) for item in value.split("|") if "=" in item)


def sentence_from_words(record: Any, dataset: str = "") -> Sentence:
    """A Sentence from any WORDS record (tasks/formats.py): the UD columns it has, `_` for the rest;
    checked like a CoNLL-U file."""
    words = record.words
    cols = {name: record.column(name) if record.has(name) else ["_"] * len(words) for name in FIELDS[2:]}
    rows = [[str(k + 1), form, *(cols[name][k] for name in FIELDS[2:])] for k, form in enumerate(words)]
    where_each = record.locations()

    def where(k: int) -> str:
        return where_each[k] if 0 <= k < len(where_each) else where_each[0]

    word_rows = _check_sentence(rows, where, 0)
    first = where_each[0]
    source, _, line = first.rpartition(":")
    return Sentence(source if line.isdigit() else first, int(line) if line.isdigit() else 1, [],
                    _to_tokenlist(rows, []), word_rows, dataset)


# --------------------------------------------------------------------------- validation


def _check_sentence(rows: Sequence[list[str]], where: Callable[[int], str], start: int) -> list[int]:
    """Validate one sentence's token rows; return the row index of each word. Raises DataError."""
    word_rows: list[int] = []
    ranges: list[tuple[int, int, int]] = []
    for k, cols in enumerate(rows):
        if len(cols) != 10:
            raise DataError(f"{where(k)}: expected 10 tab-separated columns, found {len(cols)}")
        ident = cols[0]
        if _WORD_ID.fullmatch(ident):
            if int(ident) != len(word_rows) + 1:
                raise DataError(f"{where(k)}: word ID {ident} out of order (expected {len(word_rows) + 1})")
            word_rows.append(k)
        elif m := _RANGE_ID.fullmatch(ident):
            a, b = int(m.group(1)), int(m.group(2))
            if a != len(word_rows) + 1 or b < a:
                raise DataError(f"{where(k)}: multi-word token range {ident} does not start at the next word "
                                f"({len(word_rows) + 1}) or ends before it starts")
            ranges.append((a, b, k))
        elif m := _EMPTY_ID.fullmatch(ident):
            if int(m.group(1)) != len(word_rows):
                raise DataError(f"{where(k)}: empty node {ident} must follow word {m.group(1)}")
        else:
            raise DataError(f"{where(k)}: ID {ident!r} is not an integer, a range (3-4) or an empty node (8.1)")
        if not cols[1]:
            raise DataError(f"{where(k)}: empty FORM")
    n = len(word_rows)
    if n == 0:
        raise DataError(f"{where(start)}: sentence has no words")
    for a, b, k in ranges:
        if b > n:
            raise DataError(f"{where(k)}: multi-word token range {a}-{b} goes past the last word ({n})")
    _check_tree(rows, word_rows, where, start)
    return word_rows


def _check_tree(rows: Sequence[list[str]], word_rows: list[int], where: Callable[[int], str], start: int) -> None:
    n = len(word_rows)
    raw = [rows[k][6] for k in word_rows]
    if all(h == "_" for h in raw):
        return  # an unparsed sentence (e.g. input to be parsed)
    heads: list[int] = []
    for k, h in zip(word_rows, raw, strict=True):
        if not _INT.fullmatch(h):
            what = "missing ('_') while other words have one" if h == "_" else "not an integer"
            raise DataError(f"{where(k)}: HEAD {h!r} is {what}")
        if int(h) > n:
            raise DataError(f"{where(k)}: HEAD {h} is out of range (the sentence has {n} words)")
        if rows[k][7] == "_":
            raise DataError(f"{where(k)}: DEPREL is missing ('_') while HEAD is {h}")
        heads.append(int(h))
    roots = [i for i, h in enumerate(heads) if h == 0]
    if not roots:
        raise DataError(f"{where(start)}: no root (no word has HEAD 0)")
    if len(roots) > 1:
        a, b = roots[0], roots[1]
        raise DataError(f"{where(word_rows[b])}: a second root (words {a + 1} and {b + 1} both have HEAD 0)")
    cycle = _cycle([0, *heads])
    if cycle:
        chain = " → ".join(str(i) for i in [*cycle, cycle[0]])
        raise DataError(f"{where(word_rows[min(cycle) - 1])}: cycle in the HEAD column ({chain})")


def _cycle(heads: list[int]) -> list[int] | None:
    done = [False] * len(heads)
    done[0] = True
    for s in range(1, len(heads)):
        path: list[int] = []
        seen: set[int] = set()
        node = s
        while not done[node] and node not in seen:
            seen.add(node)
            path.append(node)
            node = heads[node]
        if node in seen:
            return path[path.index(node) :]
        for p in path:
            done[p] = True
    return None


# --------------------------------------------------------------------------- reading


def _blocks(lines: Iterable[str]) -> Iterable[tuple[int, list[tuple[int, str]]]]:
    """Blank-line separated blocks as (first line number, [(line number, text)])."""
    block: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if line.strip() == "":
            if block:
                yield block[0][0], block
                block = []
        else:
            block.append((number, line))
    if block:
        yield block[0][0], block


def _to_tokenlist(rows: Sequence[list[str]], comments: list[str]) -> conllu.TokenList:
    text = "\n".join([*comments, *("\t".join(r) for r in rows)])
    tokens = conllu.parse_token_and_metadata(text, fields=FIELDS, field_parsers=dict(_RAW))
    if len(tokens) != len(rows) or any(list(t.values()) != r for t, r in zip(tokens, rows, strict=True)):
        # conllu also splits on runs of spaces and strips lines; keep the tab-separated truth.
        tokens = conllu.TokenList([conllu.Token(zip(FIELDS, r, strict=True)) for r in rows], tokens.metadata)
    return tokens


class _Drops:
    """Invalid sentences skipped under skip_invalid, counted by reason and logged once."""

    def __init__(self, source: str, skip_invalid: bool):
        self.source = source
        self.skip_invalid = skip_invalid
        self.reasons: Counter[str] = Counter()
        self.first: list[str] = []

    def keep(self, make: Callable[[], Sentence], into: list[Sentence]) -> None:
        """Append the sentence `make` builds, or count it as skipped when it is invalid under skip_invalid."""
        try:
            into.append(make())
        except DataError as err:
            if not self.skip_invalid:
                raise
            self.add(err)

    def add(self, err: DataError) -> None:
        msg = str(err)
        reason = msg.split(": ", 1)[-1]
        reason = re.sub(r"\d+", "N", reason.split(" (")[0])
        self.reasons[reason] += 1
        if len(self.first) < 3:
            self.first.append(msg)

    def report(self, kept: int) -> None:
        total = sum(self.reasons.values())
        note_read(skipped=total)
        if total:
            why = "; ".join(f"{n}× {r}" for r, n in self.reasons.most_common())
            log.warning("%s: skipped %d of %d sentences as invalid (skip_invalid): %s. First: %s",
                        self.source, total, total + kept, why, " | ".join(self.first))


def _sentence(source: str, line: int, rows: list[list[str]], comments: list[str], where: Callable[[int], str],
              dataset: str, at: str = "") -> Sentence:
    """One checked sentence from its token rows (a DataError naming `where` when they are not valid CoNLL-U)."""
    word_rows = _check_sentence(rows, where, -1)
    return Sentence(source, line, comments, _to_tokenlist(rows, comments), word_rows, dataset, at)


def read_conllu(path: str | Path, dataset: str = "", skip_invalid: bool = False) -> list[Sentence]:
    """Read and validate a CoNLL-U file; bad sentences raise DataError with file:line (or are skipped)."""
    path = Path(path)
    text = read_text(path)
    drops = _Drops(str(path), skip_invalid)
    sentences: list[Sentence] = []
    for start, block in _blocks(text.split("\n")):
        comments = [line for _, line in block if line.startswith("#")]
        body = [(n, line) for n, line in block if not line.startswith("#")]
        numbers = [n for n, _ in body]
        rows = [line.split("\t") for _, line in body]

        def where(k: int, numbers: list[int] = numbers, start: int = start) -> str:
            return f"{path}:{numbers[k] if 0 <= k < len(numbers) else start}"

        drops.keep(partial(_sentence, str(path), start, rows, comments, where, dataset), sentences)
    drops.report(len(sentences))
    return sentences


def _hub_raw(value: Any) -> str:
    """A column the hub stores as conllu gave it (FORM, LEMMA, UPOS, XPOS): None is `_`."""
    return "_" if value is None or value == "" else str(value)


def _hub_str(value: Any) -> str:
    """A column the hub stores as str() of conllu's value (FEATS, HEAD, DEPREL, DEPS, MISC), back as CoNLL-U."""
    if value is None or value in ("None", ""):
        return "_"
    if value[:1] in "{[":
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return serialize_field(parsed) if parsed else "_"
    return value


def _hub_ids(rows: list[list[str]]) -> None:
    """Rebuild the ID column, which the hub does not keep.

    Words are the rows with a HEAD (or, in an unparsed sentence, with a UPOS). Of the other rows,
    one without UPOS is a multi-word token over the next words whose forms cover its own (at least
    two), and the rest are empty nodes. Multi-word ranges are therefore a best reconstruction;
    words, which are what is predicted and scored, are exact.
    """
    parsed = any(r[6] != "_" for r in rows)

    def is_word(r: list[str]) -> bool:
        return r[6] != "_" if parsed else r[3] != "_"

    word = 0
    empty = 0
    for k, r in enumerate(rows):
        if is_word(r):
            word += 1
            empty = 0
            r[0] = str(word)
        elif r[3] == "_":
            span, covered = 0, 0
            for nxt in rows[k + 1 :]:
                if not is_word(nxt) or (span >= 2 and covered >= len(r[1])):
                    break
                span += 1
                covered += len(nxt[1])
            r[0] = f"{word + 1}-{word + span}" if span >= 2 else "_"
        else:
            empty += 1
            r[0] = f"{word}.{empty}"


def sentences_from_hub(records: Iterable[dict[str, Any]], source: str, upos_names: Sequence[str] | None,
                       dataset: str = "", skip_invalid: bool = False) -> list[Sentence]:
    """Convert rows of the hub's `universal_dependencies` dataset into Sentences (same checks as files)."""
    drops = _Drops(source, skip_invalid)
    sentences: list[Sentence] = []
    for number, rec in enumerate(records, start=1):
        forms = rec["tokens"]
        upos = [upos_names[u] if upos_names is not None and isinstance(u, int) else u for u in rec["upos"]]
        raw = [forms, rec["lemmas"], upos, rec["xpos"]]
        as_str = [rec["feats"], rec["head"], rec["deprel"], rec["deps"], rec["misc"]]
        rows = [["_", *(_hub_raw(c[i]) for c in raw), *(_hub_str(c[i]) for c in as_str)] for i in range(len(forms))]
        _hub_ids(rows)
        comments = [f"# sent_id = {rec['idx']}"] if rec.get("idx") else []
        if rec.get("text"):
            comments.append(f"# text = {rec['text']}")

        def where(k: int, number: int = number) -> str:
            return f"{source} example {number}" + (f" token {k + 1}" if k >= 0 else "")

        drops.keep(partial(_sentence, source, number, rows, comments, where, dataset), sentences)
    drops.report(len(sentences))
    return sentences


def sentences_from_records(records: Iterable[Any], source: str, dataset: str = "", skip_invalid: bool = False
                           ) -> list[Sentence]:
    """Sentences held in memory, each a mapping of CoNLL-U column names (`form`, `upos`, `head` …) to one value
    per token line: `form` is needed, `id` defaults to 1, 2 …, an absent column or a None value is `_`. The
    same checks as a file (bad ones are skipped and counted under skip_invalid); errors name the row index."""
    drops = _Drops(source, skip_invalid)
    sentences: list[Sentence] = []
    for i, rec in enumerate(records):

        def where(k: int, i: int = i) -> str:
            return f"{source} row {i}" + (f" token {k + 1}" if k >= 0 else "")

        drops.keep(partial(_record_sentence, rec, source, i, where, dataset), sentences)
    drops.report(len(sentences))
    return sentences


def _record_sentence(rec: Any, source: str, i: int, where: Callable[[int], str], dataset: str) -> Sentence:
    return _sentence(source, i, _record_rows(rec, where), [], where, dataset, where(-1))


def _record_rows(rec: Any, where: Callable[[int], str]) -> list[list[str]]:
    """The ten-column token rows of one sentence given as a mapping of column → values."""
    if not isinstance(rec, Mapping):
        raise DataError(f"{where(-1)}: expected a mapping of CoNLL-U column to values, found {type(rec).__name__}")
    unknown = sorted(str(k) for k in rec if k not in FIELDS)
    if unknown:
        raise DataError(f"{where(-1)}: unknown column(s) {unknown} (columns: {', '.join(FIELDS)})")
    forms = rec.get("form")
    if isinstance(forms, str) or not isinstance(forms, Sequence):
        raise DataError(f"{where(-1)}: 'form' must be a list of the token forms")
    n = len(forms)
    cols: dict[str, list[str]] = {}
    for name in FIELDS:
        values = rec.get(name)
        if values is None:
            cols[name] = [str(k + 1) for k in range(n)] if name == "id" else ["_"] * n
            continue
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != n:
            raise DataError(f"{where(-1)}: column {name!r} must be a list of {n} values (one per form)")
        cols[name] = ["_" if v is None else str(v) for v in values]
        for k, v in enumerate(cols[name]):
            if "\t" in v or "\n" in v:
                raise DataError(f"{where(k)}: {name.upper()} {v!r} holds a tab or a line break")
    return [[cols[name][k] for name in FIELDS] for k in range(n)]


# --------------------------------------------------------------------------- writing


def format_sentence(sent: Sentence, words: dict[str, list[str]] | None = None) -> str:
    """CoNLL-U text of a sentence, with the given columns replaced on its words."""
    rows = [list(t.values()) for t in sent.tokens]
    for name, values in (words or {}).items():
        col = FIELDS.index(name)
        for k, v in zip(sent.word_rows, values, strict=True):
            rows[k][col] = str(v)
    return "\n".join([*sent.comments, *("\t".join(r) for r in rows)]) + "\n\n"


def write_conllu(sentences: Sequence[Sentence], columns: Sequence[dict[str, list[str]] | None], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for sent, words in zip(sentences, columns, strict=True):
            fh.write(format_sentence(sent, words))
