"""Streamed text for masked LM: blocks of whole lines, each process its own, tokenised while training;
nothing lost or read twice in a pass, and a resumed run reads what the uninterrupted one read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_encoder
from helpers import resume_from_copy

from mtl import checkpoint as ckpt
from mtl.core.errors import ConfigError
from mtl.data import build_families, load_splits
from mtl.encoder import load_tokenizer
from mtl.experiment import experiment_from_dict
from tasks._text_stream import TextBlocks, TextStream


def squad_text(data_dir: Path, path: Path, paragraphs: int | None = None) -> Path:
    """The SQuAD dev contexts, one paragraph a line (real text; blank lines between a few of them)."""
    data = json.loads((data_dir / "squad/dev.json").read_text(encoding="utf-8"))
    contexts = [p["context"].replace("\n", " ") for a in data["data"] for p in a["paragraphs"]][:paragraphs]
    path.write_text("".join(c + ("\n\n" if i % 7 == 0 else "\n") for i, c in enumerate(contexts)), encoding="utf-8")
    return path


def test_blocks_hold_every_line_once(tmp_path, data_dir):
    path = squad_text(data_dir, tmp_path / "squad.txt")
    blocks = TextBlocks(path)
    assert blocks.count > 8 and blocks.block == 2**14
    lines = [line for b in range(blocks.count) for line in blocks.lines(b)]
    expected = [s for line in path.read_text(encoding="utf-8").split("\n") if (s := line.strip())]
    assert lines == expected


def test_two_ranks_read_disjoint_blocks_that_cover_the_file_in_one_pass(tmp_path, data_dir):
    path = squad_text(data_dir, tmp_path / "squad.txt")
    stream = TextStream(path, lambda lines: [{"text": t} for t in lines], "mlm/en")
    seen: dict[int, list[int]] = {}
    texts: dict[int, list[str]] = {}
    for rank in (0, 1):
        cursor = stream.open(seed=5, rank=rank, world=2)
        blocks, got = [], []
        while cursor.epoch == 0:
            blocks.append(cursor.current_block)
            got.extend(w["text"] for w in cursor.take(3))
        seen[rank], texts[rank] = blocks, got
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(stream.blocks.count))
    assert not set(texts[0]) & set(texts[1])  # no paragraph is read by both in one pass
    # a cursor restored from a saved position goes on exactly as the one that saved it
    a = stream.open(seed=5, rank=1, world=2)
    a.take(40)
    b = stream.open(seed=5, rank=1, world=2)
    b.load_state_dict(a.state_dict())
    assert a.take(25) == b.take(25)
    with pytest.raises(ConfigError, match="resume with the same processes"):
        stream.open(seed=5, rank=0, world=3).load_state_dict(a.state_dict())


def _mlm_experiment(tmp_path: Path, text: Path, **dataset) -> dict:
    enc = tiny_encoder(hidden=64, layers=2, heads=2)
    enc.update({"max_length": 64})
    enc["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return {"name": "stream", "encoder": enc,
            "tasks": {"mlm": {"family": "mlm", "datasets": [{"language": "en", "train": str(text), **dataset}]}},
            "sampling": {"batch_size": 32},
            "train": {"steps": 6, "checkpoint_every": 3, "head_lr": 3e-3, "encoder_lr": 3e-3, "warmup": 0,
                      "output_dir": str(tmp_path / "run")},
            "tracking": {"enabled": False}}


def test_which_datasets_stream(tmp_path, data_dir):
    text = squad_text(data_dir, tmp_path / "squad.txt", paragraphs=300)
    for extra, streamed in (({}, False), ({"streaming": True}, True), ({"streaming": True, "size": 77}, True)):
        exp = experiment_from_dict(_mlm_experiment(tmp_path, text, **extra))
        families = build_families(exp, load_tokenizer(exp.encoder))
        (split,) = load_splits(exp, families, ["train"], cache_dir=tmp_path / "cache")
        assert (split.stream is not None) == streamed
        if streamed:
            assert split.size == extra.get("size", split.stream.estimate()) and len(split.features) == 0
            windows = families["mlm"].packed_windows(split.stream.blocks.lines(0))
            assert all(len(w["input_ids"]) <= 64 for w in windows)
            assert sum(len(w["input_ids"]) == 64 for w in windows) > len(windows) // 2  # packed, not padded
    cfg = _mlm_experiment(tmp_path, data_dir / "ud/cy_ccg/dev.conllu", streaming=True)
    exp = experiment_from_dict(cfg)
    with pytest.raises(ConfigError, match=r"streaming: true applies to a training split of plain text"):
        load_splits(exp, build_families(exp, load_tokenizer(exp.encoder)), ["train"])
    with pytest.raises(ConfigError, match=r"size: applies to a streamed dataset only"):
        experiment_from_dict(_mlm_experiment(tmp_path, text, streaming=False, size=5))
    with pytest.raises(ConfigError, match=r"max_examples: does not apply to a streamed dataset"):
        experiment_from_dict(_mlm_experiment(tmp_path, text, streaming=True, max_examples=5))


def test_a_resumed_streamed_run_ends_as_the_uninterrupted_one(tmp_path, data_dir):
    from mtl.trainer import train

    text = squad_text(data_dir, tmp_path / "squad.txt", paragraphs=120)  # a few blocks: the stream moves on
    cfg = _mlm_experiment(tmp_path, text, streaming=True)
    full = train(experiment_from_dict(cfg), progress=False)
    state = json.loads((full.checkpoint.parent / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["streams"][0]["mlm/en"]["block"] + state["streams"][0]["mlm/en"]["window"] > 0
    resumed, b = resume_from_copy(cfg, tmp_path / "run", 3, tmp_path / "resumed")
    a = torch.load(full.checkpoint / "model.pt", weights_only=True)
    assert resumed.checkpoint.name == "checkpoint-6" and all(torch.equal(a[k], b[k]) for k in a)

    def from_the_start(checkpoint: Path) -> None:  # the stream position reset, nothing else
        state["streams"][0]["mlm/en"].update(epoch=0, block=0, window=0)
        (checkpoint / "trainer_state.json").write_text(json.dumps(state))
        ckpt.write_manifest(checkpoint)  # an edit made on purpose, not damage

    # and the stream position matters: a run that starts the stream again from its beginning differs
    _, c = resume_from_copy(cfg, tmp_path / "run", 3, tmp_path / "restarted", edit=from_the_start)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_data_scale_benchmark_makes_exact_text_and_counts_words(tmp_path, data_dir):
    from benchmarks import data_scale

    assert data_scale.parse_size("1MB") == 10**6 and data_scale.parse_size("2GiB") == 2 * 2**30
    text = data_scale.make_text(data_dir, 300_001, tmp_path / "t.txt")
    raw = text.read_bytes()
    assert len(raw) == 300_001 and raw.endswith(b"\n") and raw.decode("utf-8")
    import conllu as conllu_lib

    conllu = data_dir / "ud/cy_ccg/dev.conllu"
    sentences = conllu_lib.parse(conllu.read_text(encoding="utf-8"))  # the library's own reading
    words = sum(1 for sent in sentences for tok in sent if isinstance(tok["id"], int))
    assert data_scale.count_words(conllu) == words > 1000


def _squad_jsonl(data_dir: Path, path: Path, paragraphs: int) -> Path:
    data = json.loads((data_dir / "squad/dev.json").read_text(encoding="utf-8"))
    rows = [{"id": i, "body": p["context"]} for i, p in enumerate(p for a in data["data"] for p in a["paragraphs"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:paragraphs]), encoding="utf-8")
    return path


def test_json_lines_stream_with_their_text_field(tmp_path, data_dir):
    rows = _squad_jsonl(data_dir, tmp_path / "squad.jsonl", 200)
    text = squad_text(data_dir, tmp_path / "squad.txt", 200)
    exp = experiment_from_dict(_mlm_experiment(tmp_path, rows, streaming=True, fields={"text": "body"}))
    families = build_families(exp, load_tokenizer(exp.encoder))
    (split,) = load_splits(exp, families, ["train"])
    lines = split.stream.blocks.lines(0)
    bodies = [json.loads(line)["body"].strip() for line in lines]
    assert bodies[0] == text.read_text(encoding="utf-8").split("\n")[0].strip()
    assert split.stream.windows(lines) == families["mlm"].packed_windows(bodies)  # the body field, as text
    assert len(split.stream.open(seed=1).take(50)) == 50
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "fine"}\n{"text": "no body"}\n', encoding="utf-8")
    exp = experiment_from_dict(_mlm_experiment(tmp_path, bad, streaming=True, fields={"text": "body"}, size=3))
    (split,) = load_splits(exp, build_families(exp, load_tokenizer(exp.encoder)), ["train"])
    with pytest.raises(Exception, match=r"bad\.jsonl: no key 'body' for field text"):
        split.stream.open(seed=1).take(2)


def test_a_hub_dataset_streams_per_rank_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
    """datasets' own streaming mode (here over a local JSON-lines file standing in for the hub)."""
    import datasets

    rows = _squad_jsonl(data_dir, tmp_path / "squad.jsonl", 300)
    real = datasets.load_dataset

    def hub(name, config=None, split=None, streaming=False):
        assert name == "some/corpus" and split == "train" and streaming
        return real("json", data_files=str(rows), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    cfg = _mlm_experiment(tmp_path, rows, streaming=True, fields={"text": "body"})
    cfg["tasks"]["mlm"]["datasets"] = [{"language": "en", "hub": "some/corpus", "train": "train", "streaming": True,
                                        "fields": {"text": "body"}}]
    exp = experiment_from_dict(cfg)
    families = build_families(exp, load_tokenizer(exp.encoder))
    with pytest.raises(ConfigError, match=r"a streamed hub dataset needs `size:`"):
        load_splits(exp, families, ["train"])
    cfg["tasks"]["mlm"]["datasets"][0]["size"] = 500
    exp = experiment_from_dict(cfg)
    (split,) = load_splits(exp, families, ["train"])
    from tasks._text_stream import HubStream

    stream = split.stream
    assert isinstance(stream, HubStream) and split.size == 500
    stream.ROWS = 20  # several packs, so positions inside and across packs are exercised
    texts = {}
    for rank in (0, 1):
        cursor = stream.open(seed=0, rank=rank, world=2)
        texts[rank] = {tuple(w["input_ids"]) for w in cursor.take(60)}
    assert not texts[0] & texts[1]
    a = stream.open(seed=0, rank=1, world=2)
    a.take(37)
    b = stream.open(seed=0, rank=1, world=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # as a checkpoint stores it
    assert a.take(500) == b.take(500) and a.epoch == b.epoch >= 1  # on into the next pass, the same
