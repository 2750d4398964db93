"""Records held in memory as a source beside files and the hub: every shape reads them with the checks its
files get, and their errors name the row index (what a served model hands its reader)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
from conftest import DATA

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import DataError
from tasks._conllu_io import read_conllu, sentences_from_records
from tasks.classification import Classification
from tasks.formats import InMemory, get_reader, read_records, resolve_dataset
from tasks.ner import NerFamily
from tasks.qa import QAFamily
from tasks.text_format import TextLine


def _family(cls: type, family: str) -> object:
    return cls(TaskConfig(family=family, datasets=[], options=cls.Options(), name=family), None, 128)


def _read(family: object, role: str = "test", **dataset: object) -> object:
    ds = resolve_dataset(family, DatasetConfig(language="en", name="en", **dataset))
    return read_records(family, ds, role)


def _sst_rows(n: int = 5) -> list[dict[str, str]]:
    lines = (DATA / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [dict(zip(("sentence", "label"), line.split("\t"), strict=True)) for line in lines]


# --------------------------------------------------------------------------- rows


def test_rows_in_memory_read_like_the_same_rows_in_a_file(tmp_path):
    rows = _sst_rows()
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    fam = _family(Classification, "classification")
    fields = {"text": "sentence", "label": "label"}
    from_file = fam.read(resolve_dataset(fam, DatasetConfig(language="en", test=str(path), fields=fields)), "test")
    held = InMemory(rows, "model input")
    ds = resolve_dataset(fam, DatasetConfig(language="en", test=held, format="jsonl", fields=fields))
    in_memory = fam.read(ds, "test")
    assert [(e.text, e.label) for e in in_memory] == [(e.text, e.label) for e in from_file]
    records = read_records(fam, ds, "test")
    assert records.source == "model input" and records.items[2]["_where"] == "model input row 2"
    assert records.items[2]["_line"] == 2


@pytest.mark.parametrize("rows, fields, message", [
    ([{"sentence": "a"}, {"label": "1"}], {"text": "sentence"}, "model input row 1: no key 'sentence' for field text"),
    ([["a", "1"]], {"text": "sentence"}, "model input row 0: expected a mapping of column to value, found list"),
    ([{"sentence": "a"}], {"text": 0}, "model input: field text: records in memory are read by key"),
    ([], {"text": "sentence"}, "model input: no data rows"),
])
def test_rows_in_memory_are_checked_and_errors_name_the_row(rows, fields, message):
    fam = _family(Classification, "classification")
    with pytest.raises(DataError, match="^" + message.replace("(", r"\(")):
        _read(fam, test=InMemory(rows, "model input"), format="tsv", fields=fields)


def test_a_test_split_in_memory_may_lack_the_label():
    fam = _family(Classification, "classification")
    records = _read(fam, test=InMemory([{"text": "fine"}]), format="csv", fields={"text": "text", "label": "label"})
    assert records.items[0]["label"] is None


def test_held_records_survive_copies_and_pickling():
    held = InMemory([{"text": "a"}], "model input")
    for copied in (copy.copy(held), copy.deepcopy(held), pickle.loads(pickle.dumps(held))):
        assert isinstance(copied, InMemory) and copied == "model input" and copied.items == held.items


# --------------------------------------------------------------------------- questions, texts


def test_questions_in_memory_read_like_a_squad_file(tmp_path):
    data = json.loads((DATA / "squad" / "dev.json").read_text(encoding="utf-8"))
    para = data["data"][0]["paragraphs"][0]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [dict(para, qas=para["qas"][:3])]}]}))
    fam = _family(QAFamily, "qa")
    from_file = _read(fam, test=str(path)).items
    held = [dict(qa, context=para["context"], title="t") for qa in para["qas"][:3]]
    in_memory = _read(fam, test=InMemory(held), format="squad").items
    assert [(q.id, q.question, q.context, q.answers) for q in in_memory] == [
        (q.id, q.question, q.context, q.answers) for q in from_file]
    assert in_memory[1].source == "records row 1"
    bad = [held[0], {k: v for k, v in held[1].items() if k != "context"}]
    with pytest.raises(DataError, match=r"^records row 1: missing 'context'"):
        _read(fam, test=InMemory(bad), format="squad")
    bad = [dict(held[0], answers=[{"text": "x", "answer_start": "3"}])]
    with pytest.raises(DataError, match=r"^records row 0: 'answer_start' has the wrong type"):
        _read(fam, test=InMemory(bad), format="squad")


def test_texts_in_memory_read_as_the_lines_of_a_file():
    reader = get_reader("text")
    ds = DatasetConfig(language="en", train=InMemory(["  one  ", "", "two"], "texts"))
    assert reader.memory(ds, "train", None, False) == [TextLine("one", "texts row 0"), TextLine("two", "texts row 2")]
    with pytest.raises(DataError, match=r"^texts row 1: expected a text, found int"):
        reader.memory(DatasetConfig(language="en", train=InMemory(["a", 3], "texts")), "train", None, False)
    with pytest.raises(DataError, match=r"^texts: no text"):
        reader.memory(DatasetConfig(language="en", train=InMemory([" "], "texts")), "train", None, False)


# --------------------------------------------------------------------------- sentences


def _as_record(sentence: object) -> dict[str, list[str]]:
    rows = [list(t.values()) for t in sentence.tokens]
    names = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
    return {name: [r[i] for r in rows] for i, name in enumerate(names)}


def test_sentences_in_memory_read_like_a_conllu_file():
    gold = read_conllu(DATA / "ud" / "cy_ccg" / "dev.conllu")[:20]
    fam = _family(NerFamily, "ner")
    held = _read(fam, test=InMemory([_as_record(s) for s in gold], "sentences"), format="conllu").items
    for cols in ("form", "upos", "head", "deprel", "feats"):
        assert [s.column(cols) for s in held] == [s.column(cols) for s in gold]
    assert held[3].where == "sentences row 3" and held[3].source == "sentences"
    # ids default to 1, 2 …, absent columns read as `_`, ints as text
    (one,) = sentences_from_records([{"form": ["Hi", "there"], "head": [0, 1], "deprel": ["root", "dep"]}], "s")
    assert one.column("id") == ["1", "2"] and one.heads == [0, 1] and one.column("upos") == ["_", "_"]


@pytest.mark.parametrize("record, message", [
    ({"form": ["a", "b", "c"], "head": [0, 3, 2], "deprel": ["x", "y", "z"]}, "s row 0 token 2: cycle in the HEAD"),
    ({"form": ["a", "b"], "head": [2, 1], "deprel": ["x", "y"]}, "s row 0: no root (no word has HEAD 0)"),
    ({"form": ["a"], "head": [0, 1]}, "s row 0: column 'head' must be a list of 1 values"),
    ({"form": "a b"}, "s row 0: 'form' must be a list of the token forms"),
    ({"form": ["a"], "Upos": ["X"]}, "s row 0: unknown column(s) ['Upos']"),
    ({"form": ["a\tb"]}, "s row 0 token 1: FORM 'a\\tb' holds a tab or a line break"),
    ({"form": []}, "s row 0: sentence has no words"),
    ("1\ta", "s row 0: expected a mapping of CoNLL-U column to values, found str"),
])
def test_sentences_in_memory_get_the_checks_of_a_file(record, message):
    with pytest.raises(DataError) as err:
        sentences_from_records([record], "s")
    assert str(err.value).startswith(message)


def test_invalid_sentences_in_memory_are_skipped_when_asked():
    good = {"form": ["a"], "head": [0], "deprel": ["root"]}
    kept = sentences_from_records([good, {"form": ["a"], "head": [1], "deprel": ["x"]}, good], "s",
                                  skip_invalid=True)
    assert [s.where for s in kept] == ["s row 0", "s row 2"]


def test_tagged_words_in_memory_read_like_a_hub_row():
    fam = _family(NerFamily, "ner")
    held = InMemory([{"tokens": ["Anna", "sings"], "ner_tags": ["B-PER", "O"]}], "model input")
    (sent,) = _read(fam, test=held, format="conll").items
    assert sent.words == ["Anna", "sings"] and sent.column("tag") == ["B-PER", "O"]
    assert sent.locations() == ["model input row 0 token 0", "model input row 0 token 1"]
    with pytest.raises(DataError, match=r"^model input row 0: 2 tokens but 1 tags"):
        _read(fam, test=InMemory([{"tokens": ["a", "b"], "ner_tags": ["O"]}], "model input"), format="conll")
    with pytest.raises(DataError, match=r"^model input row 0: no column 'ner_tags'"):
        _read(fam, test=InMemory([{"tokens": ["a"]}], "model input"), format="wikiann")
    with pytest.raises(DataError, match=r"^model input row 0 token 1: a word must be a non-blank string"):
        _read(fam, test=InMemory([{"tokens": ["a", 3], "ner_tags": ["O", "O"]}], "model input"), format="conll")


def test_files_are_read_as_before(tmp_path: Path):
    """A split that is a path string is read from its file, as it always was."""
    fam = _family(Classification, "classification")
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\ngood\t1\n", encoding="utf-8")
    records = _read(fam, test=str(path), fields={"text": "sentence", "label": "label"})
    assert records.items[0]["_where"] == f"{path}:2" and records.source == str(path)
