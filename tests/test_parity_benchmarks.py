"""The parity benchmarks' own pieces, without training: the run_qa / run_ner style features of the
Hugging Face reference against mtl's, and the small shared helpers."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import ner_vs_hf, qa_vs_hf
from benchmarks._common import mean_spread, parse_variant
from mtl.data import build_families, load_splits
from mtl.encoder import head_view, load_tokenizer
from mtl.experiment import experiment_from_dict
from tasks import get_family


def test_parse_variant():
    assert parse_variant("mix-scalar:encoder.mix=scalar") == ("mix-scalar", ["encoder.mix=scalar"])
    assert parse_variant("x: a=1 , b.c=2") == ("x", ["a=1", "b.c=2"])
    for bad in ("mix-scalar", "mix:", ":a=1", "mix:a"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_mean_spread():
    assert mean_spread([]) == "-"
    assert mean_spread([float("nan")]) == "-"
    assert mean_spread([12.345]) == "12.35"
    assert mean_spread([1.0, 2.0, 3.0], 1) == f"2.0 ±{statistics.stdev([1.0, 2.0, 3.0]):.1f}"
    assert mean_spread([1500.0, 1700.0], 0) == "1,600 ±141"


def _spec(module, tmp_path: Path, data: Path, model: Path, **extra) -> dict:
    spec = {"name": "t", "seed": 42, "data": str(data), "model": str(model), "train_cap": 200, "dev_cap": 20,
            "hp": asdict(module.HParams()), "workdir": str(tmp_path), "overrides": [], "threads": 0}
    spec.update(extra)
    return spec


def test_qa_windows_match_run_qa(tmp_path, data_dir, e5_path):
    """mtl's doc_stride is run_qa's stride: the same questions give token-identical windows."""
    from transformers import AutoTokenizer

    spec = _spec(qa_vs_hf, tmp_path, data_dir, e5_path, train_cap=1000)
    hp = qa_vs_hf.HParams()
    rows = qa_vs_hf.read_squad(data_dir / qa_vs_hf.TRAIN_FILE, 1000)
    features = qa_vs_hf.prepare_train_features(rows, AutoTokenizer.from_pretrained(str(e5_path)), hp)
    exp = experiment_from_dict(qa_vs_hf.experiment_dict(spec, qa_vs_hf.MTL_BASE))
    # mtl's defaults are the reference's head: the last layer, no dropout before the span scorer
    assert head_view(exp.encoder, exp.tasks["qa"], get_family("qa")) == ("last", 0.0)
    assert exp.tasks["qa"].options.doc_stride == hp.stride
    families = build_families(exp, load_tokenizer(exp.encoder))
    (train,) = load_splits(exp, families, ["train"], cache_dir=None)
    check = qa_vs_hf.compare_windows(features, train.features)
    assert check["hf_windows"] == check["mtl_windows"] > len(rows)  # some contexts need two windows
    assert check["same_tokens"] == check["hf_windows"]
    assert check["same_labels"] >= 0.95 * check["hf_windows"]
    dev = load_splits(exp, families, ["dev"], fit=False, cache_dir=None)
    assert {s.dataset.name: s.zero_shot for s in dev} == {"squad": False, "drcd": True}
    assert all(len(s.examples) == 20 for s in dev)


def test_ner_first_subword_labels_and_truncation(e5_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(e5_path))
    ids = {"O": 0, "B-PER": 1, "I-PER": 2}
    words = [["Angela", "Merkel", "sprach", "gestern"], ["Wolfgang"] * 200]
    tags = [["B-PER", "I-PER", "O", "O"], ["B-PER"] * 200]
    enc, counts = ner_vs_hf.align_labels(tok, words, tags, ids, 32)
    first = [i for i, w in enumerate(enc.word_ids(0)) if w is not None and w != enc.word_ids(0)[i - 1]]
    assert [enc["labels"][0][i] for i in first] == [1, 2, 0, 0]
    assert sum(label != -100 for label in enc["labels"][0]) == 4
    assert len(enc["input_ids"][1]) == 32
    kept = max(w for w in enc.word_ids(1) if w is not None) + 1
    assert counts == {"words": 204, "truncated": 200 - kept, "empty": 0, "sentences_cut": 1}


def test_ner_experiment_reads_conll_as_bio(tmp_path, data_dir, e5_path):
    spec = _spec(ner_vs_hf, tmp_path, data_dir, e5_path, dataset="conll2003")
    exp = experiment_from_dict(ner_vs_hf.experiment_dict(spec, ner_vs_hf.MTL_BASE + ["encoder.mix=scalar"]))
    assert head_view(exp.encoder, exp.tasks["ner"], get_family("ner")) == ("scalar", 0.1)
    families = build_families(exp, load_tokenizer(exp.encoder))
    splits = load_splits(exp, families, ["train", "dev"], cache_dir=None)
    assert [(s.dataset.name, s.role, len(s.examples)) for s in splits] == [
        ("conll2003_train", "train", 200),
        ("conll2003", "dev", 20),
    ]
    labels = families["ner"].vocab.labels
    assert "O" in labels and all(lab == "O" or lab[:2] in ("B-", "I-") for lab in labels)


def test_epochs_and_lr_reach_both_systems(tmp_path, data_dir, e5_path):
    """--epochs and --lr change the budget of the reference and of mtl alike; NER defaults to run_ner's 3 epochs."""
    from benchmarks import _common as common

    args = ner_vs_hf.parse_args(["--epochs", "2", "--lr", "3e-5", "--data", str(data_dir), "--model", str(e5_path)])
    hp = common.ParityRuns(Path(ner_vs_hf.__file__), args, "ner_vs_hf", ner_vs_hf.CAPS, ner_vs_hf.HParams(), []).hp
    assert (hp.epochs, hp.lr, hp.batch_size) == (2, 3e-5, 32)
    hf = common.hf_training_args(hp, tmp_path / "hf", 42)
    assert (hf.num_train_epochs, hf.learning_rate) == (2, 3e-5)
    spec = _spec(ner_vs_hf, tmp_path, data_dir, e5_path, dataset="conll2003", hp=asdict(hp))
    train = experiment_from_dict(ner_vs_hf.experiment_dict(spec, [])).train
    assert (train.epochs, train.encoder_lr, train.head_lr) == (2, 3e-5, 3e-5)
    default = ner_vs_hf.parse_args(["--data", str(data_dir)])
    assert common.ParityRuns(Path(ner_vs_hf.__file__), default, "ner_vs_hf", ner_vs_hf.CAPS, ner_vs_hf.HParams(),
                             []).hp.epochs == 3
    assert qa_vs_hf.HParams().epochs == 1  # the QA budget stays one epoch
    with pytest.raises(SystemExit):
        common.ParityRuns(Path(ner_vs_hf.__file__), ner_vs_hf.parse_args(["--epochs", "0"]), "ner_vs_hf",
                          ner_vs_hf.CAPS, ner_vs_hf.HParams(), [])


def test_glue_benchmark_refuses_a_repeated_seed_and_two_row_settings(tmp_path, data_dir):
    """Each of these would silently waste or ignore a setting: the plan is refused, naming it."""
    from benchmarks import glue_vs_hf

    for argv, words in ((["--seeds", "42", "42"], "repeats a seed"),
                        (["--train-rows", "100", "--budget-seconds", "30"], "not both")):
        with pytest.raises(SystemExit, match=words):
            glue_vs_hf.make_plan(glue_vs_hf.parse_args(["--data", str(data_dir), *argv]), tmp_path)
    plan = glue_vs_hf.make_plan(glue_vs_hf.parse_args(["--data", str(data_dir), "--tasks", "rte", "--seeds", "7",
                                                       "--multitask-steps", "0"]), tmp_path)
    rte_rows = sum(1 for _ in (data_dir / "glue" / "RTE" / "train.tsv").open(encoding="utf-8")) - 1
    assert plan.seeds == [7] and plan.rows == {"rte": min(glue_vs_hf.DEFAULT_TRAIN_ROWS, rte_rows)}
    spec = glue_vs_hf.pair_spec(plan, "rte", "mtl-random", 7)
    assert spec["hp"]["seed"] == 7 and spec["group_by_length"] is False
