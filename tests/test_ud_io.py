"""CoNLL-U reading (errors with file:line), writing, round trips, and the hub's row format."""

from __future__ import annotations

import logging
from pathlib import Path

import conllu
import pytest

from mtl.core.errors import DataError
from tasks._conllu_io import format_sentence, read_conllu, sentences_from_hub, write_conllu

GOOD = """\
# sent_id = good
# a free comment without an equals sign
1\tThey\tthey\tPRON\tPRP\tCase=Nom\t2\tnsubj\t_\t_
2\tslept\tsleep\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No
3\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_

"""
# GOOD takes lines 1-6 (5 lines and a blank); the bad sentence starts at line 7 (its comment), words at 8, 9, 10.
BAD_HEADER = "# sent_id = bad\n"


def _bad(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "bad.conllu"
    path.write_text(GOOD + BAD_HEADER + "\n".join(rows) + "\n\n", encoding="utf-8")
    return path


def _row(i: str, form: str, head: str, deprel: str = "dep") -> str:
    return "\t".join([i, form, form.lower(), "X", "_", "_", head, deprel, "_", "_"])


def _expect(path: Path, line: int, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        read_conllu(path)
    assert f"{path}:{line}:" in str(info.value)


def test_wrong_column_count(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), "2\tB\tb\tX\t_\t_\t1\tdep\t_"])
    _expect(path, 9, "expected 10 tab-separated columns, found 9")


def test_head_out_of_range(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("2", "B", "7")])
    _expect(path, 9, "HEAD 7 is out of range")


def test_no_root(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "2"), _row("2", "B", "1")])
    _expect(path, 7, "no root")


def test_two_roots(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("2", "B", "1"), _row("3", "C", "0", "root")])
    _expect(path, 10, "a second root")


def test_cycle(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("2", "B", "3"), _row("3", "C", "2")])
    _expect(path, 9, r"cycle in the HEAD column \(2 → 3 → 2\)")


def test_self_loop_is_a_cycle(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("2", "B", "2")])
    _expect(path, 9, "cycle")


def test_non_integer_id(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("two", "B", "1")])
    _expect(path, 9, "ID 'two' is not an integer")


def test_non_integer_head(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("2", "B", "one")])
    _expect(path, 9, "HEAD 'one' is not an integer")


def test_ids_out_of_order(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("3", "B", "1")])
    _expect(path, 9, "word ID 3 out of order")


def test_partly_missing_heads(tmp_path):
    path = _bad(tmp_path, [_row("1", "A", "0", "root"), _row("2", "B", "_")])
    _expect(path, 9, "missing")


def test_range_past_the_last_word(tmp_path):
    path = _bad(tmp_path, ["1-3\tAB\t_\t_\t_\t_\t_\t_\t_\t_", _row("1", "A", "0", "root"), _row("2", "B", "1")])
    _expect(path, 8, "goes past the last word")


def test_crlf_and_bom_files_keep_line_numbers(tmp_path):
    path = tmp_path / "crlf.conllu"
    bad = "\n".join([_row("1", "A", "0", "root"), _row("2", "B", "9")])
    path.write_bytes(("\ufeff" + GOOD + BAD_HEADER + bad + "\n\n").replace("\n", "\r\n").encode("utf-8"))
    _expect(path, 9, "HEAD 9 is out of range")
    path.write_bytes(("\ufeff" + GOOD).replace("\n", "\r\n").encode("utf-8"))
    (sent,) = read_conllu(path)
    assert sent.comments[0] == "# sent_id = good" and sent.column("misc")[1] == "SpaceAfter=No"


def test_skip_invalid_drops_and_logs_why(tmp_path, caplog):
    path = tmp_path / "mixed.conllu"
    cycle = "\n".join([_row("1", "A", "0", "root"), _row("2", "B", "3"), _row("3", "C", "2")])
    roots = "\n".join([_row("1", "A", "0", "root"), _row("2", "B", "0", "root")])
    path.write_text(GOOD + cycle + "\n\n" + roots + "\n\n" + GOOD, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        sents = read_conllu(path, skip_invalid=True)
    assert [s.line for s in sents] == [1, 14]
    text = caplog.text
    assert "skipped 2 of 4 sentences" in text and "cycle" in text and "second root" in text
    assert f"{path}:8" in text  # where the first skipped problem is


def test_unparsed_sentences_are_valid(tmp_path):
    path = tmp_path / "raw.conllu"
    path.write_text("\n".join([_row("1", "A", "_", "_"), _row("2", "B", "_", "_")]) + "\n\n", encoding="utf-8")
    (sent,) = read_conllu(path)
    assert sent.heads is None and sent.forms == ["A", "B"]


def test_comments_multiword_tokens_and_empty_nodes_are_kept(tmp_path):
    text = (
        "# text = I don't know.\n"
        "# just a remark\n"
        "1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_\n"
        "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_\n"
        "3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_\n"
        "3.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t4:conj\tCopyOf=4\n"
        "4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No\n"
        "5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_\n\n"
    )
    path = tmp_path / "mwt.conllu"
    path.write_text(text, encoding="utf-8")
    (sent,) = read_conllu(path)
    assert sent.forms == ["I", "do", "n't", "know", "."]  # only syntactic words are predicted
    assert sent.heads == [4, 4, 4, 0, 4]
    assert sent.comments == ["# text = I don't know.", "# just a remark"]
    assert format_sentence(sent) == text
    out = tmp_path / "out.conllu"
    pred = {"upos": ["X"] * 5, "head": ["2", "0", "2", "2", "2"], "deprel": ["a", "root", "b", "c", "d"]}
    write_conllu([sent], [pred], out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[3] == "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_"
    assert lines[6] == "3.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t4:conj\tCopyOf=4"
    assert lines[5] == "3\tn't\tnot\tX\tRB\t_\t2\tb\t_\t_"
    (again,) = read_conllu(out)
    assert again.column("upos") == ["X"] * 5 and again.heads == [2, 0, 2, 2, 2]


@pytest.mark.parametrize("treebank", ["fr_sequoia", "en_ewt"])
def test_round_trip_on_real_dev_files(data_dir, tmp_path, treebank):
    src = data_dir / "ud" / treebank / "dev.conllu"
    sents = read_conllu(src)
    ranges = sum(1 for s in sents for t in s.tokens if "-" in t["id"])
    empties = sum(1 for s in sents for t in s.tokens if "." in t["id"])
    assert ranges > 100  # both files have multi-word tokens (du, au / don't, won't)
    if treebank == "en_ewt":
        assert empties >= 1
    out = tmp_path / "copy.conllu"
    write_conllu(sents, [None] * len(sents), out)
    assert out.read_text(encoding="utf-8") == src.read_text(encoding="utf-8-sig")
    # Replace predicted columns: everything else (comments, ranges, empty nodes) is unchanged.
    preds = [{"lemma": [f.lower() for f in s.forms], "deprel": ["dep"] * len(s)} for s in sents]
    write_conllu(sents, preds, out)
    again = read_conllu(out)
    assert [s.comments for s in again] == [s.comments for s in sents]
    assert [[t["id"] for t in s.tokens] for s in again] == [[t["id"] for t in s.tokens] for s in sents]
    assert again[5].column("lemma") == [f.lower() for f in sents[5].forms]
    assert again[5].column("deprel") == ["dep"] * len(sents[5])
    assert again[5].heads == sents[5].heads


def _hub_rows(path: Path, limit: int):
    """Rows as the hub's `universal_dependencies` builder makes them: conllu's parsed values, str()-ed."""
    with path.open(encoding="utf-8") as fh:
        for i, sent in enumerate(conllu.parse_incr(fh)):
            if i == limit:
                return
            yield {
                "idx": sent.metadata.get("sent_id", str(i)), "text": sent.metadata.get("text", ""),
                "tokens": [t["form"] for t in sent], "lemmas": [t["lemma"] for t in sent],
                "upos": [t["upos"] for t in sent], "xpos": [t["xpos"] for t in sent],
                "feats": [str(t["feats"]) for t in sent], "head": [str(t["head"]) for t in sent],
                "deprel": [str(t["deprel"]) for t in sent], "deps": [str(t["deps"]) for t in sent],
                "misc": [str(t["misc"]) for t in sent],
            }


def test_hub_rows_give_the_same_words(data_dir):
    path = data_dir / "ud" / "en_ewt" / "dev.conllu"
    from_file = read_conllu(path)[:300]  # sentence 59 has an empty node, several have multi-word tokens
    from_hub = sentences_from_hub(_hub_rows(path, 300), "universal_dependencies/en_ewt[validation]", None, "en_ewt")
    assert any("." in t["id"] for s in from_file for t in s.tokens)
    assert any("-" in t["id"] for s in from_file for t in s.tokens)
    assert len(from_hub) == len(from_file)
    for a, b in zip(from_file, from_hub, strict=True):
        assert [list(a.tokens[i].values()) for i in a.word_rows] == [list(b.tokens[i].values()) for i in b.word_rows]
    # multi-word tokens and empty nodes get their IDs back
    assert [[t["id"] for t in s.tokens] for s in from_hub] == [[t["id"] for t in s.tokens] for s in from_file]


def test_hub_loader_maps_class_label_upos(monkeypatch, data_dir, tiny_encoder_cfg):
    datasets = pytest.importorskip("datasets")
    from helpers import build

    from mtl.core.config import DatasetConfig

    path = data_dir / "ud" / "fr_sequoia" / "dev.conllu"
    rows = list(_hub_rows(path, 20))
    names = sorted({u for r in rows for u in r["upos"]} | {"_"})
    for r in rows:
        r["upos"] = [names.index(u if u is not None else "_") for u in r["upos"]]
    feats = datasets.Features({
        "idx": datasets.Value("string"), "text": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")), "lemmas": datasets.Sequence(datasets.Value("string")),
        "upos": datasets.Sequence(datasets.ClassLabel(names=names)),
        **{k: datasets.Sequence(datasets.Value("string")) for k in ("xpos", "feats", "head", "deprel", "deps", "misc")},
    })
    table = datasets.Dataset.from_list(rows, features=feats)
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ds = DatasetConfig(language="fr", name="seq", hub="universal_dependencies", hub_config="fr_sequoia",
                       dev="validation")
    fam, _, _ = build("ud", tiny_encoder_cfg, {"heads": ["upos", "deps"]}, [ds])
    sents = fam.read(ds, "dev")
    assert calls == [("universal_dependencies", "fr_sequoia", "validation")]
    expected = read_conllu(path)[:20]
    assert [s.column("upos") for s in sents] == [s.column("upos") for s in expected]
    assert [s.heads for s in sents] == [s.heads for s in expected]
    assert sents[0].dataset == "seq" and sents[0].where == "universal_dependencies/fr_sequoia[validation]:1"
