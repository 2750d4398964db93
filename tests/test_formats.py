"""Readers by format, families by record shape: a dataset picks its reader, and any family that needs
that shape of record reads it, with no new family (UPOS from a CoNLL column file, NER from CoNLL-U MISC)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_encoder

from mtl.core.config import DatasetConfig
from mtl.core.errors import ConfigError
from mtl.data import build_families, load_splits
from mtl.encoder import load_tokenizer
from mtl.experiment import experiment_from_dict
from tasks._conllu_io import read_conllu
from tasks.formats import ColumnOptions, ColumnSentence, get_reader, resolve_dataset

N_SENTENCES = 120


def _experiment(tmp_path: Path, family: str, options: dict, dataset: dict) -> dict:
    return {"name": "formats", "encoder": tiny_encoder(),
            "tasks": {"t": {"family": family, "options": options, "datasets": [dataset]}},
            "train": {"output_dir": str(tmp_path / "runs" / "{name}")}}


def _load(exp_dict: dict, tmp_path: Path):
    exp = experiment_from_dict(exp_dict)
    families = build_families(exp, load_tokenizer(exp.encoder))
    return exp, families, load_splits(exp, families, ["train"], cache_dir=tmp_path / "cache")


def test_ud_tags_upos_from_a_plain_column_file(tmp_path, data_dir):
    gold = read_conllu(data_dir / "ud" / "cy_ccg" / "train.conllu")[:N_SENTENCES]
    path = tmp_path / "cy.upos.txt"
    path.write_text("".join("".join(f"{w}\t{u}\n" for w, u in zip(s.forms, s.column("upos"), strict=True)) + "\n"
                            for s in gold), encoding="utf-8")
    dataset = {"language": "cy", "name": "cy_cols", "format": "conll", "fields": {"upos": 1}, "train": str(path)}
    exp, families, (split,) = _load(_experiment(tmp_path, "ud", {"heads": ["upos"]}, dataset), tmp_path)

    assert isinstance(exp.tasks["t"].datasets[0].options, ColumnOptions)
    assert [s.forms for s in split.examples] == [s.forms for s in gold]
    assert [s.column("upos") for s in split.examples] == [s.column("upos") for s in gold]
    assert split.examples[0].where == f"{path}:1"
    fam = families["t"]
    assert fam.heads_for("cy_cols") == ["upos"] and set(fam.vocabs["upos"].labels) == {
        u for s in gold for u in s.column("upos")}
    first = split.features[0]  # labels follow the column file's tags
    assert [fam.vocabs["upos"].labels[i] for i in first["upos"]] == gold[0].column("upos")[: len(first["upos"])]


def _conllu_with_misc(sentences: list[ColumnSentence], key: str) -> str:
    out = []
    for s in sentences:
        rows = [f"{k}\t{w}\t_\t_\t_\t_\t_\t_\t_\t{'_' if t == 'O' else f'{key}={t}'}"
                for k, (w, t) in enumerate(zip(s.words, s.column("tag"), strict=True), start=1)]
        out.append("\n".join(rows) + "\n\n")
    return "".join(out)


@pytest.mark.parametrize("key", ["NE", "Entity"])
def test_ner_reads_entity_tags_from_conllu_misc(tmp_path, data_dir, key):
    src = DatasetConfig(language="en", name="c", format="conll2003", train=str(data_dir / "ner/conll2003/dev.txt"))
    columns = get_reader("conll2003").read(src, "train", ColumnOptions(), False)[:N_SENTENCES]
    path = tmp_path / "ner.conllu"
    path.write_text(_conllu_with_misc(columns, key), encoding="utf-8")
    dataset = {"language": "en", "name": "misc", "format": "conllu", "train": str(path)}
    _, families, (split,) = _load(_experiment(tmp_path, "ner", {"scheme": "BIO"}, dataset), tmp_path)

    # the same sentences from the column file
    direct = families["t"].read(resolve_dataset(families["t"], src), "train")[:N_SENTENCES]
    assert [e.tokens for e in split.examples] == [e.tokens for e in direct]
    assert [e.tags for e in split.examples] == [e.tags for e in direct]
    assert sum(t != "O" for e in split.examples for t in e.tags) > 100
    assert split.examples[0].source == f"{path}:1 word 1"
    assert len(split.features) >= len(split.examples)


def test_a_format_of_another_shape_is_refused_at_load(tmp_path, data_dir):
    dataset = {"language": "en", "format": "tsv", "train": str(data_dir / "glue" / "SST-2" / "train.tsv")}
    with pytest.raises(ConfigError, match=r"tasks\.t\.datasets\.0\.format: .*format 'tsv' gives rows records, "
                                          r"and the ud family reads words"):
        experiment_from_dict(_experiment(tmp_path, "ud", {}, dataset))
    dataset["format"] = "conllx"
    with pytest.raises(ConfigError, match=r"unknown ud format 'conllx' \(known: conll, conll2003, conllu"):
        experiment_from_dict(_experiment(tmp_path, "ud", {}, dataset))
