"""Streamed text for masked LM: blocks of whole lines, each process its own, tokenised while training;
nothing lost or read twice in a pass, and a resumed run reads what the uninterrupted one read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_encoder

from mtl.config import ConfigError
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
    with pytest.raises(ConfigError, match=r"streaming: true applies to a local plain-text"):
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
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "run" / "checkpoint-3", resumed_dir / "checkpoint-3")
    cfg["train"]["output_dir"] = str(resumed_dir)
    resumed = train(experiment_from_dict(cfg), resume=True, progress=False)
    a = torch.load(full.checkpoint / "model.pt", weights_only=True)
    b = torch.load(resumed.checkpoint / "model.pt", weights_only=True)
    assert resumed.checkpoint.name == "checkpoint-6" and all(torch.equal(a[k], b[k]) for k in a)
    # and the stream position matters: a run that starts the stream again from its beginning differs
    restarted_dir = tmp_path / "restarted"
    restarted_dir.mkdir()
    shutil.copytree(tmp_path / "run" / "checkpoint-3", restarted_dir / "checkpoint-3")
    saved = restarted_dir / "checkpoint-3" / "trainer_state.json"
    state["streams"][0]["mlm/en"].update(epoch=0, block=0, window=0)
    saved.write_text(json.dumps(state))
    cfg["train"]["output_dir"] = str(restarted_dir)
    restarted = train(experiment_from_dict(cfg), resume=True, progress=False)
    c = torch.load(restarted.checkpoint / "model.pt", weights_only=True)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_data_scale_benchmark_makes_exact_text_and_counts_words(tmp_path, data_dir):
    from benchmarks import data_scale

    assert data_scale.parse_size("1MB") == 10**6 and data_scale.parse_size("2GiB") == 2 * 2**30
    text = data_scale.make_text(data_dir, 300_001, tmp_path / "t.txt")
    raw = text.read_bytes()
    assert len(raw) == 300_001 and raw.endswith(b"\n") and raw.decode("utf-8")
    conllu = data_dir / "ud/cy_ccg/dev.conllu"
    words = sum(1 for line in conllu.read_text(encoding="utf-8").splitlines()
                if line and not line.startswith("#") and line.split("\t")[0].isdigit())
    assert data_scale.count_words(conllu) == words > 1000
