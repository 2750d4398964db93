"""The feature store: features read back from the memory-mapped files equal the family's own `featurize`
on real data of every family; a start with nothing changed reads no source; a changed source is read
again; two processes build a missing split once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_encoder

from mtl import feature_store
from mtl.data import build_families, load_splits
from mtl.encoder import load_tokenizer
from mtl.experiment import experiment_from_dict
from tasks.base import TaskFamily


def _datasets(data_dir: Path) -> dict[str, dict]:
    """One task of every family on real files, small enough for a test, with train and dev."""
    return {
        # sentences too long for one window are left out (skip_invalid): the store keeps which
        "ud": {"family": "ud", "options": {"skip_invalid": True}, "datasets": [
            {"language": "en", "train": str(data_dir / "ud/en_ewt/train.conllu"),
             "dev": str(data_dir / "ud/en_ewt/dev.conllu"), "max_examples": 150},
            {"language": "cy", "train": str(data_dir / "ud/cy_ccg/train.conllu"), "max_examples": 60}]},
        "ner": {"family": "ner", "datasets": [
            {"language": "en", "format": "conll2003", "train": str(data_dir / "ner/conll2003/train.txt"),
             "dev": str(data_dir / "ner/conll2003/dev.txt"), "max_examples": 120}]},
        "qa": {"family": "qa", "options": {"max_length": 96, "doc_stride": 32}, "datasets": [
            {"language": "en", "train": str(data_dir / "squad/dev.json"), "dev": str(data_dir / "drcd/dev.json"),
             "max_examples": 40}]},
        "rte": {"family": "classification", "options": {"long_inputs": "windows"}, "datasets": [
            {"language": "en", "train": str(data_dir / "glue/RTE/train.tsv"), "dev": str(data_dir / "glue/RTE/dev.tsv"),
             "fields": {"text": "sentence1", "text_pair": "sentence2", "label": "label"}, "max_examples": 90}]},
        "mlm": {"family": "mlm", "datasets": [
            {"language": "en", "train": str(data_dir / "ud/en_ewt/dev.conllu"),
             "dev": str(data_dir / "ud/fr_gsd/dev.conllu"), "max_examples": 100}]},
    }


def _experiment(tmp_path: Path, data_dir: Path, tasks: dict | None = None, **train) -> dict:
    enc = tiny_encoder()
    enc["max_length"] = 48  # long UD sentences and RTE pairs take several windows
    return {"name": "store", "encoder": enc, "tasks": tasks or _datasets(data_dir),
            "train": {"output_dir": str(tmp_path / "runs" / "{name}"), **train}}


def _load(cfg: dict, cache: Path | None):
    exp = experiment_from_dict(cfg)
    families = build_families(exp, load_tokenizer(exp.encoder))
    return families, load_splits(exp, families, ["train", "dev"], cache_dir=cache, progress=False)


@pytest.fixture
def count_reads(monkeypatch):
    """Counts every family's reads by (task, dataset, role)."""
    counts: dict[tuple[str, str, str], int] = {}
    from tasks import get_family

    for cls in {get_family(name) for name in ("ud", "ner", "qa", "classification", "mlm")}:
        original = cls.read

        def counted(self: TaskFamily, dataset, role, _original=original):
            key = (self.task.name, dataset.name, role)
            counts[key] = counts.get(key, 0) + 1
            return _original(self, dataset, role)

        monkeypatch.setattr(cls, "read", counted)
    return counts


@pytest.mark.parametrize("workers", [1, 2])
def test_stored_features_equal_featurize_for_every_family(tmp_path, data_dir, monkeypatch, workers):
    monkeypatch.setattr(feature_store, "CHUNK", 7)  # many chunks, so chunk boundaries are exercised
    cfg = _experiment(tmp_path, data_dir, tokenize_workers=workers)
    _, memory = _load(cfg, None)
    _, stored = _load(cfg, tmp_path / "cache")
    _, warm = _load(cfg, tmp_path / "cache")
    assert [(s.label, s.role) for s in memory] == [(s.label, s.role) for s in stored] == [
        (s.label, s.role) for s in warm]
    assert {s.task for s in memory} == {"ud", "ner", "qa", "rte", "mlm"}
    for mem, cold, hot in zip(memory, stored, warm, strict=True):
        assert isinstance(hot.features, feature_store.FeatureRows) and not hot.tokenised and cold.tokenised
        assert len(mem.features) > 0
        assert list(cold.features) == list(hot.features) == list(mem.features), (mem.label, mem.role)
        assert hot.lengths.tolist() == [len(f["input_ids"]) for f in mem.features]
        assert hot.n_examples == len(mem.examples)
        if mem.role == "dev":
            assert [repr(e) for e in hot.examples] == [repr(e) for e in mem.examples]
    ud = next(s for s in warm if s.task == "ud" and s.role == "train")
    assert ud.n_examples < 150  # some sentences were left out, and the features index those that remain
    rte = next(s for s in warm if s.task == "rte" and s.role == "train")
    assert any("window_lengths" in f for f in rte.features)  # pairs longer than the encoder: pooled windows
    mlm_dev = next(s for s in warm if s.task == "mlm" and s.role == "dev")
    assert any(t != -100 for f in mlm_dev.features for t in f["labels"])  # masked once, with per-example seeds


def test_warm_start_reads_no_source_and_a_changed_one_is_read_again(tmp_path, data_dir, count_reads):
    train = tmp_path / "train.conllu"
    train.write_text((data_dir / "ud/cy_ccg/train.conllu").read_text(encoding="utf-8"), encoding="utf-8")
    tasks = {"ud": {"family": "ud", "options": {"skip_invalid": True}, "datasets": [
        {"language": "cy", "train": str(train), "dev": str(data_dir / "ud/cy_ccg/dev.conllu"), "max_examples": 80}]},
        "ner": {"family": "ner", "datasets": [
            {"language": "en", "format": "conll2003", "train": str(data_dir / "ner/conll2003/train.txt"),
             "max_examples": 50}]}}
    cfg = _experiment(tmp_path, data_dir, tasks)
    cache = tmp_path / "cache"
    _load(cfg, cache)
    assert count_reads == {("ud", "cy", "train"): 1, ("ud", "cy", "dev"): 1, ("ner", "en", "train"): 1}
    count_reads.clear()
    families, splits = _load(cfg, cache)
    assert count_reads == {}  # vocabularies and features from the store: nothing parsed
    before = {s.label + s.role: list(s.features) for s in splits}
    dev = next(s for s in splits if s.role == "dev")
    assert dev.examples[0].forms and count_reads == {("ud", "cy", "dev"): 1}  # examples read when asked for
    # one byte of the training file changes, its size does not (an UPOS tag NOUN becomes NOUM)
    text = train.read_text(encoding="utf-8")
    at = text.index("\tNOUN\t") + 4
    train.write_text(text[:at] + "M" + text[at + 1:], encoding="utf-8")
    count_reads.clear()
    _, again = _load(cfg, cache)
    # the UD training split is read once (for its vocabulary and its features); the NER task is untouched;
    # the dev split is read again too, since its features depend on the vocabulary, which changed
    assert count_reads == {("ud", "cy", "train"): 1, ("ud", "cy", "dev"): 1}
    changed = next(s for s in again if s.task == "ud" and s.role == "train")
    assert changed.tokenised and list(changed.features) != before["ud/cytrain"]
    assert "NOUM" not in families["ud"].state_dict()["vocabs"]["upos"]
    count_reads.clear()
    refit, _ = _load(cfg, cache)
    assert "NOUM" in refit["ud"].state_dict()["vocabs"]["upos"] and count_reads == {}  # the new vocabulary, stored


def test_a_damaged_entry_is_rebuilt_not_served(tmp_path, data_dir, caplog):
    tasks = {"ner": _datasets(data_dir)["ner"]}
    cfg = _experiment(tmp_path, data_dir, tasks)
    cache = tmp_path / "cache"
    _, first = _load(cfg, cache)
    expected = list(first[0].features)
    (arrow,) = [p for p in cache.glob("ner-en-train-*/features.arrow")]
    arrow.write_bytes(arrow.read_bytes()[:100])
    _, second = _load(cfg, cache)
    assert "unreadable" in caplog.text
    train = next(s for s in second if s.role == "train")
    assert train.tokenised and list(train.features) == expected


def test_training_on_stored_features_is_bit_identical(tmp_path, data_dir, monkeypatch):
    """20 steps from memory (the old path), from a cold store and from a warm one: the same weights."""
    from mtl import trainer

    tasks = {k: v for k, v in _datasets(data_dir).items() if k in ("ud", "ner", "rte")}
    weights = []
    for name, cache in (("memory", None), ("cold", tmp_path / "cache"), ("warm", tmp_path / "cache")):
        cfg = _experiment(tmp_path, data_dir, tasks, steps=20, output_dir=str(tmp_path / name),
                          cache_dir=str(cache) if cache else None)
        cfg["sampling"] = {"batch_size": 8}
        cfg["tracking"] = {"enabled": False}
        if cache is None:
            monkeypatch.setattr(trainer, "feature_cache_dir", lambda exp: None)
        else:
            monkeypatch.undo()
        out = trainer.train(experiment_from_dict(cfg))
        weights.append((torch.load(out.checkpoint / "model.pt", weights_only=True), out.metrics))
    (mem, mem_metrics), (cold, cold_metrics), (warm, warm_metrics) = weights
    assert mem.keys() == cold.keys() == warm.keys()
    for k in mem:
        assert torch.equal(mem[k], cold[k]) and torch.equal(mem[k], warm[k]), k
    assert mem_metrics == cold_metrics == warm_metrics


_BUILD = """
import json, sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import conftest  # offline hub settings
from mtl import data
from mtl.data import build_families, load_splits
from mtl.encoder import load_tokenizer
from mtl.experiment import experiment_from_dict
built = []
original = data.feature_store.build_entry
def recording(path, *args, **kwargs):
    built.append(path.name)
    time.sleep(2)  # hold the lock long enough for the other process to meet it
    return original(path, *args, **kwargs)
data.feature_store.build_entry = recording
exp = experiment_from_dict(json.loads(sys.argv[1]))
families = build_families(exp, load_tokenizer(exp.encoder))
splits = load_splits(exp, families, ["train"], cache_dir=data.feature_cache_dir(exp))
print(json.dumps({{"built": built, "features": [len(s.features) for s in splits],
                   "first": [s.features[0]["input_ids"] for s in splits]}}))
"""


def test_two_processes_build_a_missing_split_once(tmp_path, data_dir):
    tasks = {"ner": {"family": "ner", "datasets": [
        {"language": "en", "format": "conll2003", "train": str(data_dir / "ner/conll2003/train.txt"),
         "max_examples": 200}]}}
    cfg = _experiment(tmp_path, data_dir, tasks, cache_dir=str(tmp_path / "cache"))
    script = _BUILD.format(repo=str(REPO), tests=str(REPO / "tests"))
    procs = [subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(len(o["built"]) for o in outs) == [0, 1]  # one built it, the other waited and mapped it
    assert outs[0]["features"] == outs[1]["features"] and outs[0]["features"][0] >= 200
    assert outs[0]["first"] == outs[1]["first"]
    assert len(list((tmp_path / "cache").glob("ner-en-train-*/features.arrow"))) == 1
