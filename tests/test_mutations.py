"""Bad input never crashes and never vanishes: every reader, fed mutated slices of real files.

Each mutant (lines deleted, doubled, swapped; bytes replaced, inserted, dropped; structural
characters changed; a byte-order mark; a cut-off end) must be either
- rejected with a DataError (ConfigError for the experiment file) that names the file, or
- accepted with exactly as many examples as an independent count of the mutated file finds,
  or with a WARNING logged that says what the reader changed.
Anything else (a raw UnicodeDecodeError, KeyError, RecursionError …, an example silently lost)
fails. Run with `-s` to see how many mutants each reader rejected, accepted, or repaired, and with
MTL_MUTANTS=500 for a longer hunt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import DATA, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import ConfigError, DataError
from mtl.experiment import load_experiment
from tasks._conllu_io import read_conllu
from tasks.formats import resolve_dataset
from tasks.ner import NerFamily
from tasks.qa import QAFamily
from tasks.readers import read_table

MAX_EXAMPLES = int(os.environ.get("MTL_MUTANTS", "40"))  # per reader; raise it for a longer hunt
# Problems of a whole file, which have no line to name.
WHOLE_FILE = ("no data rows", "empty file", "no sentences", "no questions", "must be a mapping", "nested too deeply",
              "not SQuAD format", "an experiment file must be")
STRUCTURAL = ["\t", " ", "_", "0", "1", "-", ":", '"', "{", "}", "[", "]", ",", "#", "\n", "\r", "B-", "I-", "'",
              "\ufeff", "é", "\u2028"]


# --------------------------------------------------------------------------- mutations


@st.composite
def mutants(draw: st.DrawFn, data: bytes) -> bytes:
    """One to three small edits of `data`, each of a kind real files suffer."""
    for _ in range(draw(st.integers(1, 3))):
        lines = data.split(b"\n")
        op = draw(st.sampled_from(["del_line", "dup_line", "swap_lines", "blank_line", "byte", "insert_bytes",
                                   "del_byte", "truncate", "bom", "structural"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        j = draw(st.integers(0, max(0, len(lines) - 1)))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "del_line":
            del lines[i]
        elif op == "dup_line":
            lines.insert(i, lines[i])
        elif op == "swap_lines":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "blank_line":
            lines.insert(i, b"")
        if op in ("del_line", "dup_line", "swap_lines", "blank_line"):
            data = b"\n".join(lines)
        elif op == "byte":
            data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]
        elif op == "insert_bytes":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=3)) + data[pos:]
        elif op == "del_byte":
            data = data[:pos] + data[pos + 1 :]
        elif op == "truncate":
            data = data[:pos]
        elif op == "bom":
            data = b"\xef\xbb\xbf" + data
        else:
            piece = draw(st.sampled_from(STRUCTURAL)).encode("utf-8")
            span = draw(st.integers(0, 2))
            data = data[:pos] + piece + data[pos + span :]
    return data


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_mutations(
    name: str,
    sample: bytes,
    suffix: str,
    read: Callable[[Path], int],
    count: Callable[[bytes], int],
    errors: tuple[type[Exception], ...] = (DataError,),
    n: int = MAX_EXAMPLES,
) -> Counter[str]:
    """Feed mutants of `sample` to `read` (returns how many examples it yielded); check the promise."""
    tally: Counter[str] = Counter()
    assert read(_write(sample, suffix)) == count(sample), f"{name}: the unmutated slice must read completely"

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutant=mutants(sample))
    def one(mutant: bytes) -> None:
        path = _write(mutant, suffix)
        handler = _Warnings()
        logging.getLogger().addHandler(handler)
        try:
            got = read(path)
        except errors as err:
            msg = str(err)
            assert str(path) in msg, f"{name}: rejection does not name the file: {msg}"
            tally["rejected"] += 1
            if re.search(rf"{re.escape(str(path))}:\d+|question |article ", msg):
                tally["rejected with line or id"] += 1
            else:
                assert any(w in msg for w in WHOLE_FILE), f"{name}: rejection names no line or example: {msg}"
                tally["rejected as a whole file"] += 1
            return
        finally:
            logging.getLogger().removeHandler(handler)
        expected = count(mutant)
        if handler.messages:
            tally["repaired and logged"] += 1
        else:
            assert got == expected, f"{name}: accepted {got} examples, the file holds {expected}, nothing logged"
            tally["accepted"] += 1

    one()
    tally["mutants"] = sum(v for k, v in tally.items() if k in ("rejected", "accepted", "repaired and logged"))
    print(f"\nmutations {name}: {dict(tally)}")
    assert tally["rejected"] > 0 and tally["accepted"] > 0, tally
    return tally


def _write(data: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mut-"))
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    return path


def _head_lines(path: Path, n: int) -> bytes:
    return b"\n".join(path.read_bytes().split(b"\n")[:n]) + b"\n"


def _text(data: bytes) -> str:
    return data.decode("utf-8-sig")


# --------------------------------------------------------------------------- independent counts


def count_conllu(data: bytes) -> int:
    """Blank-line separated blocks that hold a token line (not only comments)."""
    n, has_token = 0, False
    for line in [*_text(data).split("\n"), ""]:
        if not line.strip():
            n += has_token
            has_token = False
        elif not line.startswith("#"):
            has_token = True
    return n


def count_conll(data: bytes, separator: str | None) -> int:
    """Runs of token lines, broken by blank lines and -DOCSTART- lines."""
    n, open_run = 0, False
    for line in [*_text(data).split("\n"), ""]:
        line = line.rstrip("\r\n")
        cols = line.split() if separator is None else line.split(separator)
        if not line.strip() or cols[0] == "-DOCSTART-":
            n += open_run
            open_run = False
        else:
            open_run = True
    return n


def count_squad(data: bytes) -> int:
    return sum(len(p["qas"]) for a in json.loads(_text(data))["data"] for p in a["paragraphs"])


def count_rows(data: bytes, header: bool, separator: str = "\t") -> int:
    rows = [line for line in _text(data).split("\n") if any(c.strip() for c in line.split(separator))]
    return len(rows) - header


# --------------------------------------------------------------------------- readers


def ner_reader(fmt: str, language: str) -> Callable[[Path], int]:
    def read(path: Path) -> int:
        fam = NerFamily(TaskConfig(family="ner", datasets=[], options=NerFamily.Options(), name="ner"), None, 128)
        ds = DatasetConfig(language=language, name=language, train=str(path), format=fmt)
        return len(fam.read(resolve_dataset(fam, ds), "train"))

    return read


def test_conllu_mutations():
    sample = _head_lines(DATA / "ud/fr_gsd/dev.conllu", 120)  # multi-word tokens (du = de le) included
    run_mutations("CoNLL-U", sample, ".conllu", lambda p: len(read_conllu(p)), count_conllu)


def test_conll2003_mutations():
    sample = _head_lines(DATA / "ner/conll2003/dev.txt", 60)
    run_mutations("CoNLL-2003", sample, ".txt", ner_reader("conll2003", "en"), lambda d: count_conll(d, None))


def test_wikiann_mutations():
    sample = _head_lines(DATA / "ner/wikiann/de/dev.txt", 60)
    run_mutations("WikiANN", sample, ".txt", ner_reader("wikiann", "de"), lambda d: count_conll(d, "\t"))


def test_chinese_ner_mutations():
    weibo = _head_lines(DATA / "ner/weibo/dev.txt", 70)
    run_mutations("Weibo NER", weibo, ".txt", ner_reader("weibo", "zh"), lambda d: count_conll(d, "\t"))
    msra = _head_lines(DATA / "ner/msra/dev.txt", 70)
    run_mutations("MSRA NER", msra, ".txt", ner_reader("msra", "zh"), lambda d: count_conll(d, "\t"))


def test_squad_json_mutations():
    full = json.loads((DATA / "drcd/dev.json").read_text(encoding="utf-8"))
    article = full["data"][0]
    paragraph = dict(article["paragraphs"][0], qas=article["paragraphs"][0]["qas"][:3])
    small = {"version": full.get("version", "1.3"), "data": [{"title": article["title"], "paragraphs": [paragraph]}]}
    sample = json.dumps(small, ensure_ascii=False, indent=1).encode("utf-8")

    def read(path: Path) -> int:
        fam = QAFamily(TaskConfig(family="qa", datasets=[], options=QAFamily.Options(), name="qa"), None, 128)
        return len(fam.read(resolve_dataset(fam, DatasetConfig(language="zh", name="zh", train=str(path))), "train"))

    run_mutations("SQuAD JSON", sample, ".json", read, count_squad)


def test_tsv_mutations():
    sample = _head_lines(DATA / "glue/SST-2/dev.tsv", 25)
    fields = {"text": "sentence", "label": "label"}
    run_mutations("TSV (SST-2)", sample, ".tsv", lambda p: len(read_table(p, fields)),
                  lambda d: count_rows(d, header=True))


def test_csv_mutations():
    import csv
    import io

    rows = [line.split("\t") for line in _text(_head_lines(DATA / "glue/SST-2/dev.tsv", 25)).split("\n") if line]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    sample = out.getvalue().encode("utf-8")
    fields = {"text": "sentence", "label": "label"}

    def count(data: bytes) -> int:  # the csv module's own reading of records, blank records skipped
        records = csv.reader(io.StringIO(_text(data), newline=""))
        return sum(1 for r in records if any(c.strip() for c in r)) - 1

    run_mutations("CSV", sample, ".csv", lambda p: len(read_table(p, fields)), count)


def test_jsonl_mutations():
    sample = _head_lines(DATA / "ocnli/dev.sample.jsonl", 12)
    fields = {"text": "sentence1", "text_pair": "sentence2", "label": "label"}

    def count(data: bytes) -> int:
        return sum(1 for line in _text(data).splitlines() if line.strip())

    run_mutations("JSON lines", sample, ".jsonl", lambda p: len(read_table(p, fields)), count)


def _count_datasets(data: bytes) -> int:
    doc = yaml.safe_load(_text(data))
    return sum(len(task["datasets"]) for task in doc["tasks"].values())


@pytest.mark.parametrize("example", ["ner.yaml", "quickstart.yaml"])
def test_experiment_yaml_mutations(example):
    sample = (REPO / "examples" / example).read_bytes()

    def read(path: Path) -> int:
        exp = load_experiment(path, check_files=False)
        return sum(len(t.datasets) for t in exp.tasks.values())

    run_mutations(f"experiment YAML ({example})", sample, ".yaml", read, _count_datasets, errors=(ConfigError,))


def test_mutation_operators_change_the_input():
    """The strategy really edits files (a test that always passes would prove nothing)."""
    sample = b"a\tb\nc\td\n"
    seen: set[bytes] = set()

    @settings(max_examples=30, deadline=None, database=None, derandomize=True)
    @given(m=mutants(sample))
    def collect(m: bytes) -> None:
        seen.add(m)

    collect()
    assert len(seen - {sample}) > 10
