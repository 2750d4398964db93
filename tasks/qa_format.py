"""The QA shape: a context, a question and its answers, read from SQuAD-format JSON or the hub.

SQuAD v1.1 and v2.0 (unanswerable questions marked `is_impossible`; DRCD and XQuAD use the same
format) as local files, or hub datasets with the `squad` columns (id, question, context, answers),
or questions held in memory (each a mapping of one SQuAD question with its `context`, checked as a
file's are). The records are the qa family's examples as read; the family checks each answer against
its context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl.core.config import DatasetConfig
from mtl.core.errors import DataError
from tasks._input import load_json, read_text
from tasks.formats import QA, Reader, in_memory, register_reader, split_name, split_path
from tasks.hub import load_hub


@dataclass
class SquadOptions:
    """The `options:` of one qa dataset."""

    relocate_answers: bool = False  # move an answer whose offset does not match to its nearest occurrence


@dataclass
class Answer:
    """One gold answer: its text and where it starts."""

    text: str
    start: int  # character offset in the context


@dataclass
class QAExample:
    """One question over its context (a QA record, and the qa family's example)."""

    id: str
    question: str
    context: str
    answers: list[Answer]
    is_impossible: bool = False
    allow_null: bool = False  # the dataset has unanswerable questions, so "" is a possible answer
    title: str = ""
    source: str = ""


def _read_squad(dataset: DatasetConfig, role: str, opts: SquadOptions, skip_invalid: bool = False) -> list[QAExample]:
    return _read_squad_json(split_path(dataset, role))


def _read_squad_json(path: Path) -> list[QAExample]:
    data = load_json(read_text(path), str(path))
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: not SQuAD format (expected a top-level 'data' list of articles)")
    examples = []
    for a, article in enumerate(data["data"]):
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        for p, para in enumerate(_list(article, "paragraphs", f"{path}: article {a}")):
            where = f"{path}: article {a} paragraph {p}"
            context = _field(para, "context", str, where)
            for q, qa in enumerate(_list(para, "qas", where)):
                qid = str(_field(qa, "id", (str, int), f"{where} question {q}"))
                examples.append(_example(qa, qid, context, title, f"{path}: question {qid}"))
    return examples


def _example(qa: dict[str, Any], qid: str, context: str, title: str, where: str) -> QAExample:
    question = _field(qa, "question", str, where)
    answers = []
    for ans in _list(qa, "answers", where):
        text = _field(ans, "text", str, where)
        start = _field(ans, "answer_start", int, where)
        answers.append(Answer(text, start))
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise DataError(f"{where}: is_impossible must be true or false, got {impossible!r}")
    return QAExample(qid, question, context, answers, impossible, title=title, source=where)


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _list(obj: Any, key: str, where: str) -> list[Any]:
    return _field(obj, key, list, where)


def _read_squad_hub(dataset: DatasetConfig, role: str, opts: SquadOptions, skip_invalid: bool = False
                    ) -> list[QAExample]:
    """Questions of a hub dataset in the `squad` layout; no answers means unanswerable (SQuAD v2)."""
    split = split_name(dataset, role)
    ds = load_hub(dataset, split)
    needed = ("id", "question", "context", "answers")
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(f"{dataset.hub}:{split}: not in SQuAD layout, missing column(s) {missing}")
    examples = []
    for row in ds:
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        answers = [Answer(t, int(s)) for t, s in zip(texts, starts, strict=True)]
        where = f"{dataset.hub}:{split}: question {row['id']}"
        examples.append(QAExample(str(row["id"]), row["question"], row["context"], answers, not answers,
                                  title=row.get("title", ""), source=where))
    return examples


def _read_squad_memory(dataset: DatasetConfig, role: str, opts: SquadOptions, skip_invalid: bool = False
                       ) -> list[QAExample]:
    """Questions held in memory, each a mapping as one question of a SQuAD file (id, question, answers with
    text and answer_start, optional is_impossible) plus its `context` (and optional `title`)."""
    split = in_memory(dataset, role)
    examples = []
    for i, qa in enumerate(split.items):
        where = f"{split} row {i}"
        context = _field(qa, "context", str, where)
        qid = str(_field(qa, "id", (str, int), where))
        examples.append(_example(qa, qid, context, str(qa.get("title", "")), where))
    return examples


for _name in ("squad", "json"):
    register_reader(Reader(_name, QA, _read_squad, SquadOptions, hub=_read_squad_hub, memory=_read_squad_memory))
